// An app's own transport behind the seam: the C ABI of et_client_set_transport.
#include <memory>
#include <vector>

#include "eventtracker/eventtracker.h"
#include "transport.hpp"
#include "transport_app.hpp"

struct et_http_response {
  et::HttpResponse *r;
};

namespace et {
namespace {

class AppTransport : public Transport {
 public:
  AppTransport(et_transport_fn fn, void *user) : fn_(fn), user_(user) {}

  void send(const HttpRequest &rq, HttpResponse *out) override {
    *out = HttpResponse();
    std::vector<const char *> names, values;
    for (const auto &h : rq.headers) {
      names.push_back(h.first.c_str());
      values.push_back(h.second.c_str());
    }
    if (!rq.user_agent.empty()) {
      names.push_back("User-Agent");
      values.push_back(rq.user_agent.c_str());
    }
    et_http_request c{};
    c.method = rq.method.c_str();
    c.url = rq.url.c_str();
    c.header_names = names.data();
    c.header_values = values.data();
    c.header_count = names.size();
    c.body = rq.body ? rq.body->data() : "";
    c.body_len = rq.body ? rq.body->size() : 0;
    c.connect_timeout_ms = static_cast<int>(rq.connect_timeout_ms);
    c.timeout_ms = static_cast<int>(rq.timeout_ms);
    c.internal = this;
    et_http_response resp{out};
    try {
      fn_(user_, &c, &resp);
    } catch (...) {
      *out = HttpResponse();
      out->error = "the app's transport threw";
    }
    if (cancelled()) {
      *out = HttpResponse();
      out->error = "cancelled";
    } else if (out->status == 0 && out->error.empty()) {
      out->error = "the app's transport gave no HTTP status";
    }
  }

 private:
  et_transport_fn fn_;
  void *user_;
};

}  // namespace

std::unique_ptr<Transport> make_app_transport(et_transport_fn fn, void *user) {
  return std::make_unique<AppTransport>(fn, user);
}

}  // namespace et

extern "C" {

ET_API int et_http_request_cancelled(const et_http_request *rq) {
  return rq && rq->internal && static_cast<const et::Transport *>(rq->internal)->cancelled() ? 1 : 0;
}

ET_API void et_http_response_set_status(et_http_response *r, int status) {
  if (r && status >= 0 && status <= 999) r->r->status = status;
}

ET_API void et_http_response_set_header(et_http_response *r, const char *name, const char *value) {
  if (r && name && value) et::take_header(name, value, r->r);
}

ET_API void et_http_response_append_body(et_http_response *r, const void *data, size_t len) {
  if (!r || !data) return;
  std::string &b = r->r->body;
  if (b.size() < (1u << 20)) b.append(static_cast<const char *>(data), std::min<size_t>(len, (1u << 20) - b.size()));
}

ET_API void et_http_response_set_error(et_http_response *r, const char *message) {
  if (r && message) r->r->error = message;
}

}  // extern "C"
