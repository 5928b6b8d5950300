// The harness's POSIX part: forks the real ingest-api, flusher and redis-server, runs psql, reads /metrics
// with libcurl. (harness_win.cpp is the Windows one.)
#include "harness.hpp"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace h {

std::string bin_dir() {
  std::string d = env("ET_BIN_DIR");
  need(!d.empty(), "ET_BIN_DIR is not set (the folder with ingest-api and flusher; scripts/test-sdk sets it)");
  return d;
}

std::string helper_path() {
#ifdef ET_TEST_HELPER_DEFAULT
  return env("ET_TEST_HELPER", ET_TEST_HELPER_DEFAULT);
#else
  return env("ET_TEST_HELPER", "./et_test_helper");
#endif
}

uint16_t free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

std::string temp_dir() {
  std::string base = env("TMPDIR", "/tmp");
  std::string t = base + "/et-sdk-test.XXXXXX";
  std::vector<char> buf(t.begin(), t.end());
  buf.push_back(0);
  need(mkdtemp(buf.data()) != nullptr, "mkdtemp failed");
  chmod(buf.data(), 0777);
  keep_temp_dir(buf.data());
  return buf.data();
}

std::string sh(const std::string &cmd, int *rc) {
  FILE *p = popen(cmd.c_str(), "r");
  need(p != nullptr, "popen failed: " + cmd);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = pclose(p);
  if (rc) *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

bool under_wine() { return false; }

void utc_tm(time_t secs, struct tm *out) { gmtime_r(&secs, out); }

static size_t collect(char *p, size_t s, size_t n, void *ud) {
  static_cast<std::string *>(ud)->append(p, s * n);
  return s * n;
}

std::string http_get(const std::string &url) {
  CURL *c = curl_easy_init();
  std::string out;
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  CURLcode rc = curl_easy_perform(c);
  curl_easy_cleanup(c);
  need(rc == CURLE_OK, "GET " + url + " failed: " + curl_easy_strerror(rc));
  return out;
}

// ---- processes -------------------------------------------------------------------------------

Proc::Proc(const std::string &name, const std::vector<std::string> &argv,
           const std::vector<std::pair<std::string, std::string>> &envs)
    : name_(name) {
  static std::string logdir = temp_dir();
  log_path_ = logdir + "/" + unique(name) + ".log";
  int fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  need(fd >= 0, "cannot create " + log_path_);
  std::vector<char *> args;
  for (auto &a : argv) args.push_back(const_cast<char *>(a.c_str()));
  args.push_back(nullptr);
  pid_ = fork();
  need(pid_ >= 0, "fork failed");
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // a test killed by a timeout takes its servers with it
    dup2(fd, 1);
    dup2(fd, 2);
    for (auto &kv : envs) setenv(kv.first.c_str(), kv.second.c_str(), 1);
    execvp(args[0], args.data());
    std::fprintf(stderr, "exec %s failed: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  close(fd);
}

Proc::~Proc() { stop(); }

std::string Proc::log() const { return read_file(log_path_); }

void Proc::signal(int sig) const {
  if (pid_ > 0) kill(pid_, sig);
}

bool Proc::running() {
  if (reaped_) return false;
  int st;
  pid_t r = waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    status_ = st;
    return false;
  }
  return true;
}

int Proc::wait_exit(int64_t limit_ms) {
  if (!wait_until([&] { return !running(); }, limit_ms)) return INT32_MIN;
  if (WIFEXITED(status_)) return WEXITSTATUS(status_);
  return -1000 - WTERMSIG(status_);
}

void Proc::stop() {
  if (pid_ <= 0 || !running()) return;
  kill(pid_, SIGCONT);
  kill(pid_, SIGTERM);
  if (wait_exit(10000) == INT32_MIN) {
    kill(pid_, SIGKILL);
    wait_exit(10000);
  }
}

Redis::Redis() : port_(free_port()), dir_(temp_dir()) {
  proc_ = std::make_unique<Proc>(
      "redis", std::vector<std::string>{"redis-server", "--port", std::to_string(port_), "--bind", "127.0.0.1", "--dir",
                                        dir_, "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                                        "--maxmemory-policy", "noeviction", "--daemonize", "no"});
  bool up = wait_until(
      [&] { return sh("redis-cli -p " + std::to_string(port_) + " ping 2>/dev/null") == "PONG"; }, 30000);
  need(up, "redis-server did not start:\n" + proc_->log());
}

Ingest::Ingest(const std::string &redis_url, const std::string &stream_key, const std::vector<std::string> &extra) {
  std::vector<std::string> argv = {bin_dir() + "/ingest-api", "--bind", "127.0.0.1:0", "--redis-url", redis_url,
                                   "--stream-key", stream_key, "--tokens", std::string(kSource) + "=" + kToken,
                                   "--workers", "2"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  proc = std::make_unique<Proc>("ingest-api", argv, std::vector<std::pair<std::string, std::string>>{{"RUST_LOG", "info"}});
  const std::string marker = "ingest-api listening on ";
  bool up = wait_until(
      [&] {
        std::string l = proc->log();
        size_t p = l.find(marker);
        if (p == std::string::npos) return false;
        size_t e = l.find('\n', p);
        if (e == std::string::npos) return false;
        url = l.substr(p + marker.size(), e - p - marker.size());
        return true;
      },
      30000);
  need(up, "ingest-api did not start:\n" + proc->log());
}

static std::string replace_db(const std::string &url, const std::string &db) {
  return url.substr(0, url.rfind('/') + 1) + db;
}

Db::Db() {
  admin_ = env("ET_TEST_DATABASE_URL");
  need(!admin_.empty(), "ET_TEST_DATABASE_URL is not set (scripts/test-sdk sets it)");
  name_ = unique("etsdk");
  int rc = 0;
  std::string out = sh("psql '" + admin_ + "' -XAtq -v ON_ERROR_STOP=1 -c 'CREATE DATABASE " + name_ + "' 2>&1", &rc);
  need(rc == 0, "create database: " + out);
  url = replace_db(admin_, name_);
  out = sh("RUST_LOG=warn '" + bin_dir() + "/flusher' migrate --database-url '" + url + "' 2>&1", &rc);
  need(rc == 0, "flusher migrate: " + out);
}

Db::~Db() {
  sh("psql '" + admin_ + "' -XAtq -c 'DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)' >/dev/null 2>&1");
}

std::string Db::query(const std::string &sql) const {
  int rc = 0;
  static std::string dir = temp_dir();
  static std::atomic<int> n{0};
  std::string tmp = dir + "/q" + std::to_string(n++) + ".sql";
  { std::ofstream(tmp) << sql; }
  std::string out = sh("psql '" + url + "' -XAtq -v ON_ERROR_STOP=1 -f '" + tmp + "' 2>&1", &rc);
  std::remove(tmp.c_str());
  need(rc == 0, "psql failed: " + sql + "\n" + out);
  return out;
}

Flusher::Flusher(const std::string &redis_url, const std::string &db_url, const std::string &stream_key) {
  proc = std::make_unique<Proc>(
      "flusher",
      std::vector<std::string>{bin_dir() + "/flusher", "--redis-url", redis_url, "--database-url", db_url,
                               "--stream-key", stream_key, "--metrics-bind", "127.0.0.1:0", "--block-ms", "200",
                               "--backoff-max-ms", "1000", "--claim-idle-ms", "5000"},
      std::vector<std::pair<std::string, std::string>>{{"RUST_LOG", "info"}});
}

}  // namespace h
