// Test harness: starts the real ingest-api, flusher and (when a test needs its own) redis-server,
// makes a fresh PostgreSQL database per test, reads /metrics, and offers a scriptable fake HTTP server.
// One API, two implementations of the platform part: harness_posix.cpp forks the Linux binaries itself;
// harness_win.cpp (the Windows build, run under Wine) asks scripts/sdk-controller, a small HTTP service on the
// Linux side (ET_TEST_CONTROLLER), to run them, and starts the test helper with CreateProcess. harness.cpp
// holds what both share (the fake server, reports, temp folders, metrics).
#pragma once

#include <sys/types.h>

#include <csignal>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "eventtracker/eventtracker.h"

#ifdef _WIN32
// Windows has no such signals; the harness maps them: SIGKILL is TerminateProcess (exit code kKilledExitCode,
// reported by wait_exit as -1000 - SIGKILL), SIGSTOP/SIGCONT reach the controller's Linux processes only.
#ifndef SIGKILL
#define SIGKILL 9
#endif
#ifndef SIGCONT
#define SIGCONT 18
#endif
#ifndef SIGSTOP
#define SIGSTOP 19
#endif
#endif

namespace h {

constexpr const char *kToken = "sdk-test-token-0123456789";
constexpr const char *kSource = "sdk-test-source";
#ifdef _WIN32
// The exit code of a process the harness (or the helper's track-and-die) ends with TerminateProcess:
// 128 + SIGKILL, as a shell shows a SIGKILLed one.
constexpr unsigned kKilledExitCode = 137;
#endif
// The $platform the SDK reports here.
#ifdef _WIN32
constexpr const char *kPlatform = "windows";
#else
constexpr const char *kPlatform = "linux";
#endif

std::string env(const char *name, const char *fallback = "");
void need(bool ok, const std::string &what);  // throws (and says so on stderr) unless ok
std::string bin_dir();               // ET_BIN_DIR: where ingest-api and flusher are
std::string helper_path();           // the et_test_helper executable
std::string unique(const std::string &prefix);
uint16_t free_port();
std::string temp_dir();              // a fresh directory under TMPDIR
int64_t now_ms();                    // steady clock
// Polls `cond` every 20 ms until true or `limit_ms`; returns its last value.
bool wait_until(const std::function<bool()> &cond, int64_t limit_ms);
std::string read_file(const std::string &path);
// Runs a shell command; returns stdout (trimmed); *rc gets the exit status. POSIX only.
std::string sh(const std::string &cmd, int *rc = nullptr);
std::string http_get(const std::string &url);
// The UTC calendar time of `secs` from the OS (gmtime_r; on Windows FileTimeToSystemTime, which reaches year
// 30827 where the CRT's gmtime_s stops at 3000). Fills year, mon, mday, hour, min, sec as gmtime does.
void utc_tm(time_t secs, struct tm *out);
// Whether this Windows build runs under Wine (ntdll exports wine_get_version); false elsewhere.
bool under_wine();
// Sum of a Prometheus counter over all its label sets.
double metric(const std::string &metrics_text, const std::string &name);

class Proc {
 public:
  Proc(const std::string &name, const std::vector<std::string> &argv,
       const std::vector<std::pair<std::string, std::string>> &envs = {});
  ~Proc();
  pid_t pid() const { return pid_; }
  std::string log() const;
  void signal(int sig) const;
  bool running();
  int wait_exit(int64_t limit_ms);  // exit code, or -1000-signal, or INT32_MIN on timeout
  void stop();                       // SIGTERM, then SIGKILL after 10 s
#ifdef _WIN32
  // A process scripts/sdk-controller runs on the Linux side (ingest-api, flusher, redis-server), by its id.
  static std::unique_ptr<Proc> remote(const std::string &name, const std::string &id);
#endif
 private:
  std::string name_, log_path_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
#ifdef _WIN32
  Proc() = default;
  void *handle_ = nullptr;  // HANDLE of a local process
  std::string remote_;      // the controller's id of a remote one
#endif
};

class Redis {  // a private redis-server (AOF always), for tests that freeze or stop it
 public:
  Redis();
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_) + "/"; }
  void freeze() { proc_->signal(SIGSTOP); }
  void thaw() { proc_->signal(SIGCONT); }
 private:
  uint16_t port_;
  std::string dir_;
  std::unique_ptr<Proc> proc_;
};

