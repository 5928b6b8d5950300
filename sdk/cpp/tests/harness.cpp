#include "harness.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sys/prctl.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

extern char **environ;

namespace h {

std::string env(const char *name, const char *fallback) {
  const char *v = std::getenv(name);
  return v && *v ? v : fallback;
}

static void need(bool ok, const std::string &what) {
  if (!ok) {
    std::fprintf(stderr, "harness: %s\n", what.c_str());
    throw std::runtime_error(what);
  }
}

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

std::string unique(const std::string &prefix) {
  static std::atomic<int> n{0};
  return prefix + "_" + std::to_string(getpid()) + "_" + std::to_string(n++) + "_" +
         std::to_string(std::chrono::steady_clock::now().time_since_epoch().count() % 1000000);
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

namespace {
std::mutex g_dirs_mu;
std::vector<std::string> *g_dirs = new std::vector<std::string>();  // never destroyed: used at exit

// Removes the temporary folders (queues, logs) after a passing run; keeps them, and says where, after a
// failing one (or always with ET_TEST_KEEP=1).
class CleanupTempDirs : public ::testing::Environment {
 public:
  void TearDown() override {
    std::lock_guard<std::mutex> g(g_dirs_mu);
    bool keep = !env("ET_TEST_KEEP").empty() || !::testing::UnitTest::GetInstance()->Passed();
    for (auto &d : *g_dirs) {
      if (keep)
        std::fprintf(stderr, "kept %s\n", d.c_str());
      else
        std::system(("rm -rf '" + d + "'").c_str());
    }
    g_dirs->clear();
  }
};
[[maybe_unused]] ::testing::Environment *const g_cleanup = ::testing::AddGlobalTestEnvironment(new CleanupTempDirs);
}  // namespace

std::string temp_dir() {
  std::string base = env("TMPDIR", "/tmp");
  std::string t = base + "/et-sdk-test.XXXXXX";
  std::vector<char> buf(t.begin(), t.end());
  buf.push_back(0);
  need(mkdtemp(buf.data()) != nullptr, "mkdtemp failed");
  chmod(buf.data(), 0777);
  std::lock_guard<std::mutex> g(g_dirs_mu);
  g_dirs->push_back(buf.data());
  return buf.data();
}

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

bool wait_until(const std::function<bool()> &cond, int64_t limit_ms) {
  int64_t end = now_ms() + limit_ms;
  for (;;) {
    if (cond()) return true;
    if (now_ms() > end) return cond();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string read_file(const std::string &path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
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

double metric(const std::string &text, const std::string &name) {
  double sum = 0;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) != 0) continue;
    char next = line.size() > name.size() ? line[name.size()] : 0;
    if (next != ' ' && next != '{') continue;
    sum += std::strtod(line.substr(line.rfind(' ') + 1).c_str(), nullptr);
  }
  return sum;
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

int64_t Db::count(const std::string &where) const {
  return std::stoll(query("SELECT count(*) FROM events WHERE " + where));
}

Flusher::Flusher(const std::string &redis_url, const std::string &db_url, const std::string &stream_key) {
  proc = std::make_unique<Proc>(
      "flusher",
      std::vector<std::string>{bin_dir() + "/flusher", "--redis-url", redis_url, "--database-url", db_url,
                               "--stream-key", stream_key, "--metrics-bind", "127.0.0.1:0", "--block-ms", "200",
                               "--backoff-max-ms", "1000", "--claim-idle-ms", "5000"},
      std::vector<std::pair<std::string, std::string>>{{"RUST_LOG", "info"}});
}

Pipeline::Pipeline(const std::string &redis_url, const std::vector<std::string> &ingest_extra) {
  std::string r = redis_url.empty() ? env("ET_TEST_REDIS_URL") : redis_url;
  need(!r.empty(), "ET_TEST_REDIS_URL is not set (scripts/test-sdk sets it)");
  stream = unique("sdk_stream");
  db = std::make_unique<Db>();
  ingest = std::make_unique<Ingest>(r, stream, ingest_extra);
  flusher = std::make_unique<Flusher>(r, db->url, stream);
}

int64_t Pipeline::wait_rows(int64_t n, int64_t limit_ms) const {
  int64_t seen = 0;
  wait_until([&] { return (seen = db->count()) >= n; }, limit_ms);
  return seen;
}

// ---- fake server -----------------------------------------------------------------------------

std::string gunzip(const std::string &in) {
  z_stream zs{};
  inflateInit2(&zs, 15 + 32);
  std::string out;
  char buf[65536];
  zs.next_in = reinterpret_cast<Bytef *>(const_cast<char *>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  int rc;
  do {
    zs.next_out = reinterpret_cast<Bytef *>(buf);
    zs.avail_out = sizeof buf;
    rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buf, sizeof buf - zs.avail_out);
  } while (rc == Z_OK);
  inflateEnd(&zs);
  return out;
}

std::vector<std::string> FakeRequest::event_ids() const {
  std::vector<std::string> ids;
  const std::string key = "\"event_id\":\"";
  for (size_t p = body.find(key); p != std::string::npos; p = body.find(key, p + 1))
    ids.push_back(body.substr(p + key.size(), 36));
  return ids;
}

FakeServer::FakeServer(std::function<FakeResponse(size_t, const FakeRequest &)> responder)
    : responder_(std::move(responder)) {
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  need(bind(listen_fd_, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0, "fake server bind");
  socklen_t len = sizeof a;
  getsockname(listen_fd_, reinterpret_cast<sockaddr *>(&a), &len);
  port_ = ntohs(a.sin_port);
  listen(listen_fd_, 64);
  acceptor_ = std::thread([this] {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      open_++;
      std::lock_guard<std::mutex> g(mu_);
      threads_.emplace_back([this, fd] { serve(fd); });
    }
  });
}

FakeServer::~FakeServer() {
  stop_ = true;
  acceptor_.join();
  std::vector<std::thread> ts;
  {
    std::lock_guard<std::mutex> g(mu_);
    ts.swap(threads_);
  }
  for (auto &t : ts) t.join();
  close(listen_fd_);
}

std::vector<FakeRequest> FakeServer::requests() {
  std::lock_guard<std::mutex> g(mu_);
  return reqs_;
}

void FakeServer::serve(int fd) {
  std::string buf;
  bool hanging = false;
  auto read_more = [&]() -> int {  // 1 data, 0 closed by peer, -1 stop
    for (;;) {
      if (stop_) return -1;
      pollfd p{fd, POLLIN, 0};
      int r = poll(&p, 1, 50);
      if (r <= 0) continue;
      char tmp[65536];
      ssize_t n = recv(fd, tmp, sizeof tmp, 0);
      if (n <= 0) return 0;
      if (!hanging) buf.append(tmp, static_cast<size_t>(n));
      return 1;
    }
  };
  for (;;) {
    if (hanging) {
      int r = read_more();
      if (r == 1) continue;
      break;
    }
    size_t hend = buf.find("\r\n\r\n");
    if (hend == std::string::npos) {
      if (read_more() != 1) break;
      continue;
    }
    FakeRequest req;
    std::istringstream hs(buf.substr(0, hend));
    std::string line;
    std::getline(hs, line);
    {
      std::istringstream ls(line);
      std::string method;
      ls >> method >> req.path;
    }
    while (std::getline(hs, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      size_t c = line.find(':');
      if (c == std::string::npos) continue;
      std::string k = line.substr(0, c), v = line.substr(c + 1);
      for (auto &ch : k) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      while (!v.empty() && v.front() == ' ') v.erase(0, 1);
      req.headers[k] = v;
    }
    size_t clen = req.headers.count("content-length") ? std::stoul(req.headers["content-length"]) : 0;
    bool ok = true;
    while (buf.size() < hend + 4 + clen) {
      if (read_more() != 1) {
        ok = false;
        break;
      }
    }
    if (!ok) break;
    std::string body = buf.substr(hend + 4, clen);
    buf.erase(0, hend + 4 + clen);
    req.body = req.headers["content-encoding"] == "gzip" ? gunzip(body) : body;
    req.at_ms = now_ms();
    size_t index;
    {
      std::lock_guard<std::mutex> g(mu_);
      index = reqs_.size();
      reqs_.push_back(req);
    }
    FakeResponse res = responder_(index, req);
    if (res.hang) {
      hanging = true;
      continue;
    }
    std::string out = "HTTP/1.1 " + std::to_string(res.status) + " X\r\nContent-Type: application/json\r\n";
    for (auto &hd : res.headers) out += hd + "\r\n";
    out += "Content-Length: " + std::to_string(res.body.size()) + "\r\n\r\n" + res.body;
    send(fd, out.data(), out.size(), MSG_NOSIGNAL);
  }
  close(fd);
  closed_++;
}

void Reports::cb(void *user, const et_report *r) {
  auto *self = static_cast<Reports *>(user);
  static const bool verbose = !env("ET_TEST_VERBOSE").empty();
  if (verbose)
    std::fprintf(stderr, "[report %lld] kind=%d status=%d index=%d count=%d retry_ms=%lld id=%s %s\n",
                 static_cast<long long>(now_ms()), r->kind, r->status, r->index, r->count,
                 static_cast<long long>(r->retry_after_ms), r->event_id ? r->event_id : "-", r->message);
  std::lock_guard<std::mutex> g(self->mu);
  self->all.push_back(*r);
  self->ids.emplace_back(r->event_id ? r->event_id : "");
  self->messages.emplace_back(r->message);
  self->at_ms.push_back(now_ms());
  self->all.back().event_id = nullptr;
  self->all.back().message = nullptr;
}

std::vector<size_t> Reports::of_kind(int kind) {
  std::lock_guard<std::mutex> g(mu);
  std::vector<size_t> v;
  for (size_t i = 0; i < all.size(); i++)
    if (all[i].kind == kind) v.push_back(i);
  return v;
}

}  // namespace h
