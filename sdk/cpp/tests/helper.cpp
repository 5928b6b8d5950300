// A separate process for the tests that crash, lock or exit without closing a client.
//   et_test_helper track-and-wait ENDPOINT QUEUE N   track N events, print READY once all are on disk, wait
//   et_test_helper lock QUEUE                        exit 0 when opening QUEUE fails because it is locked
//   et_test_helper track-and-die ENDPOINT QUEUE N    track N events, print the `buffered` counter, SIGKILL itself
//                                                    (Windows: TerminateProcess with exit code 137, which the
//                                                    harness reports as SIGKILL)
//   et_test_helper exit-without-close ENDPOINT QUEUE N   track N events and return from main without closing
//   et_test_helper close-timed ENDPOINT QUEUE N T   track N events, wait for the first request to start,
//                                                   print how long et_client_free(c, T) took: CLOSED ms=...
#include <csignal>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "eventtracker/eventtracker.h"
#include "socket_transport.hpp"

#ifdef _WIN32
#include <windows.h>
#endif

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  std::string mode = argv[1];
  char err[512] = {0};
  if (mode == "lock") {
    et_client *c = et_client_new("http://127.0.0.1:9", "t", argv[2], err, sizeof err);
    if (c) {
      std::printf("opened\n");
      et_client_free(c, 0);
      return 1;
    }
    std::printf("refused: %s\n", err);
    return std::strstr(err, "locked") ? 0 : 1;
  }
  if (argc < 5) return 2;
  et_client *c = et_client_new(argv[2], "sdk-test-token-0123456789", argv[3], err, sizeof err);
  if (!c) {
    std::printf("error: %s\n", err);
    return 3;
  }
  h::maybe_use_socket_transport(c);
  int n = std::atoi(argv[4]);
  for (int i = 0; i < n; i++) {
    std::string props = "{\"i\":" + std::to_string(i) + ",\"proc\":\"helper\"}";
    while (et_track(c, "crash_test", props.c_str(), nullptr) == ET_E_QUEUE_FULL)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (mode == "track-and-wait") {
    et_counters k{};
    do {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      et_client_counters(c, &k);
    } while (k.buffered != 0);
    std::printf("READY queued=%llu\n", static_cast<unsigned long long>(k.queued));
    std::fflush(stdout);
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  if (mode == "track-and-die") {  // a crash right after tracking: what `buffered` said is all it may lose
    et_counters k{};
    et_client_counters(c, &k);
    std::printf("DYING buffered=%llu\n", static_cast<unsigned long long>(k.buffered));
    std::fflush(stdout);
#ifdef _WIN32
    TerminateProcess(GetCurrentProcess(), 137);  // h::kKilledExitCode
#else
    raise(SIGKILL);
#endif
  }
  if (mode == "close-timed" && argc >= 6) {
    et_counters k{};
    for (int i = 0; i < 500 && k.requests == 0; i++) {  // the request has started (its resolver may hang)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      et_client_counters(c, &k);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::printf("REQUESTS %llu\n", static_cast<unsigned long long>(k.requests));
    std::fflush(stdout);
    auto t0 = std::chrono::steady_clock::now();
    et_client_free(c, std::atoi(argv[5]));
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
    std::printf("CLOSED ms=%lld\n", static_cast<long long>(ms));
    std::fflush(stdout);
    return 0;
  }
  if (mode == "exit-without-close") {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // let a request start (and hang)
    std::printf("exiting\n");
    std::fflush(stdout);
    return 0;  // static destructors and exit() with the client's thread still running
  }
  return 2;
}
