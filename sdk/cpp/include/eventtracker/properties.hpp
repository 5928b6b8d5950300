// EventTracker C++ properties builder: header-only over the et_props C ABI (eventtracker.h), so a game
// never writes JSON by hand. Escaping and number formatting are the SDK's, independent of the locale.
//
//   eventtracker::Properties p;
//   p.set("map", "dust 2").set("score", 1200).set("ratio", 0.1).set("ranked", true)
//    .object("weapon", [](auto &o) { o.set("name", "sword").set("level", 3); })
//    .array("party", [](auto &a) { a.push("anna").push("ben"); });
//   eventtracker::track(client, "level_up", p);   // refuses (ET_E_PROPERTIES) if any call was refused
//
// A refused call (see eventtracker.h: bad UTF-8 or NUL, NaN/infinity, a key inside an array or none in
// an object, depth past 32, more than 32 KiB) changes nothing and makes ok() false until clear().
// Nothing here throws but std::bad_alloc.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "eventtracker/client.hpp"
#include "eventtracker/eventtracker.h"

namespace eventtracker {

namespace detail {
// The integer types Properties writes as numbers: not bool, not the character types (a char is text).
template <typename T>
struct is_integer
    : std::integral_constant<bool, std::is_integral<T>::value && !std::is_same<T, bool>::value &&
                                       !std::is_same<T, char>::value && !std::is_same<T, wchar_t>::value &&
                                       !std::is_same<T, char16_t>::value && !std::is_same<T, char32_t>::value> {};
}  // namespace detail

class Properties {
 public:
  Properties() : p_(et_props_new()) {
    if (!p_) throw std::bad_alloc();
  }
  ~Properties() { et_props_free(p_); }
  Properties(const Properties &) = delete;
  Properties &operator=(const Properties &) = delete;
  // A moved-from builder refuses every call (ok() false, json() nullptr).
  Properties(Properties &&o) noexcept : p_(std::exchange(o.p_, nullptr)), error_(std::exchange(o.error_, 0)) {}
  Properties &operator=(Properties &&o) noexcept {
    if (this != &o) {
      et_props_free(p_);
      p_ = std::exchange(o.p_, nullptr);
      error_ = std::exchange(o.error_, 0);
    }
    return *this;
  }

  // ---- members of an object (the outermost one, or one opened by object()/begin_object()) ----
  Properties &set(std::string_view key, std::string_view value) { return put_string(key_(key), value); }
  Properties &set(std::string_view key, const std::string &value) { return put_string(key_(key), value); }
  // A string, not a bool; nullptr writes null.
  Properties &set(std::string_view key, const char *value) {
    return value ? put_string(key_(key), std::string_view(value)) : null(key_(key));
  }
  Properties &set(std::string_view key, bool value) {
    Key k = key_(key);
    return check(k.ok ? et_props_bool(p_, k.c_str(), value ? 1 : 0) : ET_E_PROPERTIES);
  }
  // Any integer type but the character types; an unsigned value above INT64_MAX is refused.
  template <typename T, std::enable_if_t<detail::is_integer<T>::value, int> = 0>
  Properties &set(std::string_view key, T value) {
    return integer(key_(key), value);
  }
  Properties &set(std::string_view key, double value) { return dbl(key_(key), value); }
  Properties &set(std::string_view key, float value) { return flt(key_(key), value); }
  Properties &set_null(std::string_view key) { return null(key_(key)); }

  // Opens an object/array as the value of key, runs fn(*this) to fill it, closes it.
  template <typename F>
  Properties &object(std::string_view key, F &&fn) {
    return nested(key_(key), true, std::forward<F>(fn));
  }
  template <typename F>
  Properties &array(std::string_view key, F &&fn) {
    return nested(key_(key), false, std::forward<F>(fn));
  }
  Properties &begin_object(std::string_view key) {
    Key k = key_(key);
    return check(k.ok ? et_props_begin_object(p_, k.c_str()) : ET_E_PROPERTIES);
  }
  Properties &begin_array(std::string_view key) {
    Key k = key_(key);
    return check(k.ok ? et_props_begin_array(p_, k.c_str()) : ET_E_PROPERTIES);
  }

