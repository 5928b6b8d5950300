// SDK benchmark (a measurement, not a test).
//   sdk_bench track ENDPOINT TOKEN QUEUE_DIR THREADS EVENTS_PER_THREAD [option=value]...
//       et_track cost per call (p50, p99, max in microseconds) with the SQLite queue on.
//   sdk_bench deliver ENDPOINT TOKEN QUEUE_DIR EVENTS [option=value]...
//       events/s one client delivers: from the first et_track until et_flush returned 0.
// Prints one JSON object. Events look like loadgen's (name, device/session/user ids, ~150 B properties).
#include <eventtracker/eventtracker.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace {
using Clock = std::chrono::steady_clock;

std::string props(uint64_t i) {
  static const char *diff[] = {"easy", "normal", "hard"};
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "{\"level\":%llu,\"score\":%llu,\"duration_ms\":%llu,\"difficulty\":\"%s\",\"platform\":\"windows\","
                "\"build\":\"1.4.2+8841\",\"fps_avg\":%llu.%llu}",
                (unsigned long long)(i % 90 + 1), (unsigned long long)(i * 7919 % 100000),
                (unsigned long long)(i * 104729 % 600000), diff[i % 3], (unsigned long long)(i % 120 + 30),
                (unsigned long long)(i % 10));
  return buf;
}
const char *kNames[] = {"level_start", "level_complete", "item_purchased", "session_start", "settings_changed",
                        "frame_stats", "match_end"};

et_client *open_client(const char *endpoint, const char *token, const std::string &dir) {
  char err[512];
  et_client *c = et_client_new(endpoint, token, (dir + "/bench-queue.db").c_str(), err, sizeof err);
  if (!c) {
    std::fprintf(stderr, "sdk_bench: %s\n", err);
    std::exit(1);
  }
  et_client_set(c, "max_buffer_events", "1000000");
  et_client_set(c, "max_queue_events", "100000000");  // measure sending, not the cap
  et_client_set(c, "max_queue_bytes", "10000000000");
  return c;
}

int track_one(et_client *c, uint64_t i, const std::string &p) {
  return et_track(c, kNames[i % 7], p.c_str(), "user-000042");
}
}  // namespace

int main(int argc, char **argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: sdk_bench track ENDPOINT TOKEN QUEUE_DIR THREADS N | deliver ENDPOINT TOKEN QUEUE_DIR N\n");
    return 2;
  }
  std::string mode = argv[1];
  et_client *c = open_client(argv[2], argv[3], argv[4]);
  // Extra arguments option=value are passed to et_client_set (e.g. gzip=0).
  for (int i = mode == "track" ? 7 : 6; i < argc; i++) {
    std::string kv = argv[i];
    size_t eq = kv.find('=');
    if (eq == std::string::npos || et_client_set(c, kv.substr(0, eq).c_str(), kv.substr(eq + 1).c_str()) != 0) {
      std::fprintf(stderr, "sdk_bench: bad option %s\n", argv[i]);
      return 2;
    }
  }
  if (mode == "track") {
    int threads = std::atoi(argv[5]);
    int n = std::atoi(argv[6]);
    std::vector<std::vector<double>> lat(static_cast<size_t>(threads));
    std::atomic<int> refused{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; t++) {
      ts.emplace_back([&, t] {
        auto &v = lat[static_cast<size_t>(t)];
        v.reserve(static_cast<size_t>(n));
        for (int i = 0; i < n; i++) {
          uint64_t k = static_cast<uint64_t>(t) * 1000000u + static_cast<uint64_t>(i);
          std::string p = props(k);  // built outside the timed call, as an app would
          auto a = Clock::now();
          int rc = track_one(c, k, p);
          auto b = Clock::now();
          if (rc != ET_OK) refused++;
          v.push_back(std::chrono::duration<double, std::micro>(b - a).count());
        }
      });
    }
    for (auto &t : ts) t.join();
    std::vector<double> all;
    for (auto &v : lat) all.insert(all.end(), v.begin(), v.end());
    std::sort(all.begin(), all.end());
    auto pct = [&](double p) { return all[std::min(all.size() - 1, static_cast<size_t>(p * static_cast<double>(all.size())))]; };
    auto f0 = Clock::now();
    int frc = et_flush(c, 300000);
    double flush_s = std::chrono::duration<double>(Clock::now() - f0).count();
    et_counters k{};
    et_client_counters(c, &k);
    std::printf("{\"mode\":\"track\",\"threads\":%d,\"calls\":%zu,\"p50_us\":%.2f,\"p99_us\":%.2f,\"max_us\":%.1f,"
                "\"refused\":%d,\"flushed\":%s,\"flush_seconds\":%.2f,\"sent\":%llu}\n",
                threads, all.size(), pct(0.50), pct(0.99), all.back(), refused.load(), frc == 0 ? "true" : "false",
                flush_s, (unsigned long long)k.sent);
  } else if (mode == "deliver") {
    int n = std::atoi(argv[5]);
    std::vector<std::string> ps;
    for (int i = 0; i < 64; i++) ps.push_back(props(static_cast<uint64_t>(i)));
    auto a = Clock::now();
    for (int i = 0; i < n; i++) {
      while (track_one(c, static_cast<uint64_t>(i), ps[static_cast<size_t>(i) % 64]) == ET_E_QUEUE_FULL)
        std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    double tracked_s = std::chrono::duration<double>(Clock::now() - a).count();
    int rc = et_flush(c, 600000);
    double secs = std::chrono::duration<double>(Clock::now() - a).count();
    et_counters k{};
    et_client_counters(c, &k);
    std::printf("{\"mode\":\"deliver\",\"events\":%d,\"flushed\":%s,\"seconds\":%.3f,\"tracking_seconds\":%.3f,"
                "\"events_per_sec\":%.1f,\"sent\":%llu,\"requests\":%llu,\"retries\":%llu}\n",
                n, rc == 0 ? "true" : "false", secs, tracked_s, static_cast<double>(k.sent) / secs,
                (unsigned long long)k.sent, (unsigned long long)k.requests, (unsigned long long)k.retries);
  }
  et_client_free(c, 2000);
  return 0;
}
