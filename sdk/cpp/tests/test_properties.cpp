// 8. The properties builder (et_props, eventtracker::Properties): escaping, numbers, nesting, the server's
//    limits, refusals that change nothing, the C locale never mattering, and values landing unchanged in
//    PostgreSQL's jsonb through the real pipeline.
#include <charconv>
#include <clocale>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <type_traits>

#include "common.hpp"
#include "eventtracker/properties.hpp"
#include "../src/json.hpp"

namespace {

// A builder freed at scope exit.
struct Props {
  et_props *p = et_props_new();
  Props() { EXPECT_NE(p, nullptr); }
  ~Props() { et_props_free(p); }
  Props(const Props &) = delete;
  Props &operator=(const Props &) = delete;
  std::string json() const {
    const char *j = et_props_json(p);
    return j ? j : "<NULL>";
  }
};

bool valid_properties(const std::string &text) { return et::json_parse(text, 32, nullptr, nullptr); }

// ingest-api's rules for `properties` (event-model check_properties): an object, at most 32 KiB as sent,
// at most 32 levels, numbers that fit a double and PostgreSQL's numeric. (Not et_track: the client may
// add properties of its own to the text it checks.)
bool server_accepts(const char *text) {
  return text && text[0] == '{' && std::strlen(text) <= 32 * 1024 && valid_properties(text);
}

// A client that never sends (unreachable endpoint, 60 s flush interval): et_track only validates and queues.
struct OfflineClient {
  et_client *c = new_client("http://127.0.0.1:9", "");
  OfflineClient() {
    if (c) {
      EXPECT_EQ(et_client_set(c, "flush_interval_ms", "60000"), 0);
    }
  }
  ~OfflineClient() {
    if (c) et_client_free(c, 0);
  }
};

// Sets LC_ALL for the scope and restores the previous locale.
struct LocaleGuard {
  std::string old;
  const char *set;
  explicit LocaleGuard(const char *name) : old(std::setlocale(LC_ALL, nullptr)), set(std::setlocale(LC_ALL, name)) {}
  ~LocaleGuard() { std::setlocale(LC_ALL, old.c_str()); }
};

std::string sql_quote(const std::string &s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += '\'';
    out += c;
  }
  return out + "'";
}

std::string hex(const std::string &s) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

}  // namespace

TEST(Properties, AnEmptyBuilderIsTheEmptyObjectAndClearGoesBackToIt) {
  Props b;
  EXPECT_EQ(b.json(), "{}");
  ASSERT_EQ(et_props_int(b.p, "a", 1), ET_OK);
  ASSERT_EQ(et_props_begin_array(b.p, "b"), ET_OK);
  EXPECT_EQ(b.json(), "<NULL>");
  et_props_clear(b.p);
  EXPECT_EQ(b.json(), "{}");
  ASSERT_EQ(et_props_int(b.p, "c", 2), ET_OK);
  EXPECT_EQ(b.json(), "{\"c\":2}");
  // The text stays put until the next change.
  const char *j1 = et_props_json(b.p);
  EXPECT_EQ(et_props_json(b.p), j1);
}

TEST(Properties, StringsAndKeysAreEscaped) {
  Props b;
  // quote, backslash, slash, the short escapes, other control characters, DEL, 2-, 3- and 4-byte UTF-8
  std::string value = "q\"b\\s/n\nr\rt\tb\bf\f\x01\x1f\x7f \xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80";
  ASSERT_EQ(et_props_string(b.p, "k\"e\\y\n", value.c_str()), ET_OK);
  ASSERT_EQ(et_props_string(b.p, "", ""), ET_OK);  // empty key and value are JSON
  std::string want = "{\"k\\\"e\\\\y\\n\":\"q\\\"b\\\\s/n\\nr\\rt\\tb\\u0008f\\u000c\\u0001\\u001f\x7f "
                     "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\",\"\":\"\"}";
  EXPECT_EQ(b.json(), want);
  et::JsonValue v;
  std::string err;
  ASSERT_TRUE(et::json_parse(b.json(), 32, &v, &err)) << err;
  ASSERT_EQ(v.obj.size(), 2u);
  EXPECT_EQ(v.obj[0].first, "k\"e\\y\n");
  EXPECT_EQ(v.obj[0].second.str, value) << "the string reads back as given";
}

