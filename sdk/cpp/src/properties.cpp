// et_props: a typed builder of an event's `properties` JSON object (see eventtracker.h). The SDK does
// the escaping and the number formatting (std::to_chars: exact integers, shortest round-trip doubles,
// never the C locale), and refuses at once what ingest-api would refuse: invalid UTF-8, NUL, non-finite
// numbers, nesting past 32 levels, more than 32 KiB of text.
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <new>
#include <string>
#include <string_view>

#include "eventtracker/eventtracker.h"
#include "json.hpp"

namespace {
// The server's limits (the same constants client.cpp checks at et_track).
constexpr size_t kMaxBytes = 32 * 1024;
constexpr size_t kMaxDepth = 32;  // the outermost object is depth 1
}  // namespace

struct et_props {
  // The text written so far: always starts with '{' and lacks one closing bracket per open container.
  std::string text;
  // The open containers, outermost first: '{' or '['. Never empty (the outermost object).
  std::string open;
  // et_props_json's answer: text plus "}", made on demand and kept until the next change.
  mutable std::string json;
  mutable bool json_fresh = false;

  et_props() { reset(); }
  void reset() {
    text.assign(1, '{');
    open.assign(1, '{');
    json.clear();
    json_fresh = false;
  }
  bool in_object() const { return open.back() == '{'; }
  // Everything the finished object needs: the text plus one closing bracket per open container. Keeping
  // this within the limit after every call means the balanced result is always within it.
  bool fits(size_t extra, size_t extra_open = 0) const {
    return text.size() + open.size() + extra + extra_open <= kMaxBytes;
  }
};

namespace {

bool text_ok(const char *s) { return et::utf8_check(std::string_view(s), nullptr); }

// Writes the separator and the key of the next value into `frag`, or refuses: a key is required inside
// an object and not allowed inside an array.
int member_prefix(const et_props *p, const char *key, std::string &frag) {
  if (p->in_object() != (key != nullptr)) return ET_E_PROPERTIES;
  if (key && !text_ok(key)) return ET_E_PROPERTIES;
  char last = p->text.back();
  if (last != '{' && last != '[') frag.push_back(',');
  if (key) {
    et::json_append_string(frag, key);
    frag.push_back(':');
  }
  return ET_OK;
}

// Appends one scalar member (`value` is its JSON text, already valid), or refuses leaving `p` unchanged.
int add_scalar(et_props *p, const char *key, std::string_view value) {
  if (!p) return ET_E_ARGUMENT;
  try {
    std::string frag;
    int rc = member_prefix(p, key, frag);
    if (rc != ET_OK) return rc;
    frag.append(value);
    if (!p->fits(frag.size())) return ET_E_PROPERTIES;
    p->text.append(frag);
    p->json_fresh = false;
    return ET_OK;
  } catch (...) {  // std::bad_alloc: nothing was changed
    return ET_E_PROPERTIES;
  }
}

int begin(et_props *p, const char *key, char bracket) {
  if (!p) return ET_E_ARGUMENT;
  try {
    if (p->open.size() + 1 > kMaxDepth) return ET_E_PROPERTIES;
    std::string frag;
    int rc = member_prefix(p, key, frag);
    if (rc != ET_OK) return rc;
    frag.push_back(bracket);
    if (!p->fits(frag.size(), 1)) return ET_E_PROPERTIES;  // + its closing bracket
    p->open.reserve(kMaxDepth);
    p->text.append(frag);
    p->open.push_back(bracket);
    p->json_fresh = false;
    return ET_OK;
  } catch (...) {
    return ET_E_PROPERTIES;
  }
}

// The shortest text that reads back as the same value, independent of the locale; NaN and infinities
// (not JSON) refused.
template <class T>
int add_shortest(et_props *props, const char *key, T value) {
  if (!props) return ET_E_ARGUMENT;
  if (!std::isfinite(value)) return ET_E_PROPERTIES;
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, value);
  if (r.ec != std::errc()) return ET_E_PROPERTIES;
  return add_scalar(props, key, std::string_view(buf, static_cast<size_t>(r.ptr - buf)));
}

}  // namespace

extern "C" {

ET_API et_props *et_props_new(void) {
  try {
    return new et_props();
  } catch (...) {
    return nullptr;
  }
}

ET_API void et_props_free(et_props *props) { delete props; }

ET_API void et_props_clear(et_props *props) {
  if (props) props->reset();
}

ET_API int et_props_string(et_props *props, const char *key, const char *value) {
  if (!props) return ET_E_ARGUMENT;
  if (!value || !text_ok(value)) return ET_E_PROPERTIES;
  try {
    std::string lit;
    et::json_append_string(lit, value);
    return add_scalar(props, key, lit);
  } catch (...) {
    return ET_E_PROPERTIES;
  }
}

ET_API int et_props_int(et_props *props, const char *key, int64_t value) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, value);
  return add_scalar(props, key, std::string_view(buf, static_cast<size_t>(r.ptr - buf)));
}

ET_API int et_props_double(et_props *props, const char *key, double value) {
  return add_shortest(props, key, value);  // "0.1", "1e+300", "-0"
}

ET_API int et_props_float(et_props *props, const char *key, float value) {
  return add_shortest(props, key, value);  // 0.1f writes 0.1, not 0.10000000149011612
}

ET_API int et_props_bool(et_props *props, const char *key, int value) {
  return add_scalar(props, key, value ? "true" : "false");
}

ET_API int et_props_null(et_props *props, const char *key) { return add_scalar(props, key, "null"); }

ET_API int et_props_begin_object(et_props *props, const char *key) { return begin(props, key, '{'); }

ET_API int et_props_begin_array(et_props *props, const char *key) { return begin(props, key, '['); }

ET_API int et_props_end(et_props *props) {
  if (!props) return ET_E_ARGUMENT;
  if (props->open.size() < 2) return ET_E_PROPERTIES;  // the outermost object is closed by et_props_json
  try {
    props->text.push_back(props->open.back() == '{' ? '}' : ']');  // fits: its byte was counted at begin
  } catch (...) {
    return ET_E_PROPERTIES;
  }
  props->open.pop_back();
  props->json_fresh = false;
  return ET_OK;
}

ET_API const char *et_props_json(const et_props *props) {
  if (!props || props->open.size() != 1) return nullptr;
  if (!props->json_fresh) {
    try {
      props->json.reserve(props->text.size() + 1);
      props->json.assign(props->text);
      props->json.push_back('}');
    } catch (...) {
      return nullptr;
    }
    props->json_fresh = true;
  }
  return props->json.c_str();
}

}  // extern "C"
