// What every daemon's command line shares: argv, then the --config FILE it
// names, read with Boost.Program_options into one variables_map. Private to
// devices/.
#pragma once

#include <postbox/error.hpp>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include <boost/program_options.hpp>

namespace postbox::devices::cli {

/// Parses argv and the config file; Program_options' errors become a
/// config_error carrying its one-line text.
inline boost::program_options::variables_map parse_command_line(
    int argc, const char* const* argv, const boost::program_options::options_description& desc) {
  namespace po = boost::program_options;
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    if (vm.count("config")) {
      const auto path = vm["config"].as<std::string>();
      std::ifstream file(path);
      if (!file) {
        throw config_error("cannot read config file \"" + path + "\": " + std::strerror(errno));
      }
      po::store(po::parse_config_file(file, desc), vm);
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
