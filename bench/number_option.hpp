// A benchmark option's numeric value, checked: a finite number in [lo, hi],
// written in full, and a whole one when `whole`; nullopt otherwise (the
// caller prints its usage and exits 2).
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <optional>

namespace postbox::bench {

inline std::optional<double> number_in(const char* text, double lo, double hi, bool whole) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text, &end);
  if (end == text || *end != '\0' || errno == ERANGE || !std::isfinite(v) || v < lo || v > hi ||
      (whole && v != std::floor(v)))
    return std::nullopt;
  return v;
}

}  // namespace postbox::bench
