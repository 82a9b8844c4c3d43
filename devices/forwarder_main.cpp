// postbox-forwarder: parse, construct, run, and map errors to exit codes.
// Everything else lives in postbox::devices::forwarder.
#include <postbox/devices/forwarder.hpp>

#include <postbox/error.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  using namespace postbox::devices;
  std::atomic<bool> stop{false};
  postbox::context ctx;  // declared first: it must outlive the device's sockets
  std::optional<forwarder> device;
  try {
    auto cmd = load_forwarder_config(argc, argv);
    if (cmd.print_and_exit) {
      std::fputs(cmd.print_and_exit->c_str(), stdout);
      return exit_ok;
    }
    device.emplace(ctx, std::move(cmd.config));
  } catch (const postbox::error& e) {  // config, endpoint, address in use
    std::fprintf(stderr, "postbox-forwarder: %s (see --help)\n", e.what());
    return exit_usage_error;
  } catch (const std::exception& e) {  // e.g. out of sockets or memory
    std::fprintf(stderr, "postbox-forwarder: %s\n", e.what());
    return exit_runtime_error;
  }
  try {
    stop_on_signals(stop);
    device->run(stop);
    return exit_ok;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "postbox-forwarder: %s\n", e.what());
    return exit_runtime_error;
  }
}
