// 1. 8 app threads, 10,000 events, exactly once.  2. Redis frozen for 3 s: 503 + Retry-After honoured.
#include <thread>
#include <vector>

#include "common.hpp"

namespace {
const char *kText = "h\xC3\xA9llo \\\"quoted\\\" \xE2\x9C\x93";  // JSON text of: héllo "quoted" ✓
}

TEST(Delivery, EightThreadsTenThousandEventsExactlyOnce) {
  h::Pipeline p;
  double accepted_before = p.ingest->accepted();
  std::string dir = h::temp_dir();
  et_client *c = new_client(p.ingest->url, dir + "/queue.db");
  ASSERT_NE(c, nullptr);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; t++) {
    threads.emplace_back([c, t] {
      for (int j = 0; j < 1250; j++) {
        int i = t * 1250 + j;
        std::string props = "{\"i\":" + std::to_string(i) + ",\"t\":" + std::to_string(t) + ",\"s\":\"" + kText +
                            "\",\"nested\":{\"a\":[1,2.5,true,null]}}";
        track_retrying(c, "threaded", props, "user-42");
      }
    });
  }
  for (auto &th : threads) th.join();
  ASSERT_EQ(et_flush(c, 180000), 0) << "flush timed out";
  et_counters k = counters(c);
  EXPECT_EQ(k.tracked, 10000u);
  EXPECT_EQ(k.sent, 10000u);
  EXPECT_EQ(k.rejected, 0u);
  EXPECT_EQ(k.dropped, 0u);
  EXPECT_EQ(k.queued, 0u);
  et_client_free(c, 1000);

  // A flush that returned 0 means every event was accepted: ingest-api counted each exactly once.
  EXPECT_EQ(p.ingest->accepted() - accepted_before, 10000.0) << "something was sent twice (or lost)";
  ASSERT_EQ(p.wait_rows(10000, 120000), 10000);
  EXPECT_EQ(p.db->query("SELECT count(DISTINCT event_id) FROM events"), "10000");
  EXPECT_EQ(p.db->query("SELECT count(DISTINCT properties->>'i') FROM events"), "10000");
  EXPECT_EQ(p.db->count("source = '" + std::string(h::kSource) + "' AND user_id = 'user-42' AND name = 'threaded'"),
            10000);
  // properties equal as jsonb to what each thread tracked
  std::string expected =
      "jsonb_build_object('i', (properties->>'i')::int, 't', (properties->>'i')::int / 1250, 's', "
      "'h\xC3\xA9llo \"quoted\" \xE2\x9C\x93', 'nested', '{\"a\":[1,2.5,true,null]}'::jsonb)";
  // ... once the SDK's reserved context is taken off, which every event carries.
  EXPECT_EQ(p.db->count("properties - '{$sdk,$sdk_version,$platform,$os,$os_version,$locale}'::text[] = " + expected),
            10000);
  EXPECT_EQ(p.db->count("properties->>'$sdk' = 'eventtracker-cpp' AND properties->>'$platform' = '" +
                        std::string(h::kPlatform) + "'"),
            10000);
  EXPECT_EQ(p.db->query("SELECT count(DISTINCT device_id) || ',' || count(DISTINCT session_id) FROM events"), "1,1");
  // nothing more arrives later
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  EXPECT_EQ(p.db->count(), 10000);
}

