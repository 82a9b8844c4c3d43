// postbox-forwarder: everything lives in postbox::devices::forwarder.
#include <postbox/devices/forwarder.hpp>

int main(int argc, char** argv) {
  using namespace postbox::devices;
  return daemon_main<forwarder>("postbox-forwarder", argc, argv, load_forwarder_config);
}
