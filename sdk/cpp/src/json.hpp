// Minimal JSON: a validator with the server's rules for `properties`, string escaping and a small
// DOM for the server's responses. Internal (not exported).
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace et {

struct JsonValue {
  enum Type { Null, Bool, Number, String, Array, Object } type = Null;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<JsonValue> arr;
  std::vector<std::pair<std::string, JsonValue>> obj;
  const JsonValue *get(std::string_view key) const {
    for (auto &kv : obj)
      if (kv.first == key) return &kv.second;
    return nullptr;
  }
};

// Parses one JSON text (surrounding whitespace allowed). max_depth: deepest container nesting (the
// outermost container is depth 1). Rejects NUL in strings and keys, invalid UTF-8, lone surrogates,
// numbers out of double range. `out` may be null (validate only). On failure, `error` says why.
bool json_parse(std::string_view text, size_t max_depth, JsonValue *out, std::string *error);

// True when `s` is valid UTF-8 (no overlongs, no surrogates) and has no NUL; `chars` gets the
// number of Unicode scalar values.
bool utf8_check(std::string_view s, size_t *chars);

// Appends `s` as a JSON string literal (with quotes).
void json_append_string(std::string &out, std::string_view s);

}  // namespace et
