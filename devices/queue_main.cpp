// postbox-queue: everything lives in postbox::devices::queue_device.
#include <postbox/devices/queue.hpp>

int main(int argc, char** argv) {
  using namespace postbox::devices;
  return daemon_main<queue_device>("postbox-queue", argc, argv, load_queue_config);
}
