// 8. Only ingest-api's own answers remove an event: whatever else comes back (a captive portal's page, a
//    proxy's 400 or 413, a redirect to a login page, a truncated or inconsistent body) is a failed attempt:
//    reported, retried with the same events, nothing counted sent, rejected or dropped.
#include <set>

#include "common.hpp"

namespace {
struct Shape {
  const char *name;
  int status;
  const char *body;
  std::vector<std::string> headers;
};
void PrintTo(const Shape &s, std::ostream *os) { *os << s.name; }

const Shape kShapes[] = {
    {"portal_200_html", 200, "<html><body>Welcome to Airport WiFi. Please log in.</body></html>",
     {"Content-Type: text/html"}},
    {"empty_200", 200, "", {}},
    {"truncated_200", 200, "{\"accepted\":8,\"rejec", {"Content-Type: application/json"}},
    {"other_json_200", 200, "{\"status\":\"ok\"}", {"Content-Type: application/json"}},
    {"count_mismatch_200", 200, "{\"accepted\":3,\"rejected\":[]}", {"Content-Type: application/json"}},
    {"index_out_of_range_200", 200, "{\"accepted\":7,\"rejected\":[{\"index\":1e300,\"error\":\"x\"}]}",
     {"Content-Type: application/json"}},
    {"proxy_400_html", 400, "<html><h1>400 Bad Request</h1>nginx</html>", {"Content-Type: text/html"}},
    {"proxy_400_other_json", 400, "{\"error\":\"bad_request\",\"message\":\"by the proxy\"}",
     {"Content-Type: application/json"}},
    {"proxy_413_html", 413, "<html><h1>413 Request Entity Too Large</h1></html>", {"Content-Type: text/html"}},
    {"redirect_302_login", 302, "<a href=\"/login\">login</a>", {"Location: http://127.0.0.1:9/login"}},
    {"no_content_204", 204, "", {}},
};
}  // namespace

class Answers : public ::testing::TestWithParam<Shape> {};

TEST_P(Answers, ANonContractAnswerIsAFailedAttemptAndLosesNothing) {
  const Shape &shape = GetParam();
  h::FakeServer fake([&](size_t i, const h::FakeRequest &r) {
    if (i > 0) return ok_all(r);
    h::FakeResponse res;
    res.status = shape.status;
    res.body = shape.body;
    res.headers = shape.headers;
    return res;
  });
  et_client *c = new_client(fake.url(), "");
  ASSERT_NE(c, nullptr);
  h::Reports reports;
  reports.attach(c);
  ASSERT_EQ(et_client_set(c, "retry_initial_ms", "20"), 0);
  for (int i = 0; i < 8; i++) ASSERT_EQ(et_track(c, "shape", ("{\"i\":" + std::to_string(i) + "}").c_str(), nullptr), ET_OK);
  ASSERT_EQ(et_flush(c, 30000), 0);
  et_counters k = counters(c);
  EXPECT_EQ(k.sent, 8u) << shape.name;
  EXPECT_EQ(k.rejected, 0u) << shape.name << ": events were counted rejected on a non-contract answer";
  EXPECT_EQ(k.dropped, 0u) << shape.name << ": events were dropped on a non-contract answer";
  EXPECT_EQ(k.retries, 1u) << shape.name;
  auto reqs = fake.requests();
  ASSERT_EQ(reqs.size(), 2u) << shape.name << ": the batch was split or sent more than once after the answer";
  EXPECT_EQ(reqs[0].event_ids(), reqs[1].event_ids()) << shape.name << ": the retry did not carry the same events";
  auto retries = reports.of_kind(ET_REPORT_RETRY);
  ASSERT_EQ(retries.size(), 1u) << shape.name;
  EXPECT_EQ(reports.all[retries[0]].status, shape.status);
  EXPECT_EQ(reports.all[retries[0]].count, 8);
  EXPECT_TRUE(reports.of_kind(ET_REPORT_REJECTED).empty()) << shape.name;
  et_client_free(c, 1000);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Answers, ::testing::ValuesIn(kShapes),
                         [](const ::testing::TestParamInfo<Shape> &i) { return std::string(i.param.name); });

// A proxy that answers 413 to everything: the batch is neither split into single events nor dropped.
TEST(AnswersProxy, A413FromAProxyToEverythingKeepsEveryEvent) {
  h::FakeServer fake([](size_t, const h::FakeRequest &) {
    h::FakeResponse res;
    res.status = 413;
    res.body = "<html>413 Request Entity Too Large</html>";
    return res;
  });
  et_client *c = new_client(fake.url(), "");
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(et_client_set(c, "retry_initial_ms", "10"), 0);
  ASSERT_EQ(et_client_set(c, "retry_max_ms", "40"), 0);
  for (int i = 0; i < 8; i++) ASSERT_EQ(et_track(c, "proxy413", "{}", nullptr), ET_OK);
  ASSERT_TRUE(h::wait_until([&] { return fake.requests().size() >= 6; }, 30000));
  et_counters k = counters(c);
  EXPECT_EQ(k.dropped, 0u);
  EXPECT_EQ(k.rejected, 0u);
  EXPECT_EQ(k.sent, 0u);
  EXPECT_EQ(k.queued, 8u);
  for (const h::FakeRequest &r : fake.requests()) EXPECT_EQ(r.event_ids().size(), 8u) << "the batch was split";
  et_client_free(c, 500);
}

// The contract's own answers still act: a 413 payload_too_large splits and drops a lone event, a 400
// invalid_events rejects every event with the server's messages.
TEST(AnswersProxy, TheContractsOwn413And400StillAct) {
  h::FakeServer fake([](size_t, const h::FakeRequest &r) {
    h::FakeResponse res;
    if (r.event_ids().size() > 1) {
      res.status = 413;
      res.body = "{\"error\":\"payload_too_large\",\"message\":\"over --max-body-bytes\"}";
    } else {
      res.status = 400;
      res.body = "{\"error\":\"invalid_events\",\"message\":\"every event was rejected\",\"rejected\":"
                 "[{\"index\":0,\"error\":\"name: reserved\"}]}";
    }
    return res;
  });
  et_client *c = new_client(fake.url(), "");
  ASSERT_NE(c, nullptr);
  h::Reports reports;
  reports.attach(c);
  for (int i = 0; i < 4; i++) ASSERT_EQ(et_track(c, "split", "{}", nullptr), ET_OK);
  ASSERT_EQ(et_flush(c, 30000), 0);
  et_counters k = counters(c);
  EXPECT_EQ(k.rejected, 4u);
  EXPECT_EQ(k.queued, 0u);
  auto rej = reports.of_kind(ET_REPORT_REJECTED);
  ASSERT_EQ(rej.size(), 4u);
  for (size_t i : rej) EXPECT_EQ(reports.messages[i], "name: reserved");
  et_client_free(c, 500);
}
