// Unit tests of the pure parts: the delivery policy (what an answer means) and time formatting.
#include <ctime>

#include "common.hpp"
#include "../src/response.hpp"
#include "../src/util.hpp"

using et::classify_response;
using et::Verdict;

TEST(Policy, OnlyTheContractsSuccessBodyAccepts) {
  EXPECT_EQ(classify_response(200, R"({"accepted":2,"rejected":[]})", 2, "").verdict, Verdict::Accepted);
  auto d = classify_response(200, R"({"accepted":1,"rejected":[{"index":1,"error":"name: must not be empty"}]})", 2, "");
  ASSERT_EQ(d.verdict, Verdict::Accepted);
  ASSERT_EQ(d.rejected.size(), 1u);
  EXPECT_EQ(d.rejected[0].index, 1);
  EXPECT_EQ(d.rejected[0].error, "name: must not be empty");
  for (const char *bad : {"", "<html>", "{}", "[]", R"({"accepted":2})", R"({"accepted":"2","rejected":[]})",
                          R"({"accepted":3,"rejected":[]})", R"({"accepted":-1,"rejected":[]})",
                          R"({"accepted":1.5,"rejected":[]})", R"({"accepted":1,"rejected":[{"index":2,"error":"x"}]})",
                          R"({"accepted":0,"rejected":[{"index":0,"error":"x"},{"index":0,"error":"x"}]})",
                          R"({"accepted":1,"rejected":[{"index":1e300,"error":"x"}]})",
                          R"({"accepted":1,"rejected":[{"index":-1,"error":"x"}]})",
                          R"({"accepted":1,"rejected":[{"index":1}]})", R"({"accepted":2,"rejected":[]} trailing)"})
    EXPECT_EQ(classify_response(200, bad, 2, "").verdict, Verdict::Retry) << bad;
}

TEST(Policy, A400Or413DropsOnlyWithTheContractsErrorBody) {
  for (const char *code : {"invalid_json", "invalid_gzip", "invalid_batch", "empty_batch", "invalid_events"})
    EXPECT_EQ(classify_response(400, std::string("{\"error\":\"") + code + "\",\"message\":\"m\"}", 3, "").verdict,
              Verdict::RejectedAll)
        << code;
  EXPECT_EQ(classify_response(400, "<html>400</html>", 3, "").verdict, Verdict::Retry);
  EXPECT_EQ(classify_response(400, R"({"error":"bad_request"})", 3, "").verdict, Verdict::Retry);
  EXPECT_EQ(classify_response(400, "", 3, "").verdict, Verdict::Retry);
  EXPECT_EQ(classify_response(413, R"({"error":"payload_too_large","message":"m"})", 3, "").verdict, Verdict::TooLarge);
  EXPECT_EQ(classify_response(413, "<html>413</html>", 3, "").verdict, Verdict::Retry);
  EXPECT_EQ(classify_response(413, R"({"error":"invalid_json"})", 3, "").verdict, Verdict::Retry);
  auto d = classify_response(400, R"({"error":"invalid_events","message":"m","rejected":[{"index":0,"error":"e0"},{"index":9,"error":"out"}]})", 2, "");
  ASSERT_EQ(d.verdict, Verdict::RejectedAll);
  ASSERT_EQ(d.rejected.size(), 1u) << "an index out of the batch is ignored, not used";
  EXPECT_EQ(d.rejected[0].error, "e0");
}

TEST(Policy, EverythingElseIsRetriedOrPaused) {
  for (int s : {0, 204, 301, 302, 307, 408, 422, 429, 500, 502, 503, 504})
    EXPECT_EQ(classify_response(s, "", 1, "refused").verdict, Verdict::Retry) << s;
  for (int s : {401, 403, 404, 405, 415}) EXPECT_EQ(classify_response(s, "", 1, "").verdict, Verdict::Pause) << s;
  EXPECT_EQ(classify_response(0, "", 1, "Could not resolve host").message, "network error: Could not resolve host");
}

namespace {
// What the C library's UTC breakdown says of ms, in the SDK's format.
std::string reference_utc_ms(int64_t ms) {
  time_t secs = static_cast<time_t>(ms / 1000);
  struct tm tm {};
  h::utc_tm(secs, &tm);
  char want[64];
  std::snprintf(want, sizeof want, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
  return want;
}
}  // namespace

TEST(Policy, TimeIsFormattedLikeGmtimeWithoutCallingIt) {
  int64_t samples[] = {0, 946684800000, 951782400000 /* 2000-02-29 */, 1709164800123 /* 2024-02-29 */,
                       4102444799999 /* 2099-12-31T23:59:59.999 */, 253402300799999 /* 9999-12-31 */};
  for (int64_t ms : samples) EXPECT_EQ(et::format_utc_ms(ms), reference_utc_ms(ms)) << ms;
  for (int64_t ms = 1700000000000; ms < 1700000000000 + 400ll * 86400000; ms += 86400000 + 3601001)
    ASSERT_EQ(et::format_utc_ms(ms), reference_utc_ms(ms)) << ms;
}
