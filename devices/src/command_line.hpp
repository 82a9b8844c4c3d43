// What every daemon's command line shares: argv, then the --config FILE it
// names, read with Boost.Program_options into one variables_map. Private to
// devices/.
#pragma once

#include <postbox/endpoint.hpp>
#include <postbox/error.hpp>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

namespace postbox::devices::cli {

/// Program_options reads "-1" for an unsigned option as a huge number (as
/// strtoul does): refuses a sign in the value of every unsigned option.
inline void refuse_signed_unsigned(const boost::program_options::parsed_options& parsed,
                                   const boost::program_options::options_description& desc) {
  namespace po = boost::program_options;
  for (const auto& o : parsed.options) {
    const auto* d = desc.find_nothrow(o.string_key, false);
    if (d == nullptr) continue;
    const auto* s = d->semantic().get();
    if (dynamic_cast<const po::typed_value<unsigned int>*>(s) == nullptr &&
        dynamic_cast<const po::typed_value<unsigned long>*>(s) == nullptr &&
        dynamic_cast<const po::typed_value<unsigned long long>*>(s) == nullptr) {
      continue;
    }
    for (const auto& v : o.value) {
      const auto first = v.find_first_not_of(" \t");
      if (first != std::string::npos && (v[first] == '-' || v[first] == '+')) {
        throw config_error("--" + o.string_key + " takes digits only (no sign), got \"" + v + "\"");
      }
    }
  }
}

/// Checks an endpoint option of a daemon: one line naming the option when it
/// does not parse, and inproc:// refused (it reaches only this process).
inline void check_endpoints(const char* option, const std::string& value) {
  std::vector<endpoint> parsed;
  try {
    parsed = parse_endpoints(value, endpoint_mode::bind);
  } catch (const config_error& e) {
    throw config_error(std::string("--") + option + ": " + e.what());
  }
  for (const auto& ep : parsed) {
    if (ep.transport == transport::inproc) {
      throw config_error(std::string("--") + option + ": " + ep.address +
                         " reaches only this process; a daemon's endpoints are tcp:// or ipc://");
    }
  }
}

/// Parses argv and the config file; Program_options' errors become a
/// config_error carrying its one-line text.
inline boost::program_options::variables_map parse_command_line(
    int argc, const char* const* argv, const boost::program_options::options_description& desc) {
  namespace po = boost::program_options;
  po::variables_map vm;
  try {
    // Words that belong to no option are collected, to be named in the
    // error (Program_options would call each an ambiguous option).
    po::options_description all;
    all.add(desc).add_options()("unexpected-argument", po::value<std::vector<std::string>>());
    po::positional_options_description positional;
    positional.add("unexpected-argument", -1);
    const auto from_argv = po::command_line_parser(argc, argv).options(all).positional(positional).run();
    refuse_signed_unsigned(from_argv, desc);
    po::store(from_argv, vm);
    if (vm.count("unexpected-argument")) {
      throw config_error("unexpected argument \"" +
                         vm["unexpected-argument"].as<std::vector<std::string>>().front() +
                         "\" (options start with --)");
    }
    if (vm.count("config")) {
      const auto path = vm["config"].as<std::string>();
      std::error_code ec;
      if (std::filesystem::is_directory(path, ec)) {
        throw config_error("cannot read config file \"" + path + "\": it is a directory");
      }
      std::ifstream file(path, std::ios::binary);
      if (!file) {
        throw config_error("cannot read config file \"" + path + "\": " + std::strerror(errno));
      }
      std::ostringstream text;
      text << file.rdbuf();
      // Program_options would quote such a line in its error, and a NUL in
      // it would cut the message short: name the line instead.
      const std::string content = text.str();
      std::size_t line = 1;
      for (const char ch : content) {
        if (ch == '\n') {
          ++line;
        } else if (static_cast<unsigned char>(ch) < 0x20 && ch != '\t' && ch != '\r') {
          throw config_error("config file \"" + path + "\": line " + std::to_string(line) +
                             " holds a control character; it is not a text file of key = value lines");
        }
      }
      std::istringstream in(content);
      const auto from_file = po::parse_config_file(in, desc);
      refuse_signed_unsigned(from_file, desc);
      po::store(from_file, vm);
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw config_error(e.what());
  }
  return vm;
}

/// The text to print for --help or --version, if either was asked for.
inline std::optional<std::string> help_or_version(const boost::program_options::variables_map& vm,
                                                  const boost::program_options::options_description& desc,
                                                  const char* head, const char* tail,
                                                  const char* program, const char* version) {
  if (vm.count("help")) {
    std::ostringstream text;
    text << head << desc << tail;
    return text.str();
  }
  if (vm.count("version")) return std::string(program) + " " + version + "\n";
  return std::nullopt;
}

}  // namespace postbox::devices::cli
