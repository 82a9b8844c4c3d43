// postbox/topic.hpp: hierarchical topic patterns (docs/protocol.md, "Topics").
//
// Topics are dot-separated tokens, "orders.eu.created". In a pattern, a token
// "*" matches exactly one token and a last token ">" matches one or more:
// "orders.*.created", "orders.>". A pattern without wildcards matches its
// topic exactly. The ZeroMQ socket filters on the literal prefix before the
// first wildcard; the subscriber matches the rest.
#pragma once

#include <string>
#include <string_view>

namespace postbox {

/// Whether a ZeroMQ SUB filter takes a message on `topic`: the filter is a
/// prefix of the first frame, which starts with the topic and its 0x00.
[[nodiscard]] bool prefix_matches(std::string_view filter, std::string_view topic) noexcept;

class topic_pattern {
 public:
  /// Throws config_error for an empty pattern, an empty token, or ">" that
  /// is not the last token.
  explicit topic_pattern(std::string_view pattern);

  [[nodiscard]] bool matches(std::string_view topic) const noexcept;
  /// The bytes a SUB socket filter takes: the literal tokens before the first
  /// wildcard, or the whole topic and its 0x00 terminator when there is none.
  [[nodiscard]] const std::string& socket_prefix() const noexcept { return prefix_; }
  [[nodiscard]] const std::string& text() const noexcept { return text_; }
  [[nodiscard]] bool has_wildcards() const noexcept { return wildcards_; }

 private:
  std::string text_;
  std::string prefix_;
  bool wildcards_ = false;
};

}  // namespace postbox