TEST(Delivery, RedisFrozenThreeSecondsRetriesAfterRetryAfter) {
  h::Redis redis;
  h::Pipeline p(redis.url(), {"--redis-timeout-ms", "300", "--retry-after-secs", "1"});
  double accepted_before = p.ingest->accepted();
  et_client *c = new_client(p.ingest->url, h::temp_dir() + "/queue.db");
  ASSERT_NE(c, nullptr);
  h::Reports reports;
  reports.attach(c);
  for (int i = 0; i < 500; i++) track_retrying(c, "before_freeze", "{\"i\":" + std::to_string(i) + "}");
  ASSERT_EQ(et_flush(c, 60000), 0);

  redis.freeze();
  int64_t frozen_at = h::now_ms();
  for (int i = 0; i < 1000; i++) track_retrying(c, "during_freeze", "{\"i\":" + std::to_string(i) + "}");
  // The SDK sends within flush_interval (1 s) and meets 503s while Redis is frozen.
  bool saw_503 = h::wait_until(
      [&] {
        for (size_t i : reports.of_kind(ET_REPORT_RETRY))
          if (reports.all[i].status == 503) return true;
        return false;
      },
      20000);
  int64_t left = 3000 - (h::now_ms() - frozen_at);
  if (left > 0) std::this_thread::sleep_for(std::chrono::milliseconds(left));
  redis.thaw();
  ASSERT_TRUE(saw_503) << "no 503 seen while Redis was frozen";
  ASSERT_EQ(et_flush(c, 120000), 0);
  et_counters k = counters(c);
  EXPECT_EQ(k.sent, 1500u);
  EXPECT_GE(k.retries, 1u);
  et_client_free(c, 1000);

  // Every 503 carried Retry-After: 1; the next request came no earlier (the SDK's own monotonic times).
  {
    std::lock_guard<std::mutex> g(reports.mu);
    int checked = 0;
    for (size_t i = 0; i < reports.all.size(); i++) {
      if (reports.all[i].kind != ET_REPORT_RETRY || reports.all[i].status != 503) continue;
      EXPECT_EQ(reports.all[i].retry_after_ms, 1000) << reports.messages[i];
      for (size_t j = i + 1; j < reports.all.size(); j++) {
        if (reports.all[j].kind == ET_REPORT_REQUEST) {
          EXPECT_GE(reports.all[j].time_ms - reports.all[i].time_ms, 1000) << "a retry came before Retry-After";
          checked++;
          break;
        }
      }
    }
    EXPECT_GE(checked, 1);
  }
  EXPECT_EQ(p.ingest->accepted() - accepted_before, 1500.0);
  ASSERT_EQ(p.wait_rows(1500, 120000), 1500);
  EXPECT_EQ(p.db->query("SELECT count(DISTINCT event_id) FROM events"), "1500");
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  EXPECT_EQ(p.db->count(), 1500) << "a retried batch was stored twice";
}

TEST(Delivery, RateLimitedSourceIsRetriedAfterRetryAfterAndStoredOnce) {
  // The real ingest-api limits the token's source to 300 events/s with bursts of 100: batches of 100
  // sent back to back meet 429 rate_limited with Retry-After (whole seconds, at least 1). (The burst
  // must hold a whole batch: --max-events 100.)
  h::Pipeline p("", {"--rate-limits", std::string(h::kSource) + "=300/100", "--max-events", "100"});
  double acc0 = p.ingest->accepted();
  et_client *c = new_client(p.ingest->url, h::temp_dir() + "/queue.db");
  ASSERT_NE(c, nullptr);
  h::Reports reports;
  reports.attach(c);
  for (int i = 0; i < 600; i++) track_retrying(c, "limited", "{\"i\":" + std::to_string(i) + "}");
  ASSERT_EQ(et_flush(c, 120000), 0);
  et_counters k = counters(c);
  EXPECT_EQ(k.sent, 600u);
  EXPECT_EQ(k.rejected + k.dropped, 0u);
  et_client_free(c, 1000);
  int limited = 0;
  {
    std::lock_guard<std::mutex> g(reports.mu);
    for (size_t i = 0; i < reports.all.size(); i++) {
      if (reports.all[i].kind != ET_REPORT_RETRY || reports.all[i].status != 429) continue;
      limited++;
      EXPECT_GE(reports.all[i].retry_after_ms, 1000) << reports.messages[i];
      for (size_t j = i + 1; j < reports.all.size(); j++) {
        if (reports.all[j].kind == ET_REPORT_REQUEST) {
          EXPECT_GE(reports.all[j].time_ms - reports.all[i].time_ms, reports.all[i].retry_after_ms)
              << "a retry came before Retry-After";
          break;
        }
      }
    }
  }
  EXPECT_GE(limited, 1) << "no 429 seen: the limit did not bite";
  EXPECT_EQ(p.ingest->accepted() - acc0, 600.0);
  ASSERT_EQ(p.wait_rows(600), 600);
  EXPECT_EQ(p.db->query("SELECT count(DISTINCT event_id) FROM events"), "600");
}
