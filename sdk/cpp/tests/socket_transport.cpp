#include "socket_transport.hpp"

#if defined(_WIN32)
#include <winsock2.h>
#include <ws2tcpip.h>
using sock_t = SOCKET;
#define ET_CLOSESOCK closesocket
#define ET_POLL WSAPoll
#else
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
using sock_t = int;
#define INVALID_SOCKET (-1)
#define ET_CLOSESOCK ::close
#define ET_POLL ::poll
#endif

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

namespace h {
namespace {

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

// Waits until fd is ready for `events`, checking the cancel flag every 20 ms; false on cancel/deadline.
bool ready(sock_t fd, short events, const et_http_request *rq, int64_t deadline) {
  for (;;) {
    if (et_http_request_cancelled(rq) || now_ms() >= deadline) return false;
    pollfd p{};
    p.fd = fd;
    p.events = events;
    int n = ET_POLL(&p, 1, 20);
    if (n > 0) return true;
    if (n < 0) return false;
  }
}

void fail(et_http_response *resp, const char *why) { et_http_response_set_error(resp, why); }

}  // namespace

void socket_transport(void *, const et_http_request *rq, et_http_response *resp) {
#if defined(_WIN32)
  static bool wsa = [] {
    WSADATA d;
    return WSAStartup(MAKEWORD(2, 2), &d) == 0;
  }();
  (void)wsa;
#endif
  int64_t deadline = now_ms() + rq->timeout_ms;
  std::string url = rq->url;
  if (url.rfind("http://", 0) != 0) return fail(resp, "the test transport speaks plain http only");
  std::string rest = url.substr(7);
  size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash), path = slash == std::string::npos ? "/" : rest.substr(slash);
  size_t colon = hostport.rfind(':');
  std::string host = hostport.substr(0, colon), port = colon == std::string::npos ? "80" : hostport.substr(colon + 1);
  addrinfo hints{}, *ai = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &ai) != 0 || !ai) return fail(resp, "cannot resolve");
  sock_t fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
  if (fd == INVALID_SOCKET) {
    freeaddrinfo(ai);
    return fail(resp, "socket failed");
  }
  int rc = connect(fd, ai->ai_addr, static_cast<int>(ai->ai_addrlen));
  freeaddrinfo(ai);
  if (rc != 0) {
    ET_CLOSESOCK(fd);
    return fail(resp, "connection refused");
  }
  std::string req = std::string(rq->method) + " " + path + " HTTP/1.1\r\nHost: " + hostport + "\r\n";
  for (size_t i = 0; i < rq->header_count; i++) req += std::string(rq->header_names[i]) + ": " + rq->header_values[i] + "\r\n";
  req += "Content-Length: " + std::to_string(rq->body_len) + "\r\nConnection: close\r\n\r\n";
  req.append(static_cast<const char *>(rq->body), rq->body_len);
  size_t sent = 0;
  while (sent < req.size()) {
    if (!ready(fd, POLLOUT, rq, deadline)) {
      ET_CLOSESOCK(fd);
      return fail(resp, "cancelled or timed out while sending");
    }
    auto n = ::send(fd, req.data() + sent, static_cast<int>(req.size() - sent), 0);
    if (n <= 0) {
      ET_CLOSESOCK(fd);
      return fail(resp, "send failed");
    }
    sent += static_cast<size_t>(n);
  }
  std::string in;
  char buf[16384];
  size_t header_end = std::string::npos, want = std::string::npos;
  for (;;) {
    if (header_end != std::string::npos && want != std::string::npos && in.size() >= header_end + 4 + want) break;
    if (!ready(fd, POLLIN, rq, deadline)) {
      ET_CLOSESOCK(fd);
      return fail(resp, "cancelled or timed out while waiting for the answer");
    }
    auto n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0) {
      ET_CLOSESOCK(fd);
      return fail(resp, "recv failed");
    }
    if (n == 0) break;
    in.append(buf, static_cast<size_t>(n));
    if (header_end == std::string::npos && (header_end = in.find("\r\n\r\n")) != std::string::npos) {
      // Content-Length, if any (the servers of the tests send it; otherwise read to EOF).
      std::string head = in.substr(0, header_end);
      for (char &ch : head) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      size_t cl = head.find("\r\ncontent-length:");
      if (cl != std::string::npos) want = std::strtoul(head.c_str() + cl + 17, nullptr, 10);
    }
  }
  ET_CLOSESOCK(fd);
  if (header_end == std::string::npos || in.compare(0, 5, "HTTP/") != 0) return fail(resp, "no HTTP answer");
  et_http_response_set_status(resp, std::atoi(in.c_str() + in.find(' ') + 1));
  size_t line = in.find("\r\n") + 2;
  while (line < header_end) {
    size_t end = in.find("\r\n", line);
    std::string h = in.substr(line, end - line);
    size_t c = h.find(':');
    if (c != std::string::npos) et_http_response_set_header(resp, h.substr(0, c).c_str(), h.substr(c + 1).c_str());
    line = end + 2;
  }
  std::string body = in.substr(header_end + 4);
  if (want != std::string::npos && body.size() > want) body.resize(want);
  et_http_response_append_body(resp, body.data(), body.size());
}

bool maybe_use_socket_transport(et_client *c) {
  const char *v = std::getenv("ET_TEST_TRANSPORT");
  if (!c || !v || std::strcmp(v, "sockets") != 0) return false;
  return et_client_set_transport(c, &socket_transport, nullptr) == 0;
}

}  // namespace h
