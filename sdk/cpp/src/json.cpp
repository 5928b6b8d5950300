#include "json.hpp"

#include <charconv>
#include <cmath>
#include <cstring>
#include <system_error>

namespace et {

bool utf8_check(std::string_view s, size_t *chars) {
  size_t n = 0;
  const auto *p = reinterpret_cast<const unsigned char *>(s.data());
  size_t len = s.size(), i = 0;
  while (i < len) {
    unsigned c = p[i];
    if (c == 0) return false;
    if (c < 0x80) {
      i++;
    } else {
      size_t extra;
      unsigned cp;
      if (c >= 0xC2 && c <= 0xDF) {
        extra = 1;
        cp = c & 0x1F;
      } else if (c >= 0xE0 && c <= 0xEF) {
        extra = 2;
        cp = c & 0x0F;
      } else if (c >= 0xF0 && c <= 0xF4) {
        extra = 3;
        cp = c & 0x07;
      } else {
        return false;
      }
      if (i + extra >= len) return false;
      for (size_t k = 1; k <= extra; k++) {
        unsigned cc = p[i + k];
        if ((cc & 0xC0) != 0x80) return false;
        cp = (cp << 6) | (cc & 0x3F);
      }
      if ((extra == 2 && cp < 0x800) || (extra == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
          (cp >= 0xD800 && cp <= 0xDFFF))
        return false;
      i += extra + 1;
    }
    n++;
  }
  if (chars) *chars = n;
  return true;
}

void json_append_string(std::string &out, std::string_view s) {
  static const char hex[] = "0123456789abcdef";
  out.push_back('"');
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out.push_back(hex[c >> 4]);
          out.push_back(hex[c & 15]);
        } else {
          out.push_back(ch);
        }
    }
  }
  out.push_back('"');
}

namespace {

// What PostgreSQL's numeric (jsonb) can hold, as ingest-api checks it (event-model's pg_numeric_fits):
// at most 16,383 digits after the decimal point and 131,072 before it, the exponent included.
bool pg_numeric_fits(const std::string &number) {
  std::string_view u(number);
  if (!u.empty() && u.front() == '-') u.remove_prefix(1);
  std::string_view mantissa = u, exponent = "0";
  size_t e = u.find_first_of("eE");
  if (e != std::string_view::npos) {
    mantissa = u.substr(0, e);
    exponent = u.substr(e + 1);
  }
  std::string_view ed = exponent;
  while (!ed.empty() && (ed.front() == '+' || ed.front() == '-')) ed.remove_prefix(1);
  while (!ed.empty() && ed.front() == '0') ed.remove_prefix(1);
  if (ed.size() > 9) return false;
  long long exp = 0;
  for (char c : ed) exp = exp * 10 + (c - '0');
  if (!exponent.empty() && exponent.front() == '-') exp = -exp;
  size_t dot = mantissa.find('.');
  std::string_view intpart = dot == std::string_view::npos ? mantissa : mantissa.substr(0, dot);
  std::string_view frac = dot == std::string_view::npos ? std::string_view() : mantissa.substr(dot + 1);
  long long scale = static_cast<long long>(frac.size()) - exp;
  if (scale > 16383) return false;
  size_t first = 0, total = intpart.size() + frac.size();
  auto digit = [&](size_t i) { return i < intpart.size() ? intpart[i] : frac[i - intpart.size()]; };
  while (first < total && digit(first) == '0') first++;
  if (first == total) return true;  // zero: only its scale matters
  return static_cast<long long>(intpart.size()) - static_cast<long long>(first) + exp <= 131072;
}

// True when the JSON number's magnitude is >= 1: a number std::from_chars finds out of range is then
// too large for a double; below 1 it is too small and rounds to zero.
bool at_least_one(std::string_view u) {
  if (!u.empty() && u.front() == '-') u.remove_prefix(1);
  size_t e = u.find_first_of("eE");
  std::string_view mantissa = u.substr(0, e), exponent = e == std::string_view::npos ? "" : u.substr(e + 1);
  // The decimal exponent of the first significant digit, without the written exponent.
  size_t dot = mantissa.find('.');
  std::string_view intpart = mantissa.substr(0, dot);
  std::string_view frac = dot == std::string_view::npos ? std::string_view() : mantissa.substr(dot + 1);
  size_t lead = intpart.find_first_not_of('0');
  long long mag;
  if (lead != std::string_view::npos) {
    mag = static_cast<long long>(intpart.size() - lead) - 1;
  } else {
    size_t f = frac.find_first_not_of('0');
    if (f == std::string_view::npos) return false;  // zero
    mag = -static_cast<long long>(f) - 1;
  }
  bool neg = !exponent.empty() && exponent.front() == '-';
  while (!exponent.empty() && (exponent.front() == '+' || exponent.front() == '-')) exponent.remove_prefix(1);
  while (!exponent.empty() && exponent.front() == '0') exponent.remove_prefix(1);
  // |mag| is below 2^31 (the text is short); an exponent of more than 12 digits decides alone.
  if (exponent.size() > 12) return !neg;
  long long exp = 0;
  for (char c : exponent) exp = exp * 10 + (c - '0');
  return mag + (neg ? -exp : exp) >= 0;
}

struct Parser {
  const char *p;
  const char *end;
  size_t max_depth;
  std::string *error;