class Ingest {
 public:
  Ingest(const std::string &redis_url, const std::string &stream_key, const std::vector<std::string> &extra = {});
  std::string url;  // http://127.0.0.1:PORT
  std::string metrics() const { return http_get(url + "/metrics"); }
  double accepted() const { return metric(metrics(), "eventtracker_ingest_events_accepted_total"); }
  double rejected() const { return metric(metrics(), "eventtracker_ingest_events_rejected_total"); }
  std::unique_ptr<Proc> proc;
};

class Db {  // a fresh database on the shared PostgreSQL, migrated by the real `flusher migrate`
 public:
  Db();
  ~Db();
  std::string url;
  std::string query(const std::string &sql) const;  // first column(s) of the result, '|' separated
  int64_t count(const std::string &where = "true") const;
 private:
  std::string name_, admin_;
};

class Flusher {
 public:
  Flusher(const std::string &redis_url, const std::string &db_url, const std::string &stream_key);
  std::unique_ptr<Proc> proc;
};

// The whole pipeline for one test: its own stream key on the shared (or a private) Redis, its own
// ingest-api, database and flusher.
struct Pipeline {
  explicit Pipeline(const std::string &redis_url = "", const std::vector<std::string> &ingest_extra = {});
  std::string stream;
  std::unique_ptr<Db> db;
  std::unique_ptr<Ingest> ingest;
  std::unique_ptr<Flusher> flusher;
  // Waits until the table holds n rows (generous bound); returns the count seen.
  int64_t wait_rows(int64_t n, int64_t limit_ms = 60000) const;
};

// One scripted response of the fake server.
struct FakeResponse {
  int status = 200;
  std::string body = "{\"accepted\":0,\"rejected\":[]}";
  std::vector<std::string> headers;  // "Name: value"
  bool hang = false;                 // accept the request and never answer
};

struct FakeRequest {
  int64_t at_ms;  // steady clock when the request was complete
  std::string path, body;  // body gunzipped
  std::map<std::string, std::string> headers;  // lower-case names
  std::vector<std::string> event_ids() const;  // in order
};

// A tiny HTTP/1.1 server on 127.0.0.1: each request gets responder(request index, request).
class FakeServer {
 public:
  explicit FakeServer(std::function<FakeResponse(size_t, const FakeRequest &)> responder);
  ~FakeServer();
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::vector<FakeRequest> requests();
  int open_connections() const { return open_.load(); }
  int closed_connections() const { return closed_.load(); }
 private:
#ifdef _WIN32
  using sock_t = uintptr_t;  // SOCKET
#else
  using sock_t = int;
#endif
  void serve(sock_t fd);
  std::function<FakeResponse(size_t, const FakeRequest &)> responder_;
  sock_t listen_fd_ = static_cast<sock_t>(-1);
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> open_{0}, closed_{0};
  std::mutex mu_;
  std::vector<FakeRequest> reqs_;
  std::vector<std::thread> threads_;
  std::thread acceptor_;
};

// Collects reports of a client (thread-safe).
struct Reports {
  std::mutex mu;
  std::vector<et_report> all;
  std::vector<std::string> ids, messages;
  std::vector<int64_t> at_ms;
  static void cb(void *user, const et_report *r);
  std::vector<size_t> of_kind(int kind);
  void attach(et_client *c) { et_client_set_report_callback(c, &Reports::cb, this); }
};

std::string gunzip(const std::string &in);

// For the harness's own files: remembers a temporary folder to remove after a passing run.
void keep_temp_dir(const std::string &path);

}  // namespace h