TEST(Properties, InvalidTextIsRefused) {
  Props b;
  ASSERT_EQ(et_props_string(b.p, "ok", "x"), ET_OK);
  const std::string before = b.json();
  for (const char *bad : {"\xff", "a\xC3", "\xC0\x80" /* overlong NUL */, "\xE0\x80\xAF" /* overlong */,
                          "\xED\xA0\x80" /* UTF-16 surrogate */, "\xF4\x90\x80\x80" /* past U+10FFFF */}) {
    EXPECT_EQ(et_props_string(b.p, "k", bad), ET_E_PROPERTIES) << hex(bad);
    EXPECT_EQ(et_props_string(b.p, bad, "v"), ET_E_PROPERTIES) << hex(bad);
    EXPECT_EQ(et_props_int(b.p, bad, 1), ET_E_PROPERTIES) << hex(bad);
    EXPECT_EQ(et_props_begin_object(b.p, bad), ET_E_PROPERTIES) << hex(bad);
  }
  EXPECT_EQ(et_props_string(b.p, "k", nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(b.json(), before);
}

TEST(Properties, ObjectsAndArraysNest) {
  Props b;
  ASSERT_EQ(et_props_begin_object(b.p, "a"), ET_OK);
  ASSERT_EQ(et_props_begin_array(b.p, "b"), ET_OK);
  ASSERT_EQ(et_props_int(b.p, nullptr, 1), ET_OK);
  ASSERT_EQ(et_props_begin_array(b.p, nullptr), ET_OK);
  ASSERT_EQ(et_props_int(b.p, nullptr, 2), ET_OK);
  ASSERT_EQ(et_props_begin_object(b.p, nullptr), ET_OK);
  ASSERT_EQ(et_props_end(b.p), ET_OK);
  ASSERT_EQ(et_props_end(b.p), ET_OK);
  ASSERT_EQ(et_props_begin_object(b.p, nullptr), ET_OK);
  ASSERT_EQ(et_props_null(b.p, "c"), ET_OK);
  ASSERT_EQ(et_props_bool(b.p, "t", 7), ET_OK);
  ASSERT_EQ(et_props_bool(b.p, "f", 0), ET_OK);
  ASSERT_EQ(et_props_end(b.p), ET_OK);
  ASSERT_EQ(et_props_end(b.p), ET_OK);
  EXPECT_EQ(b.json(), "<NULL>") << "object a is still open";
  ASSERT_EQ(et_props_end(b.p), ET_OK);
  ASSERT_EQ(et_props_begin_array(b.p, "d"), ET_OK);
  ASSERT_EQ(et_props_end(b.p), ET_OK);
  EXPECT_EQ(et_props_end(b.p), ET_E_PROPERTIES) << "the outermost object is closed by et_props_json";
  EXPECT_EQ(b.json(), "{\"a\":{\"b\":[1,[2,{}],{\"c\":null,\"t\":true,\"f\":false}]},\"d\":[]}");
  EXPECT_TRUE(valid_properties(b.json()));
}

TEST(Properties, IntegersAreExactAtTheInt64Limits) {
  Props b;
  ASSERT_EQ(et_props_int(b.p, "max", INT64_MAX), ET_OK);
  ASSERT_EQ(et_props_int(b.p, "min", INT64_MIN), ET_OK);
  ASSERT_EQ(et_props_int(b.p, "zero", 0), ET_OK);
  ASSERT_EQ(et_props_int(b.p, "neg", -1), ET_OK);
  ASSERT_EQ(et_props_int(b.p, "big", 9007199254740993LL), ET_OK);  // 2^53 + 1: not a double
  EXPECT_EQ(b.json(),
            "{\"max\":9223372036854775807,\"min\":-9223372036854775808,\"zero\":0,\"neg\":-1,"
            "\"big\":9007199254740993}");
  EXPECT_TRUE(valid_properties(b.json()));
}

TEST(Properties, DoublesAreShortestRoundTripAndNonFiniteIsRefused) {
  Props b;
  ASSERT_EQ(et_props_double(b.p, "a", 0.1), ET_OK);
  ASSERT_EQ(et_props_double(b.p, "b", 1e300), ET_OK);
  ASSERT_EQ(et_props_double(b.p, "c", -0.0), ET_OK);
  ASSERT_EQ(et_props_double(b.p, "d", 1.5), ET_OK);
  ASSERT_EQ(et_props_double(b.p, "e", 5e-324), ET_OK);
  ASSERT_EQ(et_props_double(b.p, "f", std::numeric_limits<double>::max()), ET_OK);
  ASSERT_EQ(et_props_double(b.p, "g", 100.0), ET_OK);
  ASSERT_EQ(et_props_float(b.p, "h", 0.1f), ET_OK);
  const std::string want =
      "{\"a\":0.1,\"b\":1e+300,\"c\":-0,\"d\":1.5,\"e\":5e-324,\"f\":1.7976931348623157e+308,\"g\":100,\"h\":0.1}";
  EXPECT_EQ(b.json(), want);
  EXPECT_TRUE(valid_properties(b.json()));
  for (double bad : {std::nan(""), -std::nan(""), HUGE_VAL, -HUGE_VAL}) {
    EXPECT_EQ(et_props_double(b.p, "x", bad), ET_E_PROPERTIES) << bad;
    EXPECT_EQ(et_props_float(b.p, "x", static_cast<float>(bad)), ET_E_PROPERTIES) << bad;
  }
  EXPECT_EQ(b.json(), want);
  // Every finite double reads back bit for bit, and the text is what the server accepts.
  std::mt19937_64 rng(24);
  int checked = 0;
  while (checked < 20000) {
    uint64_t bits = rng();
    double d;
    std::memcpy(&d, &bits, sizeof d);
    if (!std::isfinite(d)) continue;
    et_props_clear(b.p);
    ASSERT_EQ(et_props_double(b.p, "v", d), ET_OK);
    std::string j = b.json();
    std::string num = j.substr(5, j.size() - 6);
    double back = 0;
    auto r = std::from_chars(num.data(), num.data() + num.size(), back);
    ASSERT_TRUE(r.ec == std::errc() && r.ptr == num.data() + num.size()) << num;
    ASSERT_EQ(std::memcmp(&back, &d, sizeof d), 0) << num;
    ASSERT_TRUE(valid_properties(j)) << j;
    checked++;
  }
}

TEST(Properties, KeysAreRequiredInObjectsAndRefusedInArrays) {
  Props b;
  EXPECT_EQ(et_props_int(b.p, nullptr, 1), ET_E_PROPERTIES);
  EXPECT_EQ(et_props_begin_array(b.p, nullptr), ET_E_PROPERTIES);
  ASSERT_EQ(et_props_begin_array(b.p, "arr"), ET_OK);
  EXPECT_EQ(et_props_int(b.p, "k", 1), ET_E_PROPERTIES);
  EXPECT_EQ(et_props_string(b.p, "k", "v"), ET_E_PROPERTIES);
  EXPECT_EQ(et_props_double(b.p, "k", 1.0), ET_E_PROPERTIES);
  EXPECT_EQ(et_props_bool(b.p, "k", 1), ET_E_PROPERTIES);
  EXPECT_EQ(et_props_null(b.p, "k"), ET_E_PROPERTIES);
  EXPECT_EQ(et_props_begin_object(b.p, "k"), ET_E_PROPERTIES);
  ASSERT_EQ(et_props_begin_object(b.p, nullptr), ET_OK);
  EXPECT_EQ(et_props_int(b.p, nullptr, 1), ET_E_PROPERTIES);
  ASSERT_EQ(et_props_int(b.p, "k", 1), ET_OK);
  ASSERT_EQ(et_props_end(b.p), ET_OK);
  ASSERT_EQ(et_props_end(b.p), ET_OK);
  EXPECT_EQ(b.json(), "{\"arr\":[{\"k\":1}]}");
  // NULL builder
  EXPECT_EQ(et_props_int(nullptr, "k", 1), ET_E_ARGUMENT);
  EXPECT_EQ(et_props_string(nullptr, "k", "v"), ET_E_ARGUMENT);
  EXPECT_EQ(et_props_double(nullptr, "k", 1), ET_E_ARGUMENT);
  EXPECT_EQ(et_props_double(nullptr, "k", std::nan("")), ET_E_ARGUMENT);
  EXPECT_EQ(et_props_float(nullptr, "k", 1), ET_E_ARGUMENT);
  EXPECT_EQ(et_props_bool(nullptr, "k", 1), ET_E_ARGUMENT);
  EXPECT_EQ(et_props_null(nullptr, "k"), ET_E_ARGUMENT);
  EXPECT_EQ(et_props_begin_object(nullptr, "k"), ET_E_ARGUMENT);
  EXPECT_EQ(et_props_begin_array(nullptr, "k"), ET_E_ARGUMENT);
  EXPECT_EQ(et_props_end(nullptr), ET_E_ARGUMENT);
  EXPECT_EQ(et_props_json(nullptr), nullptr);
  et_props_clear(nullptr);
  et_props_free(nullptr);
}

TEST(Properties, DepthIsLimitedTo32LikeTheServer) {
  OfflineClient oc;
  ASSERT_NE(oc.c, nullptr);
  Props b;
  for (int i = 1; i < 32; i++) ASSERT_EQ(et_props_begin_array(b.p, i == 1 ? "a" : nullptr), ET_OK) << i;
  // 32 levels are open (the outermost object is level 1): one more is refused, values still fit.
  EXPECT_EQ(et_props_begin_array(b.p, nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(et_props_begin_object(b.p, nullptr), ET_E_PROPERTIES);
  ASSERT_EQ(et_props_int(b.p, nullptr, 7), ET_OK);
  for (int i = 1; i < 32; i++) ASSERT_EQ(et_props_end(b.p), ET_OK);
  std::string j = b.json();
  EXPECT_EQ(j, "{\"a\":" + std::string(31, '[') + "7" + std::string(31, ']') + "}");
  EXPECT_TRUE(server_accepts(j.c_str()));
  EXPECT_EQ(et_track(oc.c, "deep", j.c_str(), nullptr), ET_OK);
}

TEST(Properties, SizeIsLimitedTo32KiBCountingTheBracketsStillToClose) {
  Props b;
  // {"s":"xxx…"} is n + 8 bytes.
  std::string over(32 * 1024 - 8 + 1, 'x'), exact(32 * 1024 - 8, 'x');
  EXPECT_EQ(et_props_string(b.p, "s", over.c_str()), ET_E_PROPERTIES);
  EXPECT_EQ(b.json(), "{}");
  ASSERT_EQ(et_props_string(b.p, "s", exact.c_str()), ET_OK);
  EXPECT_EQ(std::strlen(et_props_json(b.p)), 32u * 1024);
  EXPECT_TRUE(server_accepts(et_props_json(b.p)));
  EXPECT_EQ(et_props_int(b.p, "n", 1), ET_E_PROPERTIES);
  EXPECT_EQ(et_props_begin_array(b.p, "n"), ET_E_PROPERTIES);

  // With containers open, their closing brackets count: {"a":[["xxx…"]]} is n + 12 bytes.
  et_props_clear(b.p);
  ASSERT_EQ(et_props_begin_array(b.p, "a"), ET_OK);
  ASSERT_EQ(et_props_begin_array(b.p, nullptr), ET_OK);
  std::string over2(32 * 1024 - 12 + 1, 'y'), exact2(32 * 1024 - 12, 'y');
  EXPECT_EQ(et_props_string(b.p, nullptr, over2.c_str()), ET_E_PROPERTIES);
  ASSERT_EQ(et_props_string(b.p, nullptr, exact2.c_str()), ET_OK);
  EXPECT_EQ(et_props_int(b.p, nullptr, 1), ET_E_PROPERTIES);
  ASSERT_EQ(et_props_end(b.p), ET_OK);
  ASSERT_EQ(et_props_end(b.p), ET_OK);
  EXPECT_EQ(std::strlen(et_props_json(b.p)), 32u * 1024);
  EXPECT_TRUE(server_accepts(et_props_json(b.p)));

  // Opening a container near the limit must leave room for its own closing bracket.
  et_props_clear(b.p);
  std::string fill(32 * 1024 - 8 - 7, 'z');  // {"s":"zzz…"} leaves 7 bytes: ,"t":[] needs 7
  ASSERT_EQ(et_props_string(b.p, "s", fill.c_str()), ET_OK);
  EXPECT_EQ(et_props_begin_array(b.p, "tt"), ET_E_PROPERTIES);
  ASSERT_EQ(et_props_begin_array(b.p, "t"), ET_OK);
  EXPECT_EQ(et_props_int(b.p, nullptr, 1), ET_E_PROPERTIES);
  ASSERT_EQ(et_props_end(b.p), ET_OK);
  EXPECT_EQ(std::strlen(et_props_json(b.p)), 32u * 1024);
  EXPECT_TRUE(server_accepts(et_props_json(b.p)));
}

TEST(Properties, ARefusedCallLeavesTheBuilderUnchanged) {
  Props b;
  // In an empty object: a refused first member must not leave a comma behind.
  EXPECT_EQ(et_props_double(b.p, "x", std::nan("")), ET_E_PROPERTIES);
  EXPECT_EQ(et_props_string(b.p, "x", "\xff"), ET_E_PROPERTIES);
  ASSERT_EQ(et_props_int(b.p, "a", 1), ET_OK);
  EXPECT_EQ(b.json(), "{\"a\":1}");
  ASSERT_EQ(et_props_begin_array(b.p, "l"), ET_OK);
  // In an empty array.
  EXPECT_EQ(et_props_int(b.p, "k", 1), ET_E_PROPERTIES);
  EXPECT_EQ(et_props_begin_object(b.p, "k"), ET_E_PROPERTIES);
  ASSERT_EQ(et_props_int(b.p, nullptr, 2), ET_OK);
  EXPECT_EQ(et_props_double(b.p, nullptr, -HUGE_VAL), ET_E_PROPERTIES);
  ASSERT_EQ(et_props_int(b.p, nullptr, 3), ET_OK);
  ASSERT_EQ(et_props_end(b.p), ET_OK);
  const std::string good = b.json();
  EXPECT_EQ(good, "{\"a\":1,\"l\":[2,3]}");
  EXPECT_EQ(et_props_end(b.p), ET_E_PROPERTIES);
  EXPECT_EQ(et_props_null(b.p, nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(et_props_string(b.p, "k", std::string(40000, 'x').c_str()), ET_E_PROPERTIES);
  EXPECT_EQ(b.json(), good);
  ASSERT_EQ(et_props_bool(b.p, "z", 1), ET_OK);
  EXPECT_EQ(b.json(), "{\"a\":1,\"l\":[2,3],\"z\":true}");
}

TEST(Properties, CppWrapper) {
  using eventtracker::Properties;
  static_assert(!std::is_copy_constructible<Properties>::value, "non-copyable");
  static_assert(std::is_nothrow_move_constructible<Properties>::value, "movable");
  Properties p;
  std::string s = "str";
  std::string_view sv = "view";
  p.set("text", "literal")  // a string, not a bool
      .set("s", s)
      .set("sv", sv)
      .set("yes", true)
      .set("i", 42)
      .set("u8", static_cast<uint8_t>(200))
      .set("i64min", std::numeric_limits<int64_t>::min())
      .set("u64", static_cast<uint64_t>(INT64_MAX))
      .set("l", -5L)
      .set("d", 0.1)
      .set("f", 0.1f)
      .set("nul", nullptr)
      .set_null("n2")
      .object("o", [](Properties &o) { o.set("k", "v").array("inner", [](Properties &a) { a.push(1); }); })
      .array("a", [](Properties &a) {
        a.push("x").push(std::string("y")).push(false).push(2).push(2.5).push(nullptr).push_null();
        a.push_object([](Properties &o) { o.set("z", 1); }).push_array([](Properties &) {});
      });
  p.begin_object("b").set("c", 1).end();
  p.begin_array("e").begin_object().end().begin_array().end().end();
  EXPECT_TRUE(p.ok());
  EXPECT_EQ(p.error(), 0);
  ASSERT_NE(p.json(), nullptr);
  const std::string want =
      "{\"text\":\"literal\",\"s\":\"str\",\"sv\":\"view\",\"yes\":true,\"i\":42,\"u8\":200,"
      "\"i64min\":-9223372036854775808,\"u64\":9223372036854775807,\"l\":-5,\"d\":0.1,\"f\":0.1,\"nul\":null,"
      "\"n2\":null,\"o\":{\"k\":\"v\",\"inner\":[1]},\"a\":[\"x\",\"y\",false,2,2.5,null,null,{\"z\":1},[]],"
      "\"b\":{\"c\":1},\"e\":[{},[]]}";
  EXPECT_EQ(p.json(), want);
  EXPECT_TRUE(valid_properties(p.json()));

  // Refusals: nothing changes, ok() turns false and stays so until clear().
  p.set("too_big", static_cast<uint64_t>(INT64_MAX) + 1);
  EXPECT_FALSE(p.ok());
  EXPECT_EQ(p.error(), ET_E_PROPERTIES);
  p.set(std::string_view("nul\0key", 7), 1);
  p.set("v", std::string_view("nul\0value", 9));
  p.set("nan", std::nan(""));
  p.push(1);  // no key in an object
  p.end();    // nothing to close
  p.object("bad\xff", [](Properties &o) { ADD_FAILURE() << "not run when the object was refused"; o.set("q", 1); });
  EXPECT_EQ(p.json(), want);
  EXPECT_TRUE(p.set("later", 1).json() != nullptr);
  EXPECT_FALSE(p.ok()) << "a later good call does not hide an earlier refusal";
  p.clear();
  EXPECT_TRUE(p.ok());
  EXPECT_STREQ(p.json(), "{}");

  // Unbalanced: json() is null; eventtracker::track refuses, as it does after a refusal.
  eventtracker::Client client("http://127.0.0.1:9", h::kToken);
  ASSERT_TRUE(client.set("flush_interval_ms", "60000"));
  p.begin_object("open");
  EXPECT_EQ(p.json(), nullptr);
  EXPECT_EQ(eventtracker::track(client, "x", p), ET_E_PROPERTIES);
  p.end();
  EXPECT_EQ(eventtracker::track(client, "x", p, "user-1"), ET_OK);
  p.set("x", std::nan(""));
  EXPECT_EQ(eventtracker::track(client, "x", p), ET_E_PROPERTIES);
  EXPECT_EQ(client.counters().tracked, 1u);

  // Moves: the source refuses everything afterwards.
  p.clear().set("m", 1);
  Properties q = std::move(p);
  EXPECT_STREQ(q.json(), "{\"m\":1}");
  EXPECT_EQ(p.json(), nullptr);  // NOLINT(bugprone-use-after-move): documented moved-from state
  EXPECT_FALSE(p.ok());
  p.set("k", 1);
  EXPECT_EQ(p.error(), ET_E_ARGUMENT);
  Properties r;
  r = std::move(q);
  EXPECT_STREQ(r.json(), "{\"m\":1}");
  client.close(std::chrono::milliseconds(0));
}

// The decimal separator of the C locale must never reach the JSON: not in what the builder writes, not
// in how et_track validates numbers (std::strtod under de_DE reads "1.5e400" as 1 and let it through).
TEST(Properties, AGermanLocaleChangesNothing) {
#ifdef _WIN32
  LocaleGuard de("German_Germany.1252");  // the C runtime's name for it (Windows has every locale)
  ASSERT_NE(de.set, nullptr) << "setlocale(LC_ALL, \"German_Germany.1252\") failed";
#else
  LocaleGuard de("de_DE.UTF-8");
  ASSERT_NE(de.set, nullptr)
      << "the de_DE.UTF-8 locale is not installed (locale -a): run scripts/setup, which generates it "
         "(localedef -i de_DE -f UTF-8 de_DE.UTF-8); this test must not be skipped";
#endif
  ASSERT_STREQ(std::localeconv()->decimal_point, ",") << "de_DE.UTF-8 did not take effect";
  Props b;
  ASSERT_EQ(et_props_double(b.p, "a", 1.5), ET_OK);
  ASSERT_EQ(et_props_double(b.p, "b", -2.25e-7), ET_OK);
  ASSERT_EQ(et_props_float(b.p, "c", 0.5f), ET_OK);
  EXPECT_EQ(b.json(), "{\"a\":1.5,\"b\":-2.25e-07,\"c\":0.5}");
  OfflineClient oc;
  ASSERT_NE(oc.c, nullptr);
  EXPECT_EQ(et_track(oc.c, "de", b.json().c_str(), nullptr), ET_OK);
  EXPECT_EQ(et_track(oc.c, "de", "{\"a\":1.5}", nullptr), ET_OK);
  EXPECT_EQ(et_track(oc.c, "de", "{\"a\":1.5e400}", nullptr), ET_E_PROPERTIES) << "out of double range";
  EXPECT_EQ(et_track(oc.c, "de", "{\"a\":-2.5e308}", nullptr), ET_E_PROPERTIES) << "out of double range";
  EXPECT_EQ(et_track(oc.c, "de", "{\"a\":1e999}", nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(et_track(oc.c, "de", "{\"a\":1,5}", nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(et_track(oc.c, "de", "{\"a\":1.5e-400}", nullptr), ET_OK) << "underflow to 0 is accepted";
  EXPECT_EQ(counters(oc.c).tracked, 3u);
}

// Number validation rules, independent of the locale: out of double range refused, underflow accepted,
// PostgreSQL numeric's scale limit.
TEST(Properties, NumberValidationKeepsItsRules) {
  for (const char *ok : {"0", "-0", "1.5", "1e308", "1.7976931348623157e308", "-1.7976931348623158e308",
                         "1e-400", "-2e-324", "5e-324", "1e-16383", "0e-16383", "0.0000e-16379",
                         "123456789012345678901234567890"}) {
    std::string j = std::string("{\"a\":") + ok + "}";
    EXPECT_TRUE(valid_properties(j)) << j;
  }
  for (const char *bad : {"1e309", "1.7976931348623159e308", "-1e400", "1e999999999999", "1e-16384", "0.5e-16383",
                          "01", "1.", ".5", "+1", "1e", "0x10", "Infinity", "NaN", "1,5"}) {
    std::string j = std::string("{\"a\":") + bad + "}";
    EXPECT_FALSE(valid_properties(j)) << j;
  }
  et::JsonValue v;
  ASSERT_TRUE(et::json_parse("[0.1,-1e-400,1e-400,2.5e-320]", 4, &v, nullptr));
  ASSERT_EQ(v.arr.size(), 4u);
  EXPECT_EQ(v.arr[0].num, 0.1);
  EXPECT_TRUE(v.arr[1].num == 0 && std::signbit(v.arr[1].num));
  EXPECT_TRUE(v.arr[2].num == 0 && !std::signbit(v.arr[2].num));
  EXPECT_EQ(v.arr[3].num, 2.5e-320);
}

TEST(Properties, BuilderValuesLandInPostgresJsonbUnchanged) {
  h::Pipeline p;
  et_client *c = new_client(p.ingest->url, "");
  ASSERT_NE(c, nullptr);
  const std::string text = "say \"hi\"\\ \n\t\x01 \xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80";
  eventtracker::Properties props;
  props.set("text", text)
      .set("imax", INT64_MAX)
      .set("imin", INT64_MIN)
      .set("tenth", 0.1)
      .set("huge", 1e300)
      .set("negzero", -0.0)
      .set("f", 0.1f)
      .set("yes", true)
      .set("nothing", nullptr)
      .object("weapon", [](eventtracker::Properties &o) { o.set("name", "sword").set("level", 3); })
      .array("party", [](eventtracker::Properties &a) { a.push("anna").push(2).push(1.25).push(false); });
  ASSERT_TRUE(props.ok());
  ASSERT_NE(props.json(), nullptr);
  const std::string sent = props.json();
  ASSERT_EQ(et_track(c, "props", sent.c_str(), nullptr), ET_OK);
  ASSERT_EQ(et_flush(c, 60000), 0);
  et_client_free(c, 1000);
  ASSERT_EQ(p.wait_rows(1), 1);
  std::string stored = p.db->query("SELECT properties::text FROM events");
  std::cout << "sent:   " << sent << "\nstored: " << stored << "\n";
  auto q = [&](const std::string &expr) { return p.db->query("SELECT " + expr + " FROM events"); };
  // The whole document, as PostgreSQL reads the text the builder wrote (leaving out the properties the
  // SDK may add itself, whose keys start with '$').
  const std::string ours = "(SELECT jsonb_object_agg(key, value) FROM jsonb_each(properties) WHERE key NOT LIKE '$%')";
  EXPECT_EQ(q(ours + " = " + sql_quote(sent) + "::jsonb"), "t");
  // And each value as intended (not merely as PostgreSQL read it).
  EXPECT_EQ(q("encode(convert_to(properties->>'text', 'UTF8'), 'hex')"), hex(text));
  EXPECT_EQ(q("properties->>'imax'"), "9223372036854775807");
  EXPECT_EQ(q("properties->>'imin'"), "-9223372036854775808");
  EXPECT_EQ(q("properties->>'tenth'"), "0.1");
  EXPECT_EQ(q("(properties->>'tenth')::float8 = 0.1::float8"), "t");
  EXPECT_EQ(q("properties->>'huge'"), "1" + std::string(300, '0'));
  EXPECT_EQ(q("properties->>'negzero'"), "0") << "numeric has no negative zero";
  EXPECT_EQ(q("properties->>'f'"), "0.1");
  EXPECT_EQ(q("jsonb_typeof(properties->'yes') || ' ' || (properties->>'yes')"), "boolean true");
  EXPECT_EQ(q("jsonb_typeof(properties->'nothing')"), "null");
  EXPECT_EQ(q("properties #>> '{weapon,name}'"), "sword");
  EXPECT_EQ(q("jsonb_typeof(properties #> '{weapon,level}') || ' ' || (properties #>> '{weapon,level}')"),
            "number 3");
  EXPECT_EQ(q("properties->'party'"), "[\"anna\", 2, 1.25, false]");
  EXPECT_EQ(q("(SELECT count(*) FROM jsonb_object_keys(properties) k WHERE k NOT LIKE '$%')"), "11");
}
