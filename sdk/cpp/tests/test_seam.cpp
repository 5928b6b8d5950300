// 10. The transport seam: an app's own transport (here plain sockets, written in the tests) carries every
//     rule: gzip, Retry-After, the 413 split, the pause on 401, and delivery exactly once to the real
//     pipeline. (scripts/test-sdk also runs the whole suite with ET_TEST_TRANSPORT=sockets.)
#include <atomic>

#include "common.hpp"

namespace {
struct Counting {
  std::atomic<int> calls{0};
  std::atomic<int> gzipped{0};
};

void counting_transport(void *user, const et_http_request *rq, et_http_response *resp) {
  auto *c = static_cast<Counting *>(user);
  c->calls++;
  for (size_t i = 0; i < rq->header_count; i++)
    if (std::string(rq->header_names[i]) == "Content-Encoding" && std::string(rq->header_values[i]) == "gzip")
      c->gzipped++;
  h::socket_transport(nullptr, rq, resp);
}

et_client *seam_client(const std::string &url, Counting *counting) {
  char err[512] = {0};
  et_client *c = et_client_new(url.c_str(), h::kToken, nullptr, err, sizeof err);
  EXPECT_NE(c, nullptr) << err;
  EXPECT_EQ(et_client_set_transport(c, &counting_transport, counting), 0);
  return c;
}
}  // namespace

TEST(Seam, AnAppsTransportDeliversToThePipelineExactlyOnceGzipped) {
  h::Pipeline p;
  Counting counting;
  et_client *c = seam_client(p.ingest->url, &counting);
  ASSERT_NE(c, nullptr);
  for (int i = 0; i < 500; i++)
    ASSERT_EQ(et_track(c, "seam", ("{\"i\":" + std::to_string(i) + ",\"pad\":\"xxxxxxxxxxxxxxxxxxxx\"}").c_str(), nullptr), ET_OK);
  ASSERT_EQ(et_flush(c, 60000), 0);
  et_counters k = counters(c);
  EXPECT_EQ(k.sent, 500u);
  EXPECT_EQ(static_cast<uint64_t>(counting.calls.load()), k.requests) << "a request bypassed the app's transport";
  EXPECT_GE(counting.gzipped.load(), 1);
  et_client_free(c, 1000);
  ASSERT_EQ(p.wait_rows(500), 500);
  EXPECT_EQ(p.db->query("SELECT count(DISTINCT event_id) FROM events"), "500");
}

TEST(Seam, RetryAfterThe413SplitAndThePauseWorkOverIt) {
  h::FakeServer fake([](size_t i, const h::FakeRequest &r) {
    h::FakeResponse res;
    size_t n = r.event_ids().size();
    if (i == 0) {
      res.status = 503;
      res.body = "{\"error\":\"queue_full\",\"message\":\"m\"}";
      res.headers = {"Retry-After: 1"};
    } else if (i == 1) {
      res.status = 401;
      res.body = "{\"error\":\"unauthorized\",\"message\":\"m\"}";
    } else if (n > 2) {
      res.status = 413;
      res.body = "{\"error\":\"payload_too_large\",\"message\":\"m\"}";
    } else {
      res.body = "{\"accepted\":" + std::to_string(n) + ",\"rejected\":[]}";
    }
    return res;
  });
  Counting counting;
  et_client *c = seam_client(fake.url(), &counting);
  ASSERT_NE(c, nullptr);
  h::Reports reports;
  reports.attach(c);
  for (int i = 0; i < 8; i++) ASSERT_EQ(et_track(c, "rules", "{}", nullptr), ET_OK);
  ASSERT_TRUE(h::wait_until([&] { return counters(c).paused == 1; }, 30000));
  auto retry = reports.of_kind(ET_REPORT_RETRY);
  ASSERT_EQ(retry.size(), 1u);
  EXPECT_EQ(reports.all[retry[0]].retry_after_ms, 1000) << "Retry-After did not come through the seam";
  auto reqs = fake.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_GE(reqs[1].at_ms - reqs[0].at_ms, 900);
  ASSERT_EQ(et_client_set(c, "token", h::kToken), 0);  // resumes
  ASSERT_EQ(et_flush(c, 30000), 0);
  EXPECT_EQ(counters(c).sent, 8u);
  reqs = fake.requests();
  size_t singles = 0;
  for (size_t i = 2; i < reqs.size(); i++) singles += reqs[i].event_ids().size() <= 2 ? 1 : 0;
  EXPECT_GE(singles, 4u) << "the 413 split did not happen over the seam";
  EXPECT_EQ(static_cast<size_t>(counting.calls.load()), reqs.size());
  et_client_free(c, 500);
}

TEST(Seam, CloseCutsAnAppsTransportThatWaits) {
  h::FakeServer hang([](size_t, const h::FakeRequest &) {
    h::FakeResponse r;
    r.hang = true;
    return r;
  });
  Counting counting;
  et_client *c = seam_client(hang.url(), &counting);
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(et_track(c, "hang", "{}", nullptr), ET_OK);
  ASSERT_TRUE(h::wait_until([&] { return hang.requests().size() >= 1; }, 30000));
  int64_t t0 = h::now_ms();
  et_client_free(c, 300);
  int64_t took = h::now_ms() - t0;
  EXPECT_LE(took, 1500) << "et_client_free(c, 300) took " << took << " ms with the app's transport waiting";
}
