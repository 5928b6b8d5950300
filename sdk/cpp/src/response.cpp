#include "response.hpp"

#include <cmath>

#include "json.hpp"

namespace et {
namespace {

// Codes of a 400 that mean "this batch will never be accepted" (docs/contract.md, "Error codes").
constexpr std::string_view kBatchErrors[] = {"invalid_json", "invalid_gzip", "invalid_batch", "empty_batch",
                                             "invalid_events"};

bool as_index(const JsonValue *v, size_t n, size_t *out) {
  if (!v || v->type != JsonValue::Number || !std::isfinite(v->num) || v->num < 0 ||
      v->num >= static_cast<double>(n) || std::floor(v->num) != v->num)
    return false;
  *out = static_cast<size_t>(v->num);
  return true;
}

// The `rejected` list of a 200 or an invalid_events 400. strict: every entry must be well formed.
bool read_rejected(const JsonValue &root, size_t n, bool strict, std::vector<RejectedEvent> *out, std::string *why) {
  const JsonValue *list = root.get("rejected");
  if (!list || list->type != JsonValue::Array) {
    *why = "no `rejected` array";
    return !strict;
  }
  std::vector<bool> seen(n, false);
  for (const JsonValue &e : list->arr) {
    size_t i = 0;
    const JsonValue *err = e.type == JsonValue::Object ? e.get("error") : nullptr;
    if (e.type != JsonValue::Object || !as_index(e.get("index"), n, &i) || seen[i] ||
        (strict && (!err || err->type != JsonValue::String))) {
      *why = "a `rejected` entry is not an index of this batch";
      if (strict) return false;
      continue;
    }
    seen[i] = true;
    out->push_back(RejectedEvent{static_cast<int>(i), err && err->type == JsonValue::String ? err->str : "rejected"});
  }
  return true;
}

std::string describe(int status, const JsonValue *root) {
  std::string m = "HTTP " + std::to_string(status);
  if (!root) return m;
  if (const JsonValue *e = root->get("error"); e && e->type == JsonValue::String) m += " " + e->str;
  if (const JsonValue *e = root->get("message"); e && e->type == JsonValue::String) m += ": " + e->str;
  return m;
}

Decision retry(std::string message) {
  Decision d;
  d.verdict = Verdict::Retry;
  d.message = std::move(message);
  return d;
}

}  // namespace

Decision classify_response(int status, std::string_view body, size_t n, const std::string &network_error) {
  if (status == 0) return retry("network error: " + network_error);
  JsonValue v;
  bool object = !body.empty() && json_parse(body, 64, &v, nullptr) && v.type == JsonValue::Object;
  const JsonValue *root = object ? &v : nullptr;
  const JsonValue *code = root ? root->get("error") : nullptr;
  std::string_view code_str = code && code->type == JsonValue::String ? std::string_view(code->str) : "";

  if (status == 200) {
    if (!root) return retry("HTTP 200 whose body is not ingest-api's answer (not a JSON object): kept, retried");
    Decision d;
    size_t accepted = 0;
    std::string why;
    const JsonValue *acc = root->get("accepted");
    if (!as_index(acc, n + 1, &accepted)) return retry("HTTP 200 without a valid `accepted` count: kept, retried");
    if (!read_rejected(*root, n, true, &d.rejected, &why)) return retry("HTTP 200 with " + why + ": kept, retried");
    if (accepted + d.rejected.size() != n)
      return retry("HTTP 200 whose accepted (" + std::to_string(accepted) + ") and rejected (" +
                   std::to_string(d.rejected.size()) + ") do not add up to the batch (" + std::to_string(n) +
                   "): kept, retried");
    d.verdict = Verdict::Accepted;
    d.message = "batch accepted";
    return d;
  }
  if (status == 400) {
    bool ours = false;
    for (std::string_view c : kBatchErrors) ours = ours || c == code_str;
    if (!ours) return retry(describe(status, root) + " is not ingest-api's answer: kept, retried");
    Decision d;
    std::string why;
    read_rejected(*root, n, false, &d.rejected, &why);
    d.verdict = Verdict::RejectedAll;
    d.message = describe(status, root);
    return d;
  }
  if (status == 413) {
    if (code_str != "payload_too_large") return retry(describe(status, root) + " is not ingest-api's answer: kept, retried");
    Decision d;
    d.verdict = Verdict::TooLarge;
    d.message = describe(status, root);
    return d;
  }
  if (status == 408 || status == 429 || (status >= 500 && status <= 599)) return retry(describe(status, root));
  if (status == 401 || status == 403 || status == 404 || status == 405 || status == 415) {
    Decision d;
    d.verdict = Verdict::Pause;
    d.message = "sending paused: " + describe(status, root);
    return d;
  }
  // A redirect (to a login page), another 2xx, an unknown 4xx: nothing ingest-api answers; kept, retried.
  return retry(describe(status, root) + " is not an answer of ingest-api: kept, retried");
}

}  // namespace et
