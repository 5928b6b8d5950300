// 5. Rejects and the response rules: refused at track; 200 with `rejected`; 400; 413 splits; 401 pauses;
//    404 keeps the events; 429/500 retry the same batch with the same event_ids.
#include <set>
#include <thread>

#include "common.hpp"
#include "../src/util.hpp"

TEST(Rejects, TrackRefusesWhatTheServerWouldRejectAndSendsNothing) {
  h::FakeServer fake([](size_t, const h::FakeRequest &r) { return ok_all(r); });
  et_client *c = new_client(fake.url(), "");
  ASSERT_NE(c, nullptr);
  std::string deep = "{\"a\":";
  for (int i = 0; i < 32; i++) deep += "[";
  for (int i = 0; i < 32; i++) deep += "]";
  deep += "}";  // depth 33
  std::string ok_deep = "{\"a\":";
  for (int i = 0; i < 31; i++) ok_deep += "[";
  for (int i = 0; i < 31; i++) ok_deep += "]";
  ok_deep += "}";  // depth 32: accepted by the server
  std::string big = "{\"s\":\"" + std::string(32 * 1024, 'x') + "\"}";
  std::string name201(201, 'n'), name200(200, 'n');
  std::string uname200;
  for (int i = 0; i < 200; i++) uname200 += "\xC3\xA9";  // 200 characters, 400 bytes
  EXPECT_EQ(et_track(c, "", nullptr, nullptr), ET_E_NAME);
  EXPECT_EQ(et_track(c, nullptr, nullptr, nullptr), ET_E_NAME);
  EXPECT_EQ(et_track(c, name201.c_str(), nullptr, nullptr), ET_E_NAME);
  EXPECT_EQ(et_track(c, "bad\xff utf8", nullptr, nullptr), ET_E_NAME);
  EXPECT_EQ(et_track(c, "ok", "[1,2]", nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(et_track(c, "ok", "{\"a\":1", nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(et_track(c, "ok", "{\"a\":\"x\\u0000y\"}", nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(et_track(c, "ok", "{\"a\\u0000\":1}", nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(et_track(c, "ok", "{\"a\":\"\\ud800\"}", nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(et_track(c, "ok", "{\"a\":1e999}", nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(et_track(c, "ok", "{\"a\":1e-20000}", nullptr), ET_E_PROPERTIES);  // PostgreSQL numeric scale
  EXPECT_EQ(et_track(c, "ok", "{\"a\":0.5e-16383}", nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(et_track(c, "ok", "{\"a\":\"\xc0\x80\"}", nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(et_track(c, "ok", "{\"a\":1} x", nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(et_track(c, "ok", deep.c_str(), nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(et_track(c, "ok", big.c_str(), nullptr), ET_E_PROPERTIES);
  EXPECT_EQ(et_track(c, "ok", nullptr, name201.c_str()), ET_E_USER_ID);
  et_event e{};
  e.name = "ok";
  e.timestamp = "1999-12-31T23:59:59Z";
  EXPECT_EQ(et_track_event(c, &e, nullptr), ET_E_TIMESTAMP);
  e.timestamp = "2026-02-30T00:00:00Z";
  EXPECT_EQ(et_track_event(c, &e, nullptr), ET_E_TIMESTAMP);
  e.timestamp = "2026-01-01 00:00:00Z";
  EXPECT_EQ(et_track_event(c, &e, nullptr), ET_E_TIMESTAMP);
  e.timestamp = nullptr;
  e.event_id = "not-a-uuid";
  EXPECT_EQ(et_track_event(c, &e, nullptr), ET_E_EVENT_ID);
  e.event_id = nullptr;
  e.device_id = name201.c_str();
  EXPECT_EQ(et_track_event(c, &e, nullptr), ET_E_DEVICE_ID);
  e.device_id = nullptr;
  e.session_id = "a\xff";
  EXPECT_EQ(et_track_event(c, &e, nullptr), ET_E_SESSION_ID);
  EXPECT_EQ(et_track_event(c, nullptr, nullptr), ET_E_ARGUMENT);
  EXPECT_EQ(et_track(nullptr, "x", nullptr, nullptr), ET_E_ARGUMENT);
  et_counters k = counters(c);
  EXPECT_EQ(k.refused, 23u);
  EXPECT_EQ(k.tracked, 0u);
  ASSERT_EQ(et_flush(c, 5000), 0);
  EXPECT_EQ(fake.requests().size(), 0u) << "a refused event was sent";
  // The limits themselves are fine.
  EXPECT_EQ(et_track(c, name200.c_str(), ok_deep.c_str(), uname200.c_str()), ET_OK);
  EXPECT_EQ(et_track(c, "ok", "{\"a\":1e-16383,\"b\":0e-16383,\"c\":-12.5e300}", nullptr), ET_OK);
  ASSERT_EQ(et_flush(c, 30000), 0);
  EXPECT_EQ(fake.requests().size(), 1u);
  EXPECT_EQ(fake.requests()[0].event_ids().size(), 2u);
  et_client_free(c, 1000);
}

TEST(Rejects, ServerRejectedEventsAreReportedByIndexAndNeverSentAgain) {
  h::Pipeline p;
  double acc0 = p.ingest->accepted(), rej0 = p.ingest->rejected();
  et_client *c = new_client(p.ingest->url, h::temp_dir() + "/queue.db");
  ASSERT_NE(c, nullptr);
  h::Reports reports;
  reports.attach(c);
  // A skewed app clock: 3 days ahead, past the server's 24 h window. Only the server can judge.
  std::string future = et::format_utc_ms(et::unix_ms() + 3 * 86400 * 1000ll);
  std::set<std::string> skewed;
  std::vector<std::string> order;
  for (int i = 0; i < 10; i++) {
    et_event e{};
    e.name = "skew";
    std::string props = "{\"i\":" + std::to_string(i) + "}";
    e.properties_json = props.c_str();
    bool bad = i == 2 || i == 5 || i == 7;
    if (bad) e.timestamp = future.c_str();
    char id[37];
    ASSERT_EQ(et_track_event(c, &e, id), ET_OK);
    order.push_back(id);
    if (bad) skewed.insert(id);
  }
  ASSERT_EQ(et_flush(c, 60000), 0);
  et_counters k = counters(c);
  EXPECT_EQ(k.sent, 7u);
  EXPECT_EQ(k.rejected, 3u);
  std::set<std::string> reported;
  bool one_batch = false;
  {
    std::lock_guard<std::mutex> g(reports.mu);
    for (size_t i = 0; i < reports.all.size(); i++) {
      if (reports.all[i].kind == ET_REPORT_REQUEST && reports.all[i].count == 10) one_batch = true;
      if (reports.all[i].kind != ET_REPORT_REJECTED) continue;
      reported.insert(reports.ids[i]);
      EXPECT_EQ(reports.all[i].status, 200);
      EXPECT_NE(reports.messages[i].find("ahead of the server's clock"), std::string::npos) << reports.messages[i];
      if (one_batch) {
        EXPECT_EQ(order[static_cast<size_t>(reports.all[i].index)], reports.ids[i]) << "index points at the event";
      }
    }
  }
  EXPECT_EQ(reported, skewed);
  EXPECT_EQ(p.ingest->rejected() - rej0, 3.0);
  EXPECT_EQ(p.ingest->accepted() - acc0, 7.0);
  ASSERT_EQ(p.wait_rows(7), 7);
  // More events later: the rejected ones are never sent again.
  for (int i = 0; i < 5; i++) ASSERT_EQ(et_track(c, "later", "{}", nullptr), ET_OK);
  ASSERT_EQ(et_flush(c, 60000), 0);
  et_client_free(c, 1000);
  EXPECT_EQ(p.ingest->rejected() - rej0, 3.0);
  EXPECT_EQ(p.ingest->accepted() - acc0, 12.0);
  ASSERT_EQ(p.wait_rows(12), 12);
  EXPECT_EQ(p.db->count("name = 'skew'"), 7);
}

TEST(Rejects, PayloadTooLargeSplitsAndDropsOnlyASingleOversizedEvent) {
  // The real ingest-api with small limits: at most 10 events and 4000 bytes a request.
  h::Pipeline p("", {"--max-events", "10", "--max-body-bytes", "4000"});
  double acc0 = p.ingest->accepted();
  et_client *c = new_client(p.ingest->url, "");
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(et_client_set(c, "max_batch_events", "41"), 0);
  ASSERT_EQ(et_client_set(c, "flush_interval_ms", "60000"), 0);
  h::Reports reports;
  reports.attach(c);
  std::string big = "{\"blob\":\"";  // incompressible: stays > 4000 bytes gzipped
  for (int i = 0; i < 12000; i++) big.push_back("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[et::random_u64() % 64]);
  big += "\"}";
  char big_id[37] = {0};
  for (int i = 0; i < 41; i++) {
    et_event e{};
    e.name = "split";
    std::string props = i == 15 ? big : "{\"i\":" + std::to_string(i) + "}";
    e.properties_json = props.c_str();
    ASSERT_EQ(et_track_event(c, &e, i == 15 ? big_id : nullptr), ET_OK);
  }
  ASSERT_EQ(et_flush(c, 60000), 0);
  et_counters k = counters(c);
  EXPECT_EQ(k.sent, 40u);
  EXPECT_EQ(k.dropped, 1u);
  auto too_large = reports.of_kind(ET_REPORT_TOO_LARGE);
  ASSERT_EQ(too_large.size(), 1u);
  EXPECT_EQ(reports.ids[too_large[0]], big_id);
  {
    std::lock_guard<std::mutex> g(reports.mu);
    int max_request = 0;
    for (auto &r : reports.all)
      if (r.kind == ET_REPORT_REQUEST) max_request = std::max(max_request, r.count);
    EXPECT_EQ(max_request, 41) << "the first request carried the whole batch";
  }
  et_client_free(c, 1000);
  EXPECT_EQ(p.ingest->accepted() - acc0, 40.0);
  ASSERT_EQ(p.wait_rows(40), 40);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(p.db->count(), 40);
}

TEST(Rejects, UnauthorizedPausesReportsAndResumesWhenTheTokenChanges) {
  h::Pipeline p;
  double acc0 = p.ingest->accepted();
  et_client *c = new_client(p.ingest->url, h::temp_dir() + "/queue.db", "wrong-token");
  ASSERT_NE(c, nullptr);
  h::Reports reports;
  reports.attach(c);
  for (int i = 0; i < 20; i++) ASSERT_EQ(et_track(c, "auth", "{}", nullptr), ET_OK);
  ASSERT_TRUE(h::wait_until([&] { return !reports.of_kind(ET_REPORT_PAUSED).empty(); }, 30000));
  auto paused = reports.of_kind(ET_REPORT_PAUSED);
  EXPECT_EQ(reports.all[paused[0]].status, 401);
  EXPECT_EQ(reports.all[paused[0]].retry_after_ms, 300000);
  EXPECT_NE(reports.messages[paused[0]].find("unauthorized"), std::string::npos) << reports.messages[paused[0]];
  EXPECT_EQ(et_flush(c, 500), 1) << "a paused client cannot have everything answered";
  et_counters k = counters(c);
  EXPECT_EQ(k.paused, 1);
  EXPECT_EQ(k.queued, 20u);
  EXPECT_EQ(k.requests, 1u) << "paused: no retry before pause_ms";
  EXPECT_EQ(p.db->count(), 0);
  ASSERT_EQ(et_client_set(c, "token", h::kToken), 0);
  ASSERT_EQ(et_flush(c, 60000), 0);
  EXPECT_EQ(counters(c).paused, 0);
  EXPECT_EQ(counters(c).sent, 20u);
  et_client_free(c, 1000);
  EXPECT_EQ(p.ingest->accepted() - acc0, 20.0);
  EXPECT_EQ(p.wait_rows(20), 20);
}

TEST(Rejects, NotFoundKeepsTheEventsUntilTheEndpointIsFixed) {
  h::Pipeline p;
  double acc0 = p.ingest->accepted();
  et_client *c = new_client(p.ingest->url + "/wrong-prefix", h::temp_dir() + "/queue.db");
  ASSERT_NE(c, nullptr);
  h::Reports reports;
  reports.attach(c);
  for (int i = 0; i < 20; i++) ASSERT_EQ(et_track(c, "notfound", "{}", nullptr), ET_OK);
  ASSERT_TRUE(h::wait_until([&] { return !reports.of_kind(ET_REPORT_PAUSED).empty(); }, 30000));
  EXPECT_EQ(reports.all[reports.of_kind(ET_REPORT_PAUSED)[0]].status, 404);
  EXPECT_EQ(counters(c).queued, 20u);
  EXPECT_EQ(counters(c).dropped + counters(c).rejected, 0u);
  ASSERT_EQ(et_client_set(c, "endpoint", p.ingest->url.c_str()), 0);
  ASSERT_EQ(et_flush(c, 60000), 0);
  et_client_free(c, 1000);
  EXPECT_EQ(p.ingest->accepted() - acc0, 20.0);
  EXPECT_EQ(p.wait_rows(20), 20);
}

TEST(Rejects, TooManyRequestsAndServerErrorsRetryTheSameBatch) {
  // 1st: 429 Retry-After 2; 2nd: 500 (backoff); 3rd: 503 with an HTTP-date; 4th: 200.
  h::FakeServer fake([](size_t i, const h::FakeRequest &r) {
    h::FakeResponse res;
    if (i == 0) {
      res.status = 429;
      res.headers = {"Retry-After: 2"};
      res.body = "{\"error\":\"too_many\"}";
    } else if (i == 1) {
      res.status = 500;
      res.body = "oops";
    } else if (i == 2) {
      res.status = 503;
      char date[64];
      time_t t = time(nullptr) + 3;
      struct tm tm {};
      h::utc_tm(t, &tm);
      strftime(date, sizeof date, "Retry-After: %a, %d %b %Y %H:%M:%S GMT", &tm);
      res.headers = {date};
    } else {
      res = ok_all(r);
    }
    return res;
  });
  et_client *c = new_client(fake.url(), "");
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(et_client_set(c, "retry_initial_ms", "100"), 0);
  for (int i = 0; i < 30; i++) ASSERT_EQ(et_track(c, "retry", "{}", nullptr), ET_OK);
  ASSERT_EQ(et_flush(c, 60000), 0);
  auto reqs = fake.requests();
  ASSERT_EQ(reqs.size(), 4u);
  EXPECT_EQ(reqs[0].event_ids().size(), 30u);
  for (auto &r : reqs) {
    EXPECT_EQ(r.event_ids(), reqs[0].event_ids()) << "a retry must resend the same batch";
    EXPECT_EQ(r.path, "/v1/events");
    EXPECT_EQ(r.headers.at("authorization"), std::string("Bearer ") + h::kToken);
  }
  // at_ms: when the fake server had each whole request (same monotonic clock as the SDK)
  EXPECT_GE(reqs[1].at_ms - reqs[0].at_ms, 1999) << "retried before Retry-After: 2";
  EXPECT_GE(reqs[3].at_ms - reqs[2].at_ms, 1000) << "retried before the Retry-After date";
  // sent_at is set anew on every attempt
  auto sent_at = [](const h::FakeRequest &r) { return r.body.substr(r.body.find("\"sent_at\""), 40); };
  EXPECT_NE(sent_at(reqs[0]), sent_at(reqs[1]));
  et_counters k = counters(c);
  EXPECT_EQ(k.retries, 3u);
  EXPECT_EQ(k.sent, 30u);
  et_client_free(c, 1000);
}

TEST(Rejects, BadRequestDropsTheBatchReportingEachEvent) {
  h::FakeServer fake([](size_t i, const h::FakeRequest &r) {
    h::FakeResponse res;
    if (i == 0) {
      res.status = 400;
      res.body =
          "{\"error\":\"invalid_events\",\"message\":\"every event was rejected\",\"rejected\":[{\"index\":0,\"error\":"
          "\"name: nope\"},{\"index\":1,\"error\":\"name: nope\"}]}";
    } else {
      res = ok_all(r);
    }
    return res;
  });
  et_client *c = new_client(fake.url(), "");
  ASSERT_NE(c, nullptr);
  h::Reports reports;
  reports.attach(c);
  ASSERT_EQ(et_track(c, "a", "{}", nullptr), ET_OK);
  ASSERT_EQ(et_track(c, "b", "{}", nullptr), ET_OK);
  ASSERT_EQ(et_flush(c, 30000), 0);
  auto rej = reports.of_kind(ET_REPORT_REJECTED);
  ASSERT_EQ(rej.size(), 2u);
  EXPECT_EQ(reports.all[rej[0]].status, 400);
  EXPECT_EQ(reports.messages[rej[0]], "name: nope");
  ASSERT_EQ(et_track(c, "c", "{}", nullptr), ET_OK);
  ASSERT_EQ(et_flush(c, 30000), 0);
  auto reqs = fake.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[1].event_ids().size(), 1u) << "the rejected batch was sent again";
  EXPECT_EQ(counters(c).rejected, 2u);
  EXPECT_EQ(counters(c).sent, 1u);
  et_client_free(c, 1000);
}

TEST(Rejects, ABatchTheRealServerRejectsWhollyIsDroppedReportedAndNeverResent) {
  // Every event 3 days ahead of the server's clock: the real ingest-api answers 400 invalid_events.
  h::Pipeline p;
  double acc0 = p.ingest->accepted(), rej0 = p.ingest->rejected();
  et_client *c = new_client(p.ingest->url, h::temp_dir() + "/queue.db");
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(et_client_set(c, "flush_interval_ms", "60000"), 0);  // one batch, sent by flush
  h::Reports reports;
  reports.attach(c);
  std::string future = et::format_utc_ms(et::unix_ms() + 3 * 86400 * 1000ll);
  std::set<std::string> ids;
  for (int i = 0; i < 4; i++) {
    et_event e{};
    e.name = "all_skewed";
    e.timestamp = future.c_str();
    char id[37];
    ASSERT_EQ(et_track_event(c, &e, id), ET_OK);
    ids.insert(id);
  }
  ASSERT_EQ(et_flush(c, 60000), 0);
  std::set<std::string> reported;
  for (size_t i : reports.of_kind(ET_REPORT_REJECTED)) {
    EXPECT_EQ(reports.all[i].status, 400);
    reported.insert(reports.ids[i]);
  }
  EXPECT_EQ(reported, ids);
  EXPECT_EQ(counters(c).rejected, 4u);
  EXPECT_EQ(counters(c).queued, 0u);
  ASSERT_EQ(et_track(c, "good", "{}", nullptr), ET_OK);
  ASSERT_EQ(et_flush(c, 60000), 0);
  et_client_free(c, 1000);
  EXPECT_EQ(p.ingest->rejected() - rej0, 4.0) << "the rejected batch was sent again";
  EXPECT_EQ(p.ingest->accepted() - acc0, 1.0);
  ASSERT_EQ(p.wait_rows(1), 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(p.db->count(), 1);
}
