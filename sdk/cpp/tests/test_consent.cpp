// 9. The player's choice: consent pending / granted / revoked, kept in the queue file across restarts;
//    purge; a queue file that gives its space back once drained; callbacks that call back into the client.
#include <sqlite3.h>
#include <sys/stat.h>

#include <thread>

#include "common.hpp"
#include "eventtracker/client.hpp"

namespace {
et_client *new_client_with(const std::string &endpoint, const std::string &queue, std::vector<const char *> options) {
  options.push_back(nullptr);
  char err[512] = {0};
  et_client *c = et_client_new_with_options(endpoint.c_str(), h::kToken, queue.empty() ? nullptr : queue.c_str(),
                                            options.data(), err, sizeof err);
  EXPECT_NE(c, nullptr) << err;
  return c;
}

}  // namespace

TEST(Consent, PendingKeepsEventsOnTheDeviceAcrossRestartsUntilGranted) {
  h::Pipeline p;
  std::string queue = h::temp_dir() + "/queue.db";
  et_client *c = new_client_with(p.ingest->url, queue, {"require_consent", "1"});
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(et_client_consent(c), ET_CONSENT_PENDING);
  for (int i = 0; i < 50; i++) ASSERT_EQ(et_track(c, "before_consent", "{}", nullptr), ET_OK);
  EXPECT_EQ(et_flush(c, 1500), 1) << "a pending client must not send";
  EXPECT_EQ(counters(c).requests, 0u);
  et_client_free(c, 500);
  // The next run (without require_consent) still waits: the choice lives in the file.
  c = new_client(p.ingest->url, queue);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(et_client_consent(c), ET_CONSENT_PENDING);
  EXPECT_EQ(counters(c).queued, 50u);
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_EQ(counters(c).requests, 0u);
  EXPECT_EQ(p.ingest->accepted(), 0.0);
  ASSERT_EQ(et_client_set_consent(c, ET_CONSENT_GRANTED), 0);
  ASSERT_EQ(et_flush(c, 60000), 0);
  EXPECT_EQ(counters(c).sent, 50u);
  et_client_free(c, 1000);
  ASSERT_EQ(p.wait_rows(50), 50);
  EXPECT_EQ(p.db->query("SELECT count(DISTINCT event_id) FROM events"), "50");
  c = new_client_with(p.ingest->url, queue, {"require_consent", "1"});
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(et_client_consent(c), ET_CONSENT_GRANTED) << "the recorded choice wins over require_consent";
  et_client_free(c, 500);
}

TEST(Consent, RevokedDeletesWhatWasQueuedGivesTheSpaceBackAndKeepsNothing) {
  h::FakeServer fake([](size_t, const h::FakeRequest &r) { return ok_all(r); });
  std::string queue = h::temp_dir() + "/queue.db";
  et_client *c = new_client(unreachable(), queue);
  ASSERT_NE(c, nullptr);
  h::Reports reports;
  reports.attach(c);
  std::string pad(500, 'x');
  for (int i = 0; i < 5000; i++) track_retrying(c, "offline", "{\"pad\":\"" + pad + "\"}");
  ASSERT_TRUE(h::wait_until([&] { return counters(c).buffered == 0; }, 60000));
  int64_t full = queue_bytes_on_disk(queue);
  EXPECT_GE(full, 2 * 1024 * 1024);
  ASSERT_EQ(et_client_set_consent(c, ET_CONSENT_REVOKED), 0);
  EXPECT_EQ(counters(c).queued, 0u);
  int64_t after = queue_bytes_on_disk(queue);
  EXPECT_LE(after, 256 * 1024) << "revoking kept " << after << " bytes on disk (was " << full << ")";
  auto purged = reports.of_kind(ET_REPORT_PURGED);
  ASSERT_EQ(purged.size(), 1u);
  EXPECT_EQ(reports.all[purged[0]].count, 5000);
  EXPECT_EQ(et_track(c, "after_revoke", "{}", nullptr), ET_E_NO_CONSENT);
  EXPECT_EQ(counters(c).queued, 0u);
  EXPECT_EQ(et_flush(c, 1000), 0) << "nothing is owed once everything was purged";
  et_client_free(c, 500);
  // Restart: still revoked, still empty; granting again starts afresh and sends.
  c = new_client(fake.url(), queue);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(et_client_consent(c), ET_CONSENT_REVOKED);
  EXPECT_EQ(counters(c).queued, 0u);
  EXPECT_EQ(et_track(c, "still_revoked", "{}", nullptr), ET_E_NO_CONSENT);
  ASSERT_EQ(et_client_set_consent(c, ET_CONSENT_GRANTED), 0);
  ASSERT_EQ(et_track(c, "consented_again", "{}", nullptr), ET_OK);
  ASSERT_EQ(et_flush(c, 30000), 0);
  et_client_free(c, 500);
  auto reqs = fake.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].event_ids().size(), 1u) << "only the event tracked after consent was given again";
  EXPECT_EQ(reqs[0].body.find("offline"), std::string::npos);
}

