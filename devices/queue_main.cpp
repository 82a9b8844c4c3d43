// postbox-queue: parse, construct, run, and map errors to exit codes.
// Everything else lives in postbox::devices::queue_device.
#include <postbox/devices/queue.hpp>

#include <postbox/error.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  using namespace postbox::devices;
  std::atomic<bool> stop{false};
  postbox::context ctx;  // declared first: it must outlive the device's sockets
  std::optional<queue_device> device;
  try {
    auto cmd = load_queue_config(argc, argv);
    if (cmd.print_and_exit) {
      std::fputs(cmd.print_and_exit->c_str(), stdout);
      return exit_ok;
    }
    device.emplace(ctx, std::move(cmd.config));
  } catch (const postbox::config_error& e) {
    std::fprintf(stderr, "postbox-queue: %s (see --help)\n", e.what());
    return exit_usage_error;
  } catch (const postbox::error& e) {  // address in use, data directory locked or corrupt
    std::fprintf(stderr, "postbox-queue: %s\n", e.what());
    return exit_usage_error;
  } catch (const std::exception& e) {  // e.g. out of memory, file system errors
    std::fprintf(stderr, "postbox-queue: %s\n", e.what());
    return exit_runtime_error;
  }
  try {
    stop_on_signals(stop);
    device->run(stop);
    return exit_ok;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "postbox-queue: %s\n", e.what());
    return exit_runtime_error;
  }
}