  // ---- elements of an array ----
  Properties &push(std::string_view value) { return put_string(Key(), value); }
  Properties &push(const std::string &value) { return put_string(Key(), value); }
  Properties &push(const char *value) { return value ? put_string(Key(), std::string_view(value)) : null(Key()); }
  Properties &push(bool value) { return check(et_props_bool(p_, nullptr, value ? 1 : 0)); }
  template <typename T, std::enable_if_t<detail::is_integer<T>::value, int> = 0>
  Properties &push(T value) {
    return integer(Key(), value);
  }
  Properties &push(double value) { return dbl(Key(), value); }
  Properties &push(float value) { return flt(Key(), value); }
  Properties &push(std::nullptr_t) { return null(Key()); }
  Properties &push_null() { return null(Key()); }
  template <typename F>
  Properties &push_object(F &&fn) {
    return nested(Key(), true, std::forward<F>(fn));
  }
  template <typename F>
  Properties &push_array(F &&fn) {
    return nested(Key(), false, std::forward<F>(fn));
  }
  Properties &begin_object() { return check(et_props_begin_object(p_, nullptr)); }
  Properties &begin_array() { return check(et_props_begin_array(p_, nullptr)); }

  // Closes the innermost open object or array.
  Properties &end() { return check(et_props_end(p_)); }

  // Back to {} and ok() true.
  Properties &clear() {
    et_props_clear(p_);
    error_ = p_ ? 0 : ET_E_ARGUMENT;
    return *this;
  }

  // The JSON object text, or nullptr while an object/array is open. Valid until the next change.
  const char *json() const noexcept { return et_props_json(p_); }
  // False after any refused call (the refused values are missing from json()), or when moved from.
  bool ok() const noexcept { return p_ && error_ == 0; }
  // The first refusal's code (ET_E_PROPERTIES or ET_E_ARGUMENT), 0 if none.
  int error() const noexcept { return p_ ? error_ : ET_E_ARGUMENT; }
  et_props *native() const noexcept { return p_; }

 private:
  // A key as C text; ok is false when it holds a NUL (the C ABI could not see past it).
  struct Key {
    bool present = false, ok = true;
    std::string text;
    const char *c_str() const { return present ? text.c_str() : nullptr; }
  };
  static Key key_(std::string_view key) {
    Key k;
    k.present = true;
    k.ok = std::memchr(key.data(), '\0', key.size()) == nullptr;
    if (k.ok) k.text.assign(key.data(), key.size());
    return k;
  }

  Properties &check(int rc) {
    if (rc != 0 && error_ == 0) error_ = rc;
    return *this;
  }
  Properties &put_string(const Key &k, std::string_view value) {
    if (!k.ok || std::memchr(value.data(), '\0', value.size())) return check(p_ ? ET_E_PROPERTIES : ET_E_ARGUMENT);
    return check(et_props_string(p_, k.c_str(), std::string(value).c_str()));
  }
  template <typename T>
  Properties &integer(const Key &k, T value) {
    if (!k.ok) return check(ET_E_PROPERTIES);
    if constexpr (std::is_unsigned<T>::value && sizeof(T) >= sizeof(std::int64_t)) {
      if (value > static_cast<T>(std::numeric_limits<std::int64_t>::max()))
        return check(p_ ? ET_E_PROPERTIES : ET_E_ARGUMENT);
    }
    return check(et_props_int(p_, k.c_str(), static_cast<std::int64_t>(value)));
  }
  Properties &dbl(const Key &k, double value) {
    return check(k.ok ? et_props_double(p_, k.c_str(), value) : ET_E_PROPERTIES);
  }
  Properties &flt(const Key &k, float value) {
    return check(k.ok ? et_props_float(p_, k.c_str(), value) : ET_E_PROPERTIES);
  }
  Properties &null(const Key &k) { return check(k.ok ? et_props_null(p_, k.c_str()) : ET_E_PROPERTIES); }
  template <typename F>
  Properties &nested(const Key &k, bool obj, F &&fn) {
    int rc = !k.ok ? ET_E_PROPERTIES
                   : obj ? et_props_begin_object(p_, k.c_str()) : et_props_begin_array(p_, k.c_str());
    if (rc != 0) return check(rc);  // fn is not run: its members would land in the wrong container
    std::forward<F>(fn)(*this);
    return end();
  }

  et_props *p_ = nullptr;
  int error_ = 0;
};

// Tracks an event with the builder's properties: ET_E_PROPERTIES when a call on it was refused or an
// object/array is still open (so a half-built event is never sent), else as Client::track.
inline int track(Client &client, std::string_view name, const Properties &props, std::string_view user_id = {}) {
  const char *json = props.json();
  if (!props.ok() || !json) return ET_E_PROPERTIES;
  return client.track(name, json, user_id);
}

}  // namespace eventtracker