TEST(Consent, PurgeDeletesEverythingQueuedAndKeepsTheChoice) {
  h::FakeServer fake([](size_t, const h::FakeRequest &r) { return ok_all(r); });
  std::string queue = h::temp_dir() + "/queue.db";
  eventtracker::Client client(unreachable(), h::kToken, queue);
  for (int i = 0; i < 300; i++) ASSERT_EQ(client.track("to_purge"), ET_OK);
  EXPECT_TRUE(client.purge());
  EXPECT_EQ(client.counters().queued, 0u);
  EXPECT_EQ(client.consent(), ET_CONSENT_GRANTED);
  ASSERT_TRUE(client.set("endpoint", fake.url()));
  ASSERT_EQ(client.track("kept"), ET_OK);
  ASSERT_TRUE(client.flush(std::chrono::seconds(30)));
  EXPECT_EQ(client.counters().sent, 1u);
  auto reqs = fake.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].event_ids().size(), 1u);
  EXPECT_FALSE(client.set_consent(7));
}

TEST(QueueFile, ItGivesItsSpaceBackOnceDrainedOldFilesToo) {
  h::FakeServer fake([](size_t, const h::FakeRequest &r) { return ok_all(r); });
  std::string dir = h::temp_dir();
  std::string queue = dir + "/queue.db";
  {  // A queue file as the SDK 1.0 made it: no incremental vacuum.
    sqlite3 *db = nullptr;
    ASSERT_EQ(sqlite3_open(queue.c_str(), &db), SQLITE_OK);
    sqlite3_exec(db,
                 "PRAGMA journal_mode=WAL; CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                 "CREATE TABLE events(id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, body TEXT NOT NULL);",
                 nullptr, nullptr, nullptr);
    sqlite3_close(db);
  }
  for (int round = 0; round < 2; round++) {
    et_client *c = new_client(unreachable(), queue);
    ASSERT_NE(c, nullptr);
    std::string pad(1000, 'p');
    for (int i = 0; i < 5000; i++) track_retrying(c, "offline", "{\"pad\":\"" + pad + "\"}");
    ASSERT_TRUE(h::wait_until([&] { return counters(c).buffered == 0; }, 60000));
    int64_t full = queue_bytes_on_disk(queue);
    EXPECT_GE(full, 4 * 1024 * 1024) << "round " << round;
    ASSERT_EQ(et_client_set(c, "endpoint", fake.url().c_str()), 0);
    ASSERT_EQ(et_flush(c, 60000), 0);
    EXPECT_EQ(counters(c).sent, 5000u);
    int64_t drained = queue_bytes_on_disk(queue);
    EXPECT_LE(drained, 256 * 1024) << "round " << round << ": the drained queue still holds " << drained
                                   << " bytes on disk (full: " << full << ")";
    et_client_free(c, 500);
    fake.requests();
  }
}

TEST(Callbacks, ACallbackMayCallBackIntoItsClient) {
  h::FakeServer fake([](size_t, const h::FakeRequest &r) { return ok_all(r); });
  et_client *c = new_client(fake.url(), "");
  ASSERT_NE(c, nullptr);
  struct State {
    et_client *c;
    std::atomic<int> flushes{0}, sets{0}, frees{0};
    std::atomic<bool> done{false};
  } st{c};
  auto cb = [](void *user, const et_report *r) {
    auto *s = static_cast<State *>(user);
    if (r->kind != ET_REPORT_SENT) return;
    et_counters k{};
    et_client_counters(s->c, &k);
    if (et_flush(s->c, 10000) == 1) s->flushes++;  // returns at once instead of waiting for itself
    et_client_set(s->c, "flush_interval_ms", "50");
    et_track(s->c, "from_callback", "{}", nullptr);
    if (s->sets++ == 0) {
      et_client_set_report_callback(s->c, r->kind == ET_REPORT_SENT ? +[](void *u, const et_report *r2) {
        auto *s2 = static_cast<State *>(u);
        if (r2->kind != ET_REPORT_SENT) return;
        s2->frees++;
        et_client_free(s2->c, 10000);  // the client frees itself once this callback returns
        s2->done = true;
      } : nullptr, s);
    }
  };
  et_client_set_report_callback(c, cb, &st);
  ASSERT_EQ(et_track(c, "first", "{}", nullptr), ET_OK);
  ASSERT_TRUE(h::wait_until([&] { return st.done.load(); }, 20000))
      << "a callback that calls back into its client hung (flushes " << st.flushes << ", sets " << st.sets << ")";
  EXPECT_EQ(st.flushes.load(), 1);
  EXPECT_EQ(st.frees.load(), 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto reqs = fake.requests();
  ASSERT_GE(reqs.size(), 2u);  // the event tracked from the callback was sent before the client closed
}
