// The transport seam: one HTTP exchange at a time, blocking, on the client's sending thread, cut short
// from another thread by cancel(). The built-in transports (libcurl; WinHTTP on Windows) and an app's
// own (et_client_set_transport) sit behind it alike, so every delivery rule is the same over each.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace et {

struct HttpRequest {
  std::string method = "POST";
  std::string url;
  std::vector<std::pair<std::string, std::string>> headers;
  const std::string *body = nullptr;  // owned by the caller until send returns
  int64_t connect_timeout_ms = 10000;
  int64_t timeout_ms = 30000;  // the whole exchange
  // TLS and proxy settings, for the built-in transports.
  bool verify_tls = true;
  std::string ca_file, ca_path, proxy, user_agent;
};

struct HttpResponse {
  int status = 0;             // 0: no HTTP answer (network failure, timeout, cancelled): `error` says which
  std::string body;           // at most 1 MiB kept
  std::string retry_after;    // header value, trimmed
  std::string content_type;   // header value, trimmed
  std::string error;
};

class Transport {
 public:
  virtual ~Transport() = default;
  // One exchange; returns when answered, failed or cancelled. Never throws.
  virtual void send(const HttpRequest &request, HttpResponse *response) = 0;
  // From another thread: the send in progress (or the next one) ends now with status 0. Idempotent.
  void cancel() {
    cancelled_ = true;
    on_cancel();
  }
  void reset_cancel() { cancelled_ = false; }
  bool cancelled() const { return cancelled_.load(); }

 protected:
  virtual void on_cancel() {}  // wake the blocking call (a built-in transport's own mechanism)

 private:
  std::atomic<bool> cancelled_{false};
};

// The platform's own: WinHTTP on Windows, libcurl elsewhere.
std::unique_ptr<Transport> make_default_transport();

// Response header helpers shared by the transports.
void trim_header_value(std::string *v);
// Keeps the values of the headers the SDK reads (Retry-After, Content-Type) from one header line.
void take_header(const std::string &name, const std::string &value, HttpResponse *out);

}  // namespace et
