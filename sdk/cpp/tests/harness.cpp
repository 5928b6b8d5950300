// The harness's shared part (both platforms): environment, temporary folders, metrics, the fake HTTP
// server, reports. The processes and services are in harness_posix.cpp and harness_win.cpp.
#include "harness.hpp"

#include <gtest/gtest.h>
#include <zlib.h>

#if defined(_WIN32)
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <process.h>
#define ET_POLL WSAPoll
#define ET_CLOSESOCK closesocket
#define ET_NOSIGNAL 0
#else
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#define ET_POLL ::poll
#define ET_CLOSESOCK ::close
#define ET_NOSIGNAL MSG_NOSIGNAL
#endif

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace h {

namespace {
int pid_now() {
#if defined(_WIN32)
  return _getpid();
#else
  return static_cast<int>(getpid());
#endif
}
}  // namespace

std::string env(const char *name, const char *fallback) {
  const char *v = std::getenv(name);
  return v && *v ? v : fallback;
}

void need(bool ok, const std::string &what) {
  if (!ok) {
    std::fprintf(stderr, "harness: %s\n", what.c_str());
    throw std::runtime_error(what);
  }
}

std::string unique(const std::string &prefix) {
  static std::atomic<int> n{0};
  return prefix + "_" + std::to_string(pid_now()) + "_" + std::to_string(n++) + "_" +
         std::to_string(std::chrono::steady_clock::now().time_since_epoch().count() % 1000000);
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
    std::error_code ec;
    bool keep = !env("ET_TEST_KEEP").empty() || !::testing::UnitTest::GetInstance()->Passed();
    for (auto &d : *g_dirs) {
      if (keep)
        std::fprintf(stderr, "kept %s\n", d.c_str());
      else
        std::filesystem::remove_all(d, ec);
    }
    g_dirs->clear();
  }
};
[[maybe_unused]] ::testing::Environment *const g_cleanup = ::testing::AddGlobalTestEnvironment(new CleanupTempDirs);
}  // namespace

void keep_temp_dir(const std::string &path) {
  std::lock_guard<std::mutex> g(g_dirs_mu);
  g_dirs->push_back(path);
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

// ---- the pipeline (its parts are per platform) -------------------------------------------------

int64_t Db::count(const std::string &where) const {
  return std::stoll(query("SELECT count(*) FROM events WHERE " + where));
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
#if defined(_WIN32)
  static const bool wsa = [] {
    WSADATA d;
    return WSAStartup(MAKEWORD(2, 2), &d) == 0;
  }();
  need(wsa, "WSAStartup failed");
  // Not inherited by the processes the tests start (Windows sockets are inheritable by default).
  listen_fd_ = WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, nullptr, 0, WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
  need(listen_fd_ != INVALID_SOCKET, "fake server socket");
#else
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
#endif
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
      pollfd p{};
      p.fd = listen_fd_;
      p.events = POLLIN;
      if (ET_POLL(&p, 1, 50) <= 0) continue;
#if defined(_WIN32)
      sock_t fd = accept(listen_fd_, nullptr, nullptr);
      if (fd == INVALID_SOCKET) continue;
      SetHandleInformation(reinterpret_cast<HANDLE>(fd), HANDLE_FLAG_INHERIT, 0);
#else
      sock_t fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
#endif
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
  ET_CLOSESOCK(listen_fd_);
}

std::vector<FakeRequest> FakeServer::requests() {
  std::lock_guard<std::mutex> g(mu_);
  return reqs_;
}

void FakeServer::serve(sock_t fd) {
  std::string buf;
  bool hanging = false;
  auto read_more = [&]() -> int {  // 1 data, 0 closed by peer, -1 stop
    for (;;) {
      if (stop_) return -1;
      pollfd p{};
      p.fd = fd;
      p.events = POLLIN;
      int r = ET_POLL(&p, 1, 50);
      if (r <= 0) continue;
      char tmp[65536];
      auto n = recv(fd, tmp, static_cast<int>(sizeof tmp), 0);
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
    send(fd, out.data(), static_cast<int>(out.size()), ET_NOSIGNAL);
  }
  ET_CLOSESOCK(fd);
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
