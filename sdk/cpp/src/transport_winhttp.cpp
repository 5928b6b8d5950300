// The WinHTTP transport (Windows): the system's own HTTP stack, so its proxy settings (WPAD/PAC and the
// configured proxy) and the certificate store apply, and there is no libcurl to ship. Synchronous calls
// on the client's sending thread; cancel() closes the request handle, which makes the blocking call
// return at once (ERROR_WINHTTP_OPERATION_CANCELLED).
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#include <winhttp.h>

#include <mutex>
#include <string>

#include "platform.hpp"
#include "transport.hpp"

namespace et {
namespace {

std::string winhttp_error(const char *what) {
  DWORD e = GetLastError();
  const char *name = e == ERROR_WINHTTP_TIMEOUT                  ? "timed out"
                     : e == ERROR_WINHTTP_CANNOT_CONNECT         ? "cannot connect"
                     : e == ERROR_WINHTTP_NAME_NOT_RESOLVED      ? "name not resolved"
                     : e == ERROR_WINHTTP_CONNECTION_ERROR       ? "connection error"
                     : e == ERROR_WINHTTP_OPERATION_CANCELLED    ? "cancelled"
                     : e == ERROR_WINHTTP_SECURE_FAILURE         ? "TLS failure"
                     : e == ERROR_WINHTTP_INVALID_SERVER_RESPONSE ? "invalid server response"
                                                                 : "failed";
  return std::string("WinHTTP ") + what + ": " + name + " (error " + std::to_string(e) + ")";
}

class WinHttpTransport : public Transport {
 public:
  ~WinHttpTransport() override {
    if (connect_) WinHttpCloseHandle(connect_);
    if (session_) WinHttpCloseHandle(session_);
  }

  void send(const HttpRequest &rq, HttpResponse *out) override {
    *out = HttpResponse();
    URL_COMPONENTS u{};
    u.dwStructSize = sizeof u;
    u.dwHostNameLength = static_cast<DWORD>(-1);
    u.dwUrlPathLength = static_cast<DWORD>(-1);
    u.dwExtraInfoLength = static_cast<DWORD>(-1);
    std::wstring url = utf8_to_wide(rq.url);
    if (!WinHttpCrackUrl(url.c_str(), 0, 0, &u)) {
      out->error = winhttp_error("bad URL");
      return;
    }
    std::wstring host(u.lpszHostName, u.dwHostNameLength);
    std::wstring path(u.lpszUrlPath, u.dwUrlPathLength);
    if (u.dwExtraInfoLength) path.append(u.lpszExtraInfo, u.dwExtraInfoLength);
    bool https = u.nScheme == INTERNET_SCHEME_HTTPS;
    if (!open_session(rq, host, u.nPort, out)) return;

    DWORD flags = https ? WINHTTP_FLAG_SECURE : 0;
    HINTERNET req = WinHttpOpenRequest(connect_, utf8_to_wide(rq.method).c_str(), path.c_str(), nullptr, WINHTTP_NO_REFERER,
                                       WINHTTP_DEFAULT_ACCEPT_TYPES, flags);
    if (!req) {
      out->error = winhttp_error("open request");
      return;
    }
    // Redirects are answers too (a login page is not ingest-api): never follow them. No cookies.
    DWORD off = WINHTTP_DISABLE_REDIRECTS | WINHTTP_DISABLE_COOKIES;
    WinHttpSetOption(req, WINHTTP_OPTION_DISABLE_FEATURE, &off, sizeof off);
    if (https && !rq.verify_tls) {
      DWORD sec = SECURITY_FLAG_IGNORE_UNKNOWN_CA | SECURITY_FLAG_IGNORE_CERT_DATE_INVALID |
                  SECURITY_FLAG_IGNORE_CERT_CN_INVALID | SECURITY_FLAG_IGNORE_CERT_WRONG_USAGE;
      WinHttpSetOption(req, WINHTTP_OPTION_SECURITY_FLAGS, &sec, sizeof sec);
    }
    int connect_ms = static_cast<int>(rq.connect_timeout_ms), all_ms = static_cast<int>(rq.timeout_ms);
    WinHttpSetTimeouts(req, connect_ms, connect_ms, all_ms, all_ms);
    // The wait for the answer's headers has a timeout of its own (90 s by default), which WinHttpSetTimeouts
    // does not set: without this a server that never answers holds the request for 90 s, not timeout_ms.
    DWORD response_ms = static_cast<DWORD>(all_ms);
    WinHttpSetOption(req, WINHTTP_OPTION_RECEIVE_RESPONSE_TIMEOUT, &response_ms, sizeof response_ms);
    {
      std::lock_guard<std::mutex> g(mu_);
      if (cancelled()) {
        WinHttpCloseHandle(req);
        out->error = "cancelled";
        return;
      }
      current_ = req;
    }
    std::wstring headers;
    for (const auto &h : rq.headers) headers += utf8_to_wide(h.first) + L": " + utf8_to_wide(h.second) + L"\r\n";
    DWORD len = rq.body ? static_cast<DWORD>(rq.body->size()) : 0;
    LPVOID body = rq.body && len ? const_cast<char *>(rq.body->data()) : WINHTTP_NO_REQUEST_DATA;
    bool ok = WinHttpSendRequest(req, headers.c_str(), static_cast<DWORD>(-1L), body, len, len, 0) &&
              WinHttpReceiveResponse(req, nullptr);
    if (!ok) {
      out->error = winhttp_error("request");
    } else {
      DWORD status = 0, size = sizeof status;
      WinHttpQueryHeaders(req, WINHTTP_QUERY_STATUS_CODE | WINHTTP_QUERY_FLAG_NUMBER, WINHTTP_HEADER_NAME_BY_INDEX,
                          &status, &size, WINHTTP_NO_HEADER_INDEX);
      take(req, L"Retry-After", "Retry-After", out);
      take(req, L"Content-Type", "Content-Type", out);
      for (;;) {
        DWORD avail = 0;
        if (!WinHttpQueryDataAvailable(req, &avail)) {
          ok = false;
          out->error = winhttp_error("read");
          break;
        }
        if (avail == 0) break;
        char buf[16384];
        DWORD got = 0;
        if (!WinHttpReadData(req, buf, avail < sizeof buf ? avail : static_cast<DWORD>(sizeof buf), &got)) {
          ok = false;
          out->error = winhttp_error("read");
          break;
        }
        if (got == 0) break;
        if (out->body.size() < (1u << 20)) out->body.append(buf, got);
      }
      if (ok) out->status = static_cast<int>(status);
    }
    bool was_cancelled;
    {
      std::lock_guard<std::mutex> g(mu_);
      was_cancelled = current_ == nullptr;  // cancel() closed it
      if (!was_cancelled) WinHttpCloseHandle(req);
      current_ = nullptr;
    }
    if (was_cancelled || cancelled()) {
      *out = HttpResponse();
      out->error = "cancelled";
    } else if (!ok) {
      out->status = 0;
    }
  }