  bool fail(const char *msg) {
    if (error && error->empty()) *error = msg;
    return false;
  }
  void ws() {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  }
  static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  bool hex4(unsigned *out) {
    if (end - p < 4) return fail("bad \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
      int h = hexval(p[i]);
      if (h < 0) return fail("bad \\u escape");
      v = v * 16 + static_cast<unsigned>(h);
    }
    p += 4;
    *out = v;
    return true;
  }
  static void put_utf8(std::string &s, unsigned cp) {
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      s.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      s.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  bool string(std::string *out) {
    p++;  // opening quote
    const char *run = p;
    for (;;) {
      if (p >= end) return fail("unterminated string");
      char c = *p;
      if (c == '"') {
        if (!utf8_check(std::string_view(run, static_cast<size_t>(p - run)), nullptr))
          return fail("invalid UTF-8 or NUL in a string");
        if (out) out->append(run, static_cast<size_t>(p - run));
        p++;
        return true;
      }
      if (static_cast<unsigned char>(c) < 0x20) return fail("control character in a string");
      if (c == '\\') {
        if (!utf8_check(std::string_view(run, static_cast<size_t>(p - run)), nullptr))
          return fail("invalid UTF-8 or NUL in a string");
        if (out) out->append(run, static_cast<size_t>(p - run));
        p++;
        if (p >= end) return fail("unterminated string");
        char e = *p++;
        switch (e) {
          case '"': if (out) out->push_back('"'); break;
          case '\\': if (out) out->push_back('\\'); break;
          case '/': if (out) out->push_back('/'); break;
          case 'b': if (out) out->push_back('\b'); break;
          case 'f': if (out) out->push_back('\f'); break;
          case 'n': if (out) out->push_back('\n'); break;
          case 'r': if (out) out->push_back('\r'); break;
          case 't': if (out) out->push_back('\t'); break;
          case 'u': {
            unsigned cp;
            if (!hex4(&cp)) return false;
            if (cp == 0) return fail("must not contain NUL (U+0000) in any key or string");
            if (cp >= 0xDC00 && cp <= 0xDFFF) return fail("lone surrogate in a \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return fail("lone surrogate in a \\u escape");
              p += 2;
              unsigned lo;
              if (!hex4(&lo)) return false;
              if (lo < 0xDC00 || lo > 0xDFFF) return fail("lone surrogate in a \\u escape");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (out) put_utf8(*out, cp);
            break;
          }
          default: return fail("bad escape in a string");
        }
        run = p;
        continue;
      }
      p++;
    }
  }
  bool number(double *out) {
    const char *start = p;
    if (p < end && *p == '-') p++;
    if (p >= end) return fail("bad number");
    if (*p == '0') {
      p++;
    } else if (*p >= '1' && *p <= '9') {
      while (p < end && *p >= '0' && *p <= '9') p++;
    } else {
      return fail("bad number");
    }
    if (p < end && *p == '.') {
      p++;
      if (p >= end || !(*p >= '0' && *p <= '9')) return fail("bad number");
      while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
      p++;
      if (p < end && (*p == '+' || *p == '-')) p++;
      if (p >= end || !(*p >= '0' && *p <= '9')) return fail("bad number");
      while (p < end && *p >= '0' && *p <= '9') p++;
    }
    std::string tmp(start, static_cast<size_t>(p - start));
    // std::from_chars, not std::strtod: the C locale must not matter (under de_DE, strtod stops at the '.').
    double v = 0;
    auto r = std::from_chars(tmp.data(), tmp.data() + tmp.size(), v);
    if (r.ec == std::errc::result_out_of_range) {
      // Too large (refused) or so small it rounds to zero (accepted as +-0, as strtod gave it).
      if (at_least_one(tmp)) return fail("number out of range");
      v = tmp.front() == '-' ? -0.0 : 0.0;
    } else if (r.ec != std::errc() || r.ptr != tmp.data() + tmp.size() || !std::isfinite(v)) {
      return fail("bad number");
    }
    if (!pg_numeric_fits(tmp)) return fail("number out of PostgreSQL's numeric range");
    if (out) *out = v;
    return true;
  }
  bool literal(const char *word) {
    size_t n = std::strlen(word);
    if (static_cast<size_t>(end - p) < n || std::memcmp(p, word, n) != 0) return fail("invalid JSON");
    p += n;
    return true;
  }
  bool value(JsonValue *out, size_t depth) {
    ws();
    if (p >= end) return fail("unexpected end of JSON");
    char c = *p;
    if (c == '{' || c == '[') {
      if (depth + 1 > max_depth) return fail("nested too deeply");
      bool obj = c == '{';
      if (out) out->type = obj ? JsonValue::Object : JsonValue::Array;
      p++;
      ws();
      char close = obj ? '}' : ']';
      if (p < end && *p == close) {
        p++;
        return true;
      }
      for (;;) {
        ws();
        if (obj) {
          if (p >= end || *p != '"') return fail("expected a key");
          std::string key;
          if (!string(out ? &key : nullptr)) return false;
          ws();
          if (p >= end || *p != ':') return fail("expected ':'");
          p++;
          if (out) {
            out->obj.emplace_back(std::move(key), JsonValue());
            if (!value(&out->obj.back().second, depth + 1)) return false;
          } else if (!value(nullptr, depth + 1)) {
            return false;
          }
        } else {
          if (out) {
            out->arr.emplace_back();
            if (!value(&out->arr.back(), depth + 1)) return false;
          } else if (!value(nullptr, depth + 1)) {
            return false;
          }
        }
        ws();
        if (p >= end) return fail("unexpected end of JSON");
        if (*p == ',') {
          p++;
          continue;
        }
        if (*p == close) {
          p++;
          return true;
        }
        return fail("expected ',' or a closing bracket");
      }
    }
    if (c == '"') {
      if (out) out->type = JsonValue::String;
      return string(out ? &out->str : nullptr);
    }
    if (c == 't') {
      if (out) out->type = JsonValue::Bool, out->b = true;
      return literal("true");
    }
    if (c == 'f') {
      if (out) out->type = JsonValue::Bool;
      return literal("false");
    }
    if (c == 'n') return literal("null");
    if (out) out->type = JsonValue::Number;
    return number(out ? &out->num : nullptr);
  }
};

}  // namespace

bool json_parse(std::string_view text, size_t max_depth, JsonValue *out, std::string *error) {
  Parser ps{text.data(), text.data() + text.size(), max_depth, error};
  if (!ps.value(out, 0)) return false;
  ps.ws();
  if (ps.p != ps.end) return ps.fail("trailing characters after JSON");
  return true;
}

}  // namespace et
