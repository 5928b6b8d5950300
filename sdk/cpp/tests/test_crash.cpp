// 3. The app is SIGKILLed with thousands of events queued, server unreachable; the next process delivers.
// 4. Close within its timeout with the server unreachable or hanging; the next run sends what was left.
#include <sys/stat.h>
#ifndef _WIN32
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#endif

#include <thread>

#include <sqlite3.h>

#include "common.hpp"

namespace {
// Rows in a queue file no client has open.
int64_t queue_rows(const std::string &path) {
  sqlite3 *db = nullptr;
  int64_t n = -1;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_stmt *st = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM events", -1, &st, nullptr) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
      n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  return n;
}

// Delivers what a queue file holds to a real pipeline; checks rows and ingest's counter.
void deliver_leftovers(const std::string &queue, int64_t expected) {
  EXPECT_EQ(queue_rows(queue), expected) << "events in the queue file";
  h::Pipeline p;
  double before = p.ingest->accepted();
  et_client *c = new_client(p.ingest->url, queue);
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(et_flush(c, 120000), 0);
  EXPECT_EQ(counters(c).sent, static_cast<uint64_t>(expected));
  et_client_free(c, 1000);
  EXPECT_EQ(p.ingest->accepted() - before, static_cast<double>(expected));
  ASSERT_EQ(p.wait_rows(expected, 120000), expected);
  EXPECT_EQ(p.db->query("SELECT count(DISTINCT event_id) FROM events"), std::to_string(expected));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(p.db->count(), expected);
}
}  // namespace

TEST(Crash, SigkilledAppWithQueuedEventsIsDeliveredByTheNextProcess) {
  std::string queue = h::temp_dir() + "/queue.db";
  h::Proc app("app", {h::helper_path(), "track-and-wait", unreachable(), queue, "5000"});
  ASSERT_TRUE(h::wait_until([&] { return app.log().find("READY") != std::string::npos; }, 60000)) << app.log();
  EXPECT_NE(app.log().find("READY queued=5000"), std::string::npos) << app.log();
  app.signal(SIGKILL);
  EXPECT_EQ(app.wait_exit(10000), -1000 - SIGKILL);
  deliver_leftovers(queue, 5000);
}

TEST(Crash, AnAppKilledRightAfterTrackingLosesAtMostWhatBufferedSaid) {
  std::string queue = h::temp_dir() + "/queue.db";
  h::Proc app("app", {h::helper_path(), "track-and-die", unreachable(), queue, "5000"});
  EXPECT_EQ(app.wait_exit(60000), -1000 - SIGKILL) << app.log();
  std::string log = app.log();
  size_t at = log.find("DYING buffered=");
  ASSERT_NE(at, std::string::npos) << log;
  int64_t buffered = std::stoll(log.substr(at + 15));
  int64_t on_disk = queue_rows(queue);
  std::printf("killed with %lld events buffered; %lld in the queue file\n", static_cast<long long>(buffered),
              static_cast<long long>(on_disk));
  EXPECT_GE(on_disk, 5000 - buffered);
  EXPECT_LE(on_disk, 5000);
  deliver_leftovers(queue, on_disk);
}

TEST(Shutdown, UnreachableServerCloseReturnsInTimeAndEventsStayOnDisk) {
  std::string queue = h::temp_dir() + "/queue.db";
  et_client *c = new_client(unreachable(), queue);
  ASSERT_NE(c, nullptr);
  for (int i = 0; i < 300; i++) track_retrying(c, "unreachable", "{\"i\":" + std::to_string(i) + "}");
  ASSERT_TRUE(h::wait_until([&] { return counters(c).retries >= 1; }, 30000));
  int64_t t0 = h::now_ms();
  et_client_free(c, 1000);
  int64_t took = h::now_ms() - t0;
  EXPECT_LE(took, 3000) << "et_client_free(c, 1000) took " << took << " ms";
  deliver_leftovers(queue, 300);
}

TEST(Shutdown, HangingServerCloseAbortsTheTransferAndEventsStayOnDisk) {
  h::FakeServer hang([](size_t, const h::FakeRequest &) {
    h::FakeResponse r;
    r.hang = true;
    return r;
  });
  std::string queue = h::temp_dir() + "/queue.db";
  et_client *c = new_client(hang.url(), queue);
  ASSERT_NE(c, nullptr);
  // Wine's WinHTTP does not end a synchronous request when its handle is closed (Windows does: see
  // WinHttpCloseHandle), so under Wine the default transport's transfer ends at request_timeout_ms (4 s here)
  // instead: close still returns on time, the connection and the queue file are let go a little later.
  const bool wine_winhttp = h::under_wine() && h::env("ET_TEST_TRANSPORT") != "sockets";
  if (wine_winhttp) {
    ASSERT_EQ(et_client_set(c, "request_timeout_ms", "4000"), 0);
  }
  for (int i = 0; i < 300; i++) track_retrying(c, "hanging", "{\"i\":" + std::to_string(i) + "}");
  ASSERT_TRUE(h::wait_until([&] { return hang.requests().size() >= 1; }, 30000)) << "no request reached the server";
  EXPECT_EQ(hang.closed_connections(), 0);
  int64_t t0 = h::now_ms();
  et_client_free(c, 1000);
  int64_t took = h::now_ms() - t0;
  EXPECT_LE(took, 3000) << "et_client_free(c, 1000) took " << took << " ms";
  EXPECT_TRUE(h::wait_until([&] { return hang.closed_connections() >= 1; }, 10000))
      << "the hanging server never saw its connection closed";
  if (wine_winhttp) {  // the worker left behind frees the client (and the file's lock) once out of WinHTTP
    EXPECT_TRUE(h::wait_until(
        [&] {
          // The probe must not start a request of its own to the hanging server (its close would leave
          // one more WinHTTP request behind, holding the lock again): an unreachable port fails at once.
          char err[256];
          et_client *probe = et_client_new(unreachable().c_str(), h::kToken, queue.c_str(), err, sizeof err);
          if (probe) et_client_free(probe, 0);
          return probe != nullptr;
        },
        10000));
  }
  deliver_leftovers(queue, 300);
}

