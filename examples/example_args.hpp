// The examples take no arguments: `--help` says what one does, and anything
// else is refused (exit 2), so that a mistyped option is not silently
// ignored while the example runs on its defaults.
#pragma once

#include <cstdio>
#include <cstring>

namespace example {

/// -1: no arguments, go on. Otherwise the exit code to return at once.
inline int check_args(int argc, char** argv, const char* about) {
  if (argc <= 1) return -1;
  const char* slash = std::strrchr(argv[0], '/');
  const char* name = slash != nullptr ? slash + 1 : argv[0];
  if (argc == 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::printf("usage: %s\n\n%s\n", name, about);
    return 0;
  }
  std::fprintf(stderr, "%s: unexpected argument \"%s\" (it takes none; --help says what it does)\n",
               name, argv[1]);
  return 2;
}

}  // namespace example
