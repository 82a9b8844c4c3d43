// postbox-forwarder's command line and config file (Boost.Program_options),
// in the library so tests can feed it argv and check the one-line errors.
#include <postbox/devices/forwarder.hpp>

#include <postbox/endpoint.hpp>
#include <postbox/error.hpp>

#include "command_line.hpp"

#include <boost/program_options.hpp>

namespace po = boost::program_options;

namespace postbox::devices {
namespace {

constexpr const char* usage_head =
    "usage: postbox-forwarder [options]\n"
    "\n"
    "Forwards messages between many publishers and many subscribers (pubsub\n"
    "mode: publishers connect to the frontend, subscribers to the backend), or\n"
    "streams work from producers to a pool of workers (pipeline mode).\n"
    "Endpoints: '@' binds, '>' connects (default: bind); several separated by\n"
    "commas. Every option can also be given in --config FILE as key = value.\n"
    "\n";

constexpr const char* usage_tail =
    "\n"
    "Default endpoints: pubsub @tcp://127.0.0.1:5570 (frontend), :5571\n"
    "(backend), :5572 (control); pipeline :5580, :5581, :5582.\n"
    "The control endpoint answers the requests \"ping\" and \"stats\" (JSON).\n"
    "\n"
    "Exit codes: 0 stopped by SIGINT/SIGTERM, 1 failure while running,\n"
    "2 bad option, endpoint, config file or an address already in use.\n";

po::options_description describe() {
  po::options_description o("Options");
  // clang-format off
  o.add_options()
    ("help,h", "print this help and exit")
    ("version", "print the version and exit")
    ("config", po::value<std::string>()->value_name("FILE"), "read options from FILE (key = value lines)")
    ("mode", po::value<std::string>()->default_value("pubsub")->value_name("MODE"), "pubsub or pipeline")
    ("frontend", po::value<std::string>()->value_name("ENDPOINTS"), "where publishers/producers connect (default per mode)")
    ("backend", po::value<std::string>()->value_name("ENDPOINTS"), "where subscribers/workers connect (default per mode)")
    ("control", po::value<std::string>()->value_name("ENDPOINT"), "control endpoint (default per mode; \"none\" for none)")
    ("tap", po::value<std::string>()->value_name("ENDPOINT"), "PUB endpoint mirroring every message (default: none)")
    ("strict", po::bool_switch(), "count and drop what is not a valid postbox envelope")
    ("last-value-cache", po::bool_switch(), "send each new subscriber the latest message of its topics (pubsub)")
    ("lvc-max-topics", po::value<std::size_t>()->default_value(10'000)->value_name("N"), "topics the last-value cache holds at most")
    ("hwm", po::value<int>()->default_value(10'000)->value_name("N"), "messages queued per peer and direction (0: no limit)")
    ("max-message-size", po::value<std::int64_t>()->default_value(16 * 1024 * 1024)->value_name("BYTES"), "largest frame accepted; a larger one drops its connection")
    ("stats-interval", po::value<long>()->default_value(0)->value_name("SECONDS"), "log a one-line rate every SECONDS (0: never)")
    ("log-level", po::value<std::string>()->default_value("info")->value_name("LEVEL"), "error, warn, info or debug");
  // clang-format on
  return o;
}

}  // namespace

forwarder_command load_forwarder_config(int argc, const char* const* argv) {
  const auto desc = describe();
  const auto vm = cli::parse_command_line(argc, argv, desc);
  forwarder_command cmd;
  cmd.print_and_exit =
      cli::help_or_version(vm, desc, usage_head, usage_tail, "postbox-forwarder", POSTBOX_VERSION);
  if (cmd.print_and_exit) return cmd;

  const auto mode = vm["mode"].as<std::string>();
  if (mode != "pubsub" && mode != "pipeline") {
    throw config_error("--mode \"" + mode + "\": use pubsub or pipeline");
  }
  auto& c = cmd.config;
  c = default_forwarder_config(mode == "pubsub" ? forwarder_mode::pubsub
                                                : forwarder_mode::pipeline);
  if (vm.count("frontend")) c.frontend = vm["frontend"].as<std::string>();
  if (vm.count("backend")) c.backend = vm["backend"].as<std::string>();
  if (vm.count("control")) c.control = vm["control"].as<std::string>();
  if (c.control == "none") c.control.clear();
  if (vm.count("tap")) c.tap = vm["tap"].as<std::string>();
  c.strict = vm["strict"].as<bool>();
  c.last_value_cache = vm["last-value-cache"].as<bool>();
  c.lvc_max_topics = vm["lvc-max-topics"].as<std::size_t>();
  c.max_message_size = vm["max-message-size"].as<std::int64_t>();
  c.hwm = vm["hwm"].as<int>();
  if (c.hwm < 0) throw config_error("--hwm must be >= 0, got " + std::to_string(c.hwm));
  const long interval = vm["stats-interval"].as<long>();
  c.log = parse_log_level(vm["log-level"].as<std::string>());

  // Each endpoint is checked now, so a typo is a one-line error naming it.
  cli::check_endpoints("frontend", c.frontend);
  cli::check_endpoints("backend", c.backend);
  if (!c.control.empty()) cli::check_endpoints("control", c.control);
  if (!c.tap.empty()) cli::check_endpoints("tap", c.tap);
  if (c.max_message_size < 1) {
    throw config_error("--max-message-size must be positive, got " +
                       std::to_string(c.max_message_size));
  }
  if (interval < 0 || interval > 86'400) {
    throw config_error("--stats-interval must be 0 .. 86400 seconds, got " + std::to_string(interval));
  }
  c.stats_interval = std::chrono::seconds(interval);
  if (c.last_value_cache && c.mode != forwarder_mode::pubsub) {
    throw config_error("--last-value-cache works in pubsub mode only");
  }
  if (c.lvc_max_topics == 0) throw config_error("--lvc-max-topics must be positive");
  return cmd;
}

}  // namespace postbox::devices
