// The C++ wrapper: RAII, every field of an event, reports through std::function, bounded destructor.
#include <thread>

#include "common.hpp"
#include "eventtracker/client.hpp"

TEST(CppApi, EveryFieldReachesTheWireAndTheDestructorIsBounded) {
  h::FakeServer fake([](size_t, const h::FakeRequest &r) {
    h::FakeResponse res;
    res.body = "{\"accepted\":" + std::to_string(r.event_ids().size()) + ",\"rejected\":[]}";
    return res;
  });
  std::atomic<int> sent_reports{0};
  {
    eventtracker::Client client(fake.url(), h::kToken, {}, {{"app_version", "1.4.2"}, {"locale", "de-DE"}});
    client.on_report([&](const eventtracker::Report &r) {
      if (r.kind == ET_REPORT_SENT) sent_reports++;
    });
    EXPECT_TRUE(client.set("flush_interval_ms", "100"));
    EXPECT_FALSE(client.set("no_such_option", "1"));
    EXPECT_FALSE(client.set("max_batch_events", "0"));
    eventtracker::Event e{"purchase"};
    e.properties_json = R"({"sku":"gem","n":3})";
    e.user_id = "u-1";
    e.device_id = "dev-1";
    e.session_id = "sess-1";
    e.timestamp = "2026-11-27T10:00:00.123+02:00";
    e.event_id = "0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f";
    std::string id;
    ASSERT_EQ(client.track(e, &id), ET_OK);
    EXPECT_EQ(id, "0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f");
    ASSERT_EQ(client.track("plain"), ET_OK);
    EXPECT_EQ(client.track(""), ET_E_NAME);
    ASSERT_TRUE(client.flush(std::chrono::seconds(30)));
    EXPECT_EQ(client.counters().sent, 2u);
    EXPECT_TRUE(h::wait_until([&] { return sent_reports.load() >= 1; }, 5000));
    auto reqs = fake.requests();
    ASSERT_FALSE(reqs.empty());
    const std::string &b = reqs[0].body;
    for (const char *want : {"\"event_id\":\"0190c5d5-9a6e-7c1f-8e4a-6f1b2c3d4e5f\"", "\"name\":\"purchase\"",
                             "\"timestamp\":\"2026-11-27T10:00:00.123+02:00\"", "\"user_id\":\"u-1\"",
                             "\"device_id\":\"dev-1\"", "\"session_id\":\"sess-1\"",
                             "\"$sdk\":\"eventtracker-cpp\"", "\"$app_version\":\"1.4.2\"", "\"$locale\":\"de-DE\"",
                             "\"$platform\":\"", "\"$os\":\"", "\"sku\":\"gem\",\"n\":3}"})
      EXPECT_NE(b.find(want), std::string::npos) << want << " not in " << b;
    eventtracker::Client moved = std::move(client);
    EXPECT_EQ(client.track("after_move"), ET_E_CLOSED);
    EXPECT_EQ(moved.track("moved"), ET_OK);
  }  // ~Client: closes (default 2 s bound)
  EXPECT_THROW(eventtracker::Client("ftp://x", h::kToken), eventtracker::Error);
  EXPECT_THROW(eventtracker::Client("http://127.0.0.1:1", ""), eventtracker::Error);
  EXPECT_THROW(eventtracker::Client("http://127.0.0.1:1", h::kToken, {}, {{"no_such_option", "1"}}), eventtracker::Error);
}

TEST(CppApi, FlushWithTheLargestTimeoutWaits) {
  // milliseconds::max() used to become a negative int: flush returned false at once.
  h::FakeServer fake([](size_t, const h::FakeRequest &r) {
    h::FakeResponse res;
    res.body = "{\"accepted\":" + std::to_string(r.event_ids().size()) + ",\"rejected\":[]}";
    return res;
  });
  eventtracker::Client client(fake.url(), h::kToken);
  ASSERT_EQ(client.track("one"), ET_OK);
  EXPECT_TRUE(client.flush(std::chrono::milliseconds::max()));
  EXPECT_EQ(client.counters().sent, 1u);
  client.close(std::chrono::milliseconds::max());
}