TEST(Shutdown, ProcessExitingWithoutClosingNeitherHangsNorCrashes) {
  h::FakeServer hang([](size_t, const h::FakeRequest &) {
    h::FakeResponse r;
    r.hang = true;
    return r;
  });
  std::string queue = h::temp_dir() + "/queue.db";
  h::Proc app("app", {h::helper_path(), "exit-without-close", hang.url(), queue, "200"});
  int rc = app.wait_exit(20000);
  EXPECT_EQ(rc, 0) << "exit status (INT32_MIN: still running after 20 s; < -1000: killed by a signal)\n" << app.log();
  EXPECT_NE(app.log().find("exiting"), std::string::npos) << app.log();
  deliver_leftovers(queue, 200);  // what it tracked was on disk and the lock was released
}

#ifndef _WIN32  // the stall is an LD_PRELOAD shim over glibc's getaddrinfo
// Quitting the game while the resolver hangs: et_client_free(c, T) returns within T and a margin, the
// events stay on disk. The stall is real: the shim says so, and the request had started.
TEST(Shutdown, CloseIsBoundedWhileTheResolverStalls) {
  std::string helper = h::helper_path();
  std::string shim = helper.substr(0, helper.rfind('/')) + "/libet_slow_dns.so";
  std::string queue = h::temp_dir() + "/queue.db";
  std::string asan = h::env("ASAN_OPTIONS");
  h::Proc app("app", {helper, "close-timed", "http://stalled.invalid:8080", queue, "20", "500"},
              {{"LD_PRELOAD", shim},
               {"ET_SLOW_DNS_MS", "8000"},
               {"ASAN_OPTIONS", asan + (asan.empty() ? "" : ":") + "verify_asan_link_order=0"}});
  EXPECT_EQ(app.wait_exit(30000), 0) << app.log();
  std::string log = app.log();
  EXPECT_NE(log.find("slow_dns: getaddrinfo(stalled.invalid) stalls 8000 ms"), std::string::npos)
      << "the resolver was not stalled, so this proves nothing:\n" << log;
  EXPECT_NE(log.find("REQUESTS 1"), std::string::npos) << log;
  size_t at = log.find("CLOSED ms=");
  ASSERT_NE(at, std::string::npos) << log;
  int64_t took = std::stoll(log.substr(at + 10));
  EXPECT_LE(took, 1500) << "et_client_free(c, 500) took " << took << " ms with the resolver stalled";
  EXPECT_EQ(queue_rows(queue), 20) << "the events did not stay in the queue file";
}

// Quitting the game while the connect hangs: a listener whose accept queue is full (backlog 0, one
// connection waiting, never accepted) drops further SYNs, so the SDK's connect stalls. Proven: a plain
// connect to it does not complete within a second.
TEST(Shutdown, CloseIsBoundedWhileTheConnectStalls) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(lfd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(lfd, reinterpret_cast<sockaddr *>(&a), sizeof a), 0);
  ASSERT_EQ(listen(lfd, 0), 0);
  socklen_t len = sizeof a;
  getsockname(lfd, reinterpret_cast<sockaddr *>(&a), &len);
  std::vector<int> fillers;
  auto try_connect = [&](int wait_ms) {  // true when a connect completes within wait_ms
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    fillers.push_back(fd);
    connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a);
    pollfd p{fd, POLLOUT, 0};
    return poll(&p, 1, wait_ms) == 1 && (p.revents & POLLOUT);
  };
  for (int i = 0; i < 4 && try_connect(200); i++) {
  }
  ASSERT_FALSE(try_connect(1000)) << "the listener still accepts connects: the stall would not be real";
  std::string url = "http://127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  std::string queue = h::temp_dir() + "/queue.db";
  et_client *c = new_client(url, queue);
  ASSERT_NE(c, nullptr);
  for (int i = 0; i < 20; i++) ASSERT_EQ(et_track(c, "connect_stalls", "{}", nullptr), ET_OK);
  ASSERT_TRUE(h::wait_until([&] { return counters(c).requests >= 1 && counters(c).buffered == 0; }, 30000));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(counters(c).sent + counters(c).retries, 0u) << "the connect did not stall";
  int64_t t0 = h::now_ms();
  et_client_free(c, 500);
  int64_t took = h::now_ms() - t0;
  EXPECT_LE(took, 1500) << "et_client_free(c, 500) took " << took << " ms with the connect stalled";
  EXPECT_EQ(queue_rows(queue), 20) << "the events did not stay in the queue file";
  for (int fd : fillers) close(fd);
  close(lfd);
}
#endif