 protected:
  void on_cancel() override {
    std::lock_guard<std::mutex> g(mu_);
    if (current_) WinHttpCloseHandle(current_);
    current_ = nullptr;
  }

 private:
  // One session (and one connection handle per host, reused) for as long as the settings stay the same.
  bool open_session(const HttpRequest &rq, const std::wstring &host, INTERNET_PORT port, HttpResponse *out) {
    std::string key = rq.proxy + "\n" + rq.user_agent;
    if (session_ && key != session_key_) {
      if (connect_) WinHttpCloseHandle(connect_);
      WinHttpCloseHandle(session_);
      session_ = connect_ = nullptr;
    }
    if (!session_) {
      std::wstring ua = utf8_to_wide(rq.user_agent.empty() ? std::string("eventtracker-cpp") : rq.user_agent);
      if (!rq.proxy.empty()) {
        session_ = WinHttpOpen(ua.c_str(), WINHTTP_ACCESS_TYPE_NAMED_PROXY, utf8_to_wide(rq.proxy).c_str(),
                               WINHTTP_NO_PROXY_BYPASS, 0);
      } else {
        // The system's proxy settings (Windows 8.1+), else the WinHTTP default (netsh winhttp).
        session_ = WinHttpOpen(ua.c_str(), 4 /* WINHTTP_ACCESS_TYPE_AUTOMATIC_PROXY */, WINHTTP_NO_PROXY_NAME,
                               WINHTTP_NO_PROXY_BYPASS, 0);
        if (!session_)
          session_ = WinHttpOpen(ua.c_str(), WINHTTP_ACCESS_TYPE_DEFAULT_PROXY, WINHTTP_NO_PROXY_NAME,
                                 WINHTTP_NO_PROXY_BYPASS, 0);
      }
      if (!session_) {
        out->error = winhttp_error("open session");
        return false;
      }
      session_key_ = key;
    }
    if (connect_ && (host != host_ || port != port_)) {
      WinHttpCloseHandle(connect_);
      connect_ = nullptr;
    }
    if (!connect_) {
      connect_ = WinHttpConnect(session_, host.c_str(), port, 0);
      if (!connect_) {
        out->error = winhttp_error("connect");
        return false;
      }
      host_ = host;
      port_ = port;
    }
    return true;
  }

  static void take(HINTERNET req, const wchar_t *wname, const char *name, HttpResponse *out) {
    wchar_t buf[512];
    DWORD size = sizeof buf;
    if (WinHttpQueryHeaders(req, WINHTTP_QUERY_CUSTOM, wname, buf, &size, WINHTTP_NO_HEADER_INDEX))
      take_header(name, wide_to_utf8(buf, size / sizeof(wchar_t)), out);
  }

  HINTERNET session_ = nullptr, connect_ = nullptr;
  std::string session_key_;
  std::wstring host_;
  INTERNET_PORT port_ = 0;
  std::mutex mu_;
  HINTERNET current_ = nullptr;  // the request in progress, for cancel()
};

}  // namespace

std::unique_ptr<Transport> make_default_transport() { return std::make_unique<WinHttpTransport>(); }

}  // namespace et
