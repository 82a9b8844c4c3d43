// postbox-queue's command line and config file (Boost.Program_options), in
// the library so tests can feed it argv and check the one-line errors.
#include <postbox/devices/queue.hpp>

#include <postbox/detail/queue_wire.hpp>
#include <postbox/endpoint.hpp>
#include <postbox/error.hpp>

#include "command_line.hpp"

#include <boost/program_options.hpp>

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>

namespace po = boost::program_options;

namespace postbox::devices {
namespace {

constexpr const char* usage_head =
    "usage: postbox-queue [options]\n"
    "\n"
    "A durable work queue: producers' messages are on disk before they are\n"
    "confirmed; consumers ack or nack each delivery; failures are retried with\n"
    "backoff and end in the queue's dead-letter queue (NAME.dlq). Messages with\n"
    "a key are delivered one at a time per key, in order.\n"
    "Endpoints: '@' binds, '>' connects (default: bind); \"none\" turns an\n"
    "optional one off. Every option can also be given in --config FILE as\n"
    "key = value. Durations are in milliseconds unless the name says seconds.\n"
    "\n";

constexpr const char* usage_tail =
    "\n"
    "Defaults: clients @tcp://127.0.0.1:5590, plain-in :5591, plain-out :5592,\n"
    "control :5593, data in ./postbox-queue-data.\n"
    "The control endpoint answers \"ping\", \"stats\" (JSON), \"list QUEUE [N]\"\n"
    "(dead letters) and \"redrive QUEUE [N]\" (dead letters back to QUEUE).\n"
    "\n"
    "Exit codes: 0 stopped by SIGINT/SIGTERM (everything accepted is synced),\n"
    "1 failure while running, 2 bad option, endpoint, config file, an address\n"
    "already in use or a data directory another device holds.\n";

// A number as the user would have written it (no trailing zeros).
std::string vm_text(double v) {
  std::ostringstream o;
  o << std::setprecision(15) << v;
  return o.str();
}

po::options_description describe() {
  const queue_config d = default_queue_config();
  po::options_description o("Options");
  // clang-format off
  o.add_options()
    ("help,h", "print this help and exit")
    ("version", "print the version and exit")
    ("config", po::value<std::string>()->value_name("FILE"), "read options from FILE (key = value lines)")
    ("clients", po::value<std::string>()->default_value(d.clients)->value_name("ENDPOINTS"), "where producers and consumers connect")
    ("plain-in", po::value<std::string>()->default_value(d.plain_in)->value_name("ENDPOINTS"), "PULL for plain senders; the topic names the queue (\"none\": off)")
    ("plain-out", po::value<std::string>()->default_value(d.plain_out)->value_name("ENDPOINTS"), "PUSH for plain receivers of --plain-queue (\"none\": off)")
    ("plain-queue", po::value<std::string>()->default_value(d.plain_queue)->value_name("NAME"), "the queue --plain-out serves")
    ("control", po::value<std::string>()->default_value(d.control)->value_name("ENDPOINT"), "control endpoint (\"none\": off)")
    ("data-dir", po::value<std::string>()->default_value(d.data_dir.string())->value_name("DIR"), "one spool per queue under DIR")
    ("fsync", po::value<std::string>()->default_value("always")->value_name("POLICY"), "always (fdatasync before confirming), interval=MS or never (these two can lose confirmed messages on power loss)")
    ("sync-spacing", po::value<double>()->default_value(static_cast<double>(d.sync_spacing.count()) / 1000, vm_text(static_cast<double>(d.sync_spacing.count()) / 1000))->value_name("MS"), "under --fsync always, while messages keep coming, a sync normally starts no sooner than this after the one before, and the messages share it; adds up to this much to a confirm; after a sync of fewer than 64 messages, that share of it (0 .. 100, fractions allowed; 0: sync each batch at once)")
    ("segment-size", po::value<std::uint32_t>()->default_value(d.segment_size)->value_name("BYTES"), "spool segment size")
    ("max-attempts", po::value<std::uint32_t>()->default_value(d.max_attempts)->value_name("N"), "deliveries before a message is dead-lettered")
    ("visibility-timeout", po::value<long>()->default_value(d.visibility_timeout.count())->value_name("MS"), "unacked this long, a delivery goes to another consumer")
    ("retry-initial", po::value<long>()->default_value(d.retry_initial.count())->value_name("MS"), "backoff after the first failure (doubles, +-20% jitter)")
    ("retry-max", po::value<long>()->default_value(d.retry_max.count())->value_name("MS"), "longest backoff")
    ("heartbeat-liveness", po::value<std::uint32_t>()->default_value(d.heartbeat_liveness)->value_name("N"), "heartbeats a consumer may miss before it counts as gone")
    ("dedup-window", po::value<long>()->default_value(d.dedup_window.count())->value_name("MS"), "producer ids remembered this long (0: no de-duplication)")
    ("dedup-max-ids", po::value<std::size_t>()->default_value(d.dedup_max_ids)->value_name("N"), "at most this many ids remembered")
    ("buffer-messages", po::value<std::size_t>()->default_value(d.buffer_messages)->value_name("N"), "messages read ahead of delivery per queue")
    ("buffer-bytes", po::value<std::size_t>()->default_value(d.buffer_bytes)->value_name("BYTES"), "memory for records read ahead of delivery per queue")
    ("max-prefetch", po::value<std::uint32_t>()->default_value(d.max_prefetch)->value_name("N"), "unacked deliveries one consumer holds at most, whatever it asks for")
    ("max-prefetch-bytes", po::value<std::size_t>()->default_value(d.max_prefetch_bytes)->value_name("BYTES"), "bytes of unacked deliveries one consumer holds at most (one delivery always goes)")
    ("max-queues", po::value<std::size_t>()->default_value(d.max_queues)->value_name("N"), "queues the device opens at most")
    ("max-message-size", po::value<std::int64_t>()->default_value(d.max_message_size)->value_name("BYTES"), "largest frame accepted; a larger one drops its connection")
    ("hwm", po::value<int>()->default_value(d.hwm)->value_name("N"), "messages queued per peer and direction")
    ("stats-interval", po::value<long>()->default_value(d.stats_interval.count())->value_name("SECONDS"), "log a one-line rate every SECONDS (0: never)")
    ("log-level", po::value<std::string>()->default_value("info")->value_name("LEVEL"), "error, warn, info or debug");
  // clang-format on
  return o;
}

std::chrono::milliseconds positive_ms(const po::variables_map& vm, const char* name, bool zero_ok) {
  const long v = vm[name].as<long>();
  if (v < 0 || (v == 0 && !zero_ok) || v > 30L * 24 * 3600 * 1000) {
    throw config_error(std::string("--") + name + " must be " + (zero_ok ? ">= 0" : "> 0") +
                       " and at most 30 days in ms, got " + std::to_string(v));
  }
  return std::chrono::milliseconds(v);
}

}  // namespace

queue_command load_queue_config(int argc, const char* const* argv) {
  const auto desc = describe();
  const auto vm = cli::parse_command_line(argc, argv, desc);
  queue_command cmd;
  cmd.print_and_exit =
      cli::help_or_version(vm, desc, usage_head, usage_tail, "postbox-queue", POSTBOX_VERSION);
  if (cmd.print_and_exit) return cmd;

  auto& c = cmd.config;
  auto endpoint = [&vm](const char* name, bool optional) {
    std::string v = vm[name].as<std::string>();
    if (optional && v == "none") return std::string();
    cli::check_endpoints(name, v);
    return v;
  };
  c.clients = endpoint("clients", false);
  c.plain_in = endpoint("plain-in", true);
  c.plain_out = endpoint("plain-out", true);
  c.control = endpoint("control", true);
  c.plain_queue = vm["plain-queue"].as<std::string>();
  if (auto why = detail::queue_wire::invalid_queue_name(c.plain_queue)) {
    throw config_error("--plain-queue \"" + c.plain_queue + "\": " + *why);
  }
  c.data_dir = vm["data-dir"].as<std::string>();
  if (c.data_dir.empty()) throw config_error("--data-dir cannot be empty");

  const auto fsync = vm["fsync"].as<std::string>();
  if (fsync == "always") {
    c.fsync = fsync_policy::always;
  } else if (fsync == "never") {
    c.fsync = fsync_policy::never;
  } else if (fsync.rfind("interval=", 0) == 0) {
    char* end = nullptr;
    const long ms = std::strtol(fsync.c_str() + 9, &end, 10);
    if (end == fsync.c_str() + 9 || *end != '\0' || ms <= 0 || ms > 3'600'000) {
      throw config_error("--fsync \"" + fsync + "\": interval must be 1..3600000 ms");
    }
    c.fsync = fsync_policy::interval;
    c.fsync_interval = std::chrono::milliseconds(ms);
  } else {
    throw config_error("--fsync \"" + fsync + "\": use always, interval=MS or never");
  }
  const double spacing_ms = vm["sync-spacing"].as<double>();
  if (!std::isfinite(spacing_ms) || spacing_ms < 0 || spacing_ms > 100) {
    throw config_error("--sync-spacing must be 0 .. 100 ms, got " + vm_text(spacing_ms));
  }
  // To the microsecond; a positive value never rounds to 0 (which turns the spacing off).
  c.sync_spacing = std::chrono::microseconds(std::max(std::llround(spacing_ms * 1000), spacing_ms > 0 ? 1LL : 0LL));
  c.segment_size = vm["segment-size"].as<std::uint32_t>();
  if (c.segment_size < 1024 || c.segment_size > (1u << 30)) {
    throw config_error("--segment-size must be 1024 .. 1073741824, got " +
                       std::to_string(c.segment_size));
  }
  c.max_attempts = vm["max-attempts"].as<std::uint32_t>();
  if (c.max_attempts == 0) throw config_error("--max-attempts must be at least 1");
  c.visibility_timeout = positive_ms(vm, "visibility-timeout", false);
  c.retry_initial = positive_ms(vm, "retry-initial", false);
  c.retry_max = positive_ms(vm, "retry-max", false);
  if (c.retry_max < c.retry_initial) throw config_error("--retry-max must be at least --retry-initial");
  c.heartbeat_liveness = vm["heartbeat-liveness"].as<std::uint32_t>();
  if (c.heartbeat_liveness == 0) throw config_error("--heartbeat-liveness must be at least 1");
  c.dedup_window = positive_ms(vm, "dedup-window", true);
  c.dedup_max_ids = vm["dedup-max-ids"].as<std::size_t>();
  if (c.dedup_max_ids == 0) {
    throw config_error("--dedup-max-ids must be positive (--dedup-window 0 turns de-duplication off)");
  }
  c.buffer_messages = vm["buffer-messages"].as<std::size_t>();
  c.buffer_bytes = vm["buffer-bytes"].as<std::size_t>();
  if (c.buffer_messages == 0 || c.buffer_bytes == 0) {
    throw config_error("--buffer-messages and --buffer-bytes must be positive");
  }
  c.max_prefetch = vm["max-prefetch"].as<std::uint32_t>();
  if (c.max_prefetch == 0 || c.max_prefetch > 1'000'000) {
    throw config_error("--max-prefetch must be 1 .. 1000000, got " + std::to_string(c.max_prefetch));
  }
  c.max_prefetch_bytes = vm["max-prefetch-bytes"].as<std::size_t>();
  if (c.max_prefetch_bytes == 0) throw config_error("--max-prefetch-bytes must be positive");
  c.max_queues = vm["max-queues"].as<std::size_t>();
  if (c.max_queues == 0 || c.max_queues > 10'000) throw config_error("--max-queues must be 1 .. 10000");
  c.max_message_size = vm["max-message-size"].as<std::int64_t>();
  if (c.max_message_size < 64) {
    throw config_error("--max-message-size must be at least 64, got " + std::to_string(c.max_message_size));
  }
  c.hwm = vm["hwm"].as<int>();
  if (c.hwm < 1) throw config_error("--hwm must be positive, got " + std::to_string(c.hwm));
  const long interval = vm["stats-interval"].as<long>();
  if (interval < 0 || interval > 86'400) throw config_error("--stats-interval must be 0 .. 86400 seconds");
  c.stats_interval = std::chrono::seconds(interval);
  c.log = parse_log_level(vm["log-level"].as<std::string>());
  return cmd;
}

}  // namespace postbox::devices
