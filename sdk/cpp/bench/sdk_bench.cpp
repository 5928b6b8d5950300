// SDK benchmark (a measurement, not a test).
//   sdk_bench track ENDPOINT TOKEN QUEUE_DIR THREADS EVENTS_PER_THREAD [option=value]...
//       et_track cost per call (p50, p99, max in microseconds) with the SQLite queue on.
//   sdk_bench deliver ENDPOINT TOKEN QUEUE_DIR EVENTS [option=value]...
//       events/s one client delivers: from the first et_track until et_flush returned 0.
//   sdk_bench offline QUEUE_DIR RATE SECONDS [MAX_QUEUE_EVENTS MAX_QUEUE_BYTES]
//       the process's CPU (user + system) while a game tracks RATE events/s with the server unreachable:
//       once with the queue below its cap, once with it full at the default caps or those given (each event past the cap
//       drops the oldest); and their ratio.
// Heap allocations per call (on the calling thread, through the C API and through the C++ wrapper) are
// counted by replacing operator new in this program (the library's allocations go through it too).
// Prints one JSON object. Events look like loadgen's (name, device/session/user ids, ~150 B properties).
#include <eventtracker/client.hpp>
#include <eventtracker/eventtracker.h>
#if defined(_WIN32)
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#else
#include <sys/resource.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>
#include <thread>
#include <vector>

// Counts heap allocations made by this thread (operator new; the SDK's std::string/vector use it).
thread_local uint64_t t_allocs = 0;
void *operator new(size_t n) {
  t_allocs++;
  if (void *p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void *p) noexcept { std::free(p); }
void operator delete(void *p, size_t) noexcept { std::free(p); }

namespace {
using Clock = std::chrono::steady_clock;

double cpu_seconds() {
#if defined(_WIN32)
  FILETIME created, exited, kernel, user;
  GetProcessTimes(GetCurrentProcess(), &created, &exited, &kernel, &user);
  auto secs = [](const FILETIME &f) {
    return static_cast<double>((static_cast<uint64_t>(f.dwHighDateTime) << 32) | f.dwLowDateTime) / 1e7;
  };
  return secs(kernel) + secs(user);
#else
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
#endif
}

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

// Tracks `rate` events/s for `secs` seconds, paced; returns the CPU seconds the process used meanwhile.
double paced_cpu(et_client *c, int rate, int secs) {
  std::string p = props(7);
  double cpu0 = cpu_seconds();
  auto start = Clock::now();
  for (int64_t i = 0; i < static_cast<int64_t>(rate) * secs; i++) {
    auto due = start + std::chrono::microseconds(i * 1000000 / rate);
    std::this_thread::sleep_until(due);
    track_one(c, static_cast<uint64_t>(i), p);
  }
  et_counters k{};
  do {  // what was tracked is written (and capped) before the clock stops
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    et_client_counters(c, &k);
  } while (k.buffered != 0);
  return cpu_seconds() - cpu0;
}

int offline(const std::string &dir, int rate, int secs, const char *cap_events, const char *cap_bytes) {
  const char *nowhere = "http://127.0.0.1:9";
  char err[512];
  // Below the cap: an empty queue with room for everything.
  et_client *c = et_client_new(nowhere, "t", (dir + "/below.db").c_str(), err, sizeof err);
  if (!c) return std::fprintf(stderr, "sdk_bench: %s\n", err), 1;
  et_client_set(c, "max_queue_events", "100000000");
  et_client_set(c, "max_queue_bytes", "10000000000");
  double below = paced_cpu(c, rate, secs);
  et_counters kb{};
  et_client_counters(c, &kb);
  et_client_free(c, 0);
  // At the cap, with the SDK's default caps: fill it first, then the same paced load.
  c = et_client_new(nowhere, "t", (dir + "/at-cap.db").c_str(), err, sizeof err);
  if (!c) return std::fprintf(stderr, "sdk_bench: %s\n", err), 1;
  et_client_set(c, "max_buffer_events", "1000000");
  if (cap_events) et_client_set(c, "max_queue_events", cap_events);
  if (cap_bytes) et_client_set(c, "max_queue_bytes", cap_bytes);
  std::string p = props(7);
  et_counters k{};
  for (uint64_t i = 0; k.dropped == 0; i++) {
    for (int j = 0; j < 1000; j++) track_one(c, i * 1000 + static_cast<uint64_t>(j), p);
    do {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      et_client_counters(c, &k);
    } while (k.buffered != 0);
  }
  uint64_t queued_at_cap = k.queued;
  double at_cap = paced_cpu(c, rate, secs);
  et_client_counters(c, &k);
  et_client_free(c, 0);
  std::printf("{\"mode\":\"offline\",\"rate\":%d,\"seconds\":%d,\"cpu_below_cap_s\":%.3f,\"queued_below\":%llu,"
              "\"cpu_at_cap_s\":%.3f,\"queued_at_cap\":%llu,\"dropped\":%llu,\"ratio_at_cap_to_below\":%.2f,"
              "\"core_share_at_cap\":%.3f}\n",
              rate, secs, below, static_cast<unsigned long long>(kb.queued), at_cap,
              static_cast<unsigned long long>(queued_at_cap), static_cast<unsigned long long>(k.dropped),
              below > 0 ? at_cap / below : 0.0, at_cap / secs);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 5 && std::string(argv[1]) == "offline") return offline(argv[2], std::atoi(argv[3]), std::atoi(argv[4]), argc >= 7 ? argv[5] : nullptr, argc >= 7 ? argv[6] : nullptr);
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
    std::atomic<uint64_t> allocs_total{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; t++) {
      ts.emplace_back([&, t] {
        uint64_t allocs = 0;
        auto &v = lat[static_cast<size_t>(t)];
        v.reserve(static_cast<size_t>(n));
        for (int i = 0; i < n; i++) {
          uint64_t k = static_cast<uint64_t>(t) * 1000000u + static_cast<uint64_t>(i);
          std::string p = props(k);  // built outside the timed call, as an app would
          uint64_t a0 = t_allocs;
          auto a = Clock::now();
          int rc = track_one(c, k, p);
          auto b = Clock::now();
          allocs += t_allocs - a0;
          if (rc != ET_OK) refused++;
          v.push_back(std::chrono::duration<double, std::micro>(b - a).count());
        }
        allocs_total += allocs;
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
    // The same events through the C++ wrapper (Client::track(Event)), allocations only.
    uint64_t cpp_allocs = 0;
    {
      eventtracker::Client cpp(argv[2], argv[3]);
      std::string p = props(1);
      for (int i = 0; i < 1000; i++) {
        eventtracker::Event e;
        e.name = kNames[i % 7];
        e.properties_json = p;
        e.user_id = "user-000042";
        uint64_t a0 = t_allocs;
        cpp.track(e);
        cpp_allocs += t_allocs - a0;
      }
    }
    std::printf("{\"mode\":\"track\",\"threads\":%d,\"calls\":%zu,\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,"
                "\"max_us\":%.1f,\"allocs_per_call_c\":%.2f,\"allocs_per_call_cpp\":%.2f,"
                "\"refused\":%d,\"flushed\":%s,\"flush_seconds\":%.2f,\"sent\":%llu}\n",
                threads, all.size(), pct(0.50), pct(0.99), pct(0.999), all.back(),
                static_cast<double>(allocs_total.load()) / static_cast<double>(all.size()), cpp_allocs / 1000.0,
                refused.load(), frc == 0 ? "true" : "false", flush_s, (unsigned long long)k.sent);
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
