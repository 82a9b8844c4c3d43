// Topic pattern matching (docs/protocol.md, "Topics").
#include <postbox/topic.hpp>

#include <postbox/error.hpp>

namespace postbox {
namespace {

// Splits off the next token of `s` at '.'; `s` keeps the rest.
std::string_view next_token(std::string_view& s, bool& more) noexcept {
  const auto dot = s.find('.');
  if (dot == std::string_view::npos) {
    auto token = s;
    s = {};
    more = false;
    return token;
  }
  auto token = s.substr(0, dot);
  s.remove_prefix(dot + 1);
  more = true;
  return token;
}

}  // namespace

topic_pattern::topic_pattern(std::string_view pattern) : text_(pattern) {
  auto bad = [&](const char* why) {
    throw config_error("topic pattern \"" + text_ + "\": " + why);
  };
  if (const auto nul = pattern.find('\0'); nul != std::string_view::npos) {
    text_ = std::string(pattern.substr(0, nul)) + "...";  // printable in the message
    bad("contains a 0x00 byte");
  }
  if (pattern.empty()) bad("empty pattern (subscribe to the prefix \"\" for everything)");
  std::string_view rest = pattern;
  bool more = true;
  std::size_t literal = 0;  // bytes of the literal prefix, including its trailing dot
  while (more) {
    const auto token = next_token(rest, more);
    if (token.empty()) bad("empty token (two dots, or a dot at either end)");
    if (token == ">" && more) bad("\">\" must be the last token");
    if (token == "*" || token == ">") {
      wildcards_ = true;
    } else if (!wildcards_) {
      literal += token.size() + (more ? 1 : 0);
    }
  }
  if (wildcards_) {
    prefix_ = text_.substr(0, literal);
  } else {
    prefix_ = text_;
    prefix_.push_back('\0');
  }
}

bool prefix_matches(std::string_view filter, std::string_view topic) noexcept {
  if (filter.size() <= topic.size()) return topic.starts_with(filter);
  return filter.size() == topic.size() + 1 && filter.back() == '\0' && filter.starts_with(topic);
}

bool topic_pattern::matches(std::string_view topic) const noexcept {
  std::string_view pat = text_;
  bool pat_more = true, top_more = !topic.empty();
  if (topic.empty()) return false;
  while (pat_more) {
    const auto p = next_token(pat, pat_more);
    if (!top_more) return false;
    const auto t = next_token(topic, top_more);
    if (p == ">") return !t.empty() || top_more;
    if (p != "*" && p != t) return false;
    if (p == "*" && t.empty()) return false;
  }
  return !top_more;
}

}  // namespace postbox
