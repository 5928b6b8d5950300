// The libcurl transport (Linux, macOS, and anywhere libcurl is): one easy handle kept across requests
// (its connection is reused), driven by a multi handle so that cancel() wakes a transfer at once.
#include <curl/curl.h>

#include <cstring>
#include <mutex>
#include <string>

#include "transport.hpp"

namespace et {
namespace {

std::once_flag g_curl_once;  // libcurl's process-wide init, once (trivially destructible)

class CurlTransport : public Transport {
 public:
  CurlTransport() {
    std::call_once(g_curl_once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
    multi_ = curl_multi_init();
    easy_ = curl_easy_init();
  }
  ~CurlTransport() override {
    if (easy_) curl_easy_cleanup(easy_);
    if (multi_) curl_multi_cleanup(multi_);
  }

  void send(const HttpRequest &rq, HttpResponse *out) override {
    *out = HttpResponse();
    if (!multi_ || !easy_) {
      out->error = "libcurl initialisation failed";
      return;
    }
    struct curl_slist *hdr = nullptr;
    for (const auto &h : rq.headers) hdr = curl_slist_append(hdr, (h.first + ": " + h.second).c_str());
    hdr = curl_slist_append(hdr, "Expect:");
    CURL *e = easy_;
    curl_easy_setopt(e, CURLOPT_URL, rq.url.c_str());
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, rq.method == "POST" ? nullptr : rq.method.c_str());
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq.body ? rq.body->data() : "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(rq.body ? rq.body->size() : 0));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &CurlTransport::on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &CurlTransport::on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, out);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(rq.connect_timeout_ms));
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(rq.timeout_ms));
    curl_easy_setopt(e, CURLOPT_USERAGENT, rq.user_agent.empty() ? nullptr : rq.user_agent.c_str());
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, rq.verify_tls ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, rq.verify_tls ? 2L : 0L);
    curl_easy_setopt(e, CURLOPT_CAINFO, rq.ca_file.empty() ? nullptr : rq.ca_file.c_str());
    curl_easy_setopt(e, CURLOPT_CAPATH, rq.ca_path.empty() ? nullptr : rq.ca_path.c_str());
    curl_easy_setopt(e, CURLOPT_PROXY, rq.proxy.empty() ? nullptr : rq.proxy.c_str());
    // libcurl's detail of a failure ("SSL certificate problem: certificate has expired"), which its
    // generic text for the code ("SSL peer certificate ... was not OK") leaves out.
    char detail[CURL_ERROR_SIZE];
    detail[0] = '\0';
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, detail);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(e, CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
#if LIBCURL_VERSION_NUM >= 0x075700
    // 7.87.0+: a transfer cut short does not wait for its resolver thread (a stalled getaddrinfo). Older
    // libcurl joins it; the client's close stays bounded anyway (et_client_free leaves the thread behind).
    curl_easy_setopt(e, CURLOPT_QUICK_EXIT, 1L);
#endif
    curl_multi_add_handle(multi_, e);
    bool cut = false;
    for (;;) {
      int running = 0;
      curl_multi_perform(multi_, &running);
      if (!running) break;
      if (cancelled()) {
        cut = true;
        break;
      }
      curl_multi_poll(multi_, nullptr, 0, 50, nullptr);
    }
    CURLcode result = CURLE_OK;
    if (!cut) {
      int left = 0;
      while (CURLMsg *m = curl_multi_info_read(multi_, &left))
        if (m->msg == CURLMSG_DONE) result = m->data.result;
    }
    curl_multi_remove_handle(multi_, e);
    curl_slist_free_all(hdr);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, nullptr);  // `detail` ends with this call
    if (cut) {
      // The connection is in an unknown state: never reuse it.
      curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
      *out = HttpResponse();
      out->error = "cancelled";
      return;
    }
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 0L);
    if (result != CURLE_OK) {
      out->status = 0;
      out->error = curl_easy_strerror(result);
      if (detail[0] != '\0') out->error += std::string(": ") + detail;
      return;
    }
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    out->status = static_cast<int>(status);
  }

 protected:
  void on_cancel() override {
    if (multi_) curl_multi_wakeup(multi_);
  }

 private:
  static size_t on_body(char *p, size_t sz, size_t n, void *ud) {
    auto *r = static_cast<HttpResponse *>(ud);
    if (r->body.size() < (1u << 20)) r->body.append(p, sz * n);
    return sz * n;
  }
  static size_t on_header(char *p, size_t sz, size_t n, void *ud) {
    auto *r = static_cast<HttpResponse *>(ud);
    std::string line(p, sz * n);
    if (line.rfind("HTTP/", 0) == 0) {  // a new response (after a 1xx): forget the previous one's
      r->retry_after.clear();
      r->content_type.clear();
      return sz * n;
    }
    size_t colon = line.find(':');
    if (colon != std::string::npos) take_header(line.substr(0, colon), line.substr(colon + 1), r);
    return sz * n;
  }

  CURLM *multi_ = nullptr;
  CURL *easy_ = nullptr;
};

}  // namespace

std::unique_ptr<Transport> make_default_transport() { return std::make_unique<CurlTransport>(); }

}  // namespace et
