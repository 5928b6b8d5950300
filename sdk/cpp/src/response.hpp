// Delivery policy: what ingest-api's answer to one batch means for the events in it. A pure function of
// the status, the body and the batch size, so that every rule is unit-tested apart from any I/O.
//
// Only ingest-api's own answers remove an event (docs/contract.md, "Responses"): a 200 counts only when
// its body is the contract's success JSON and consistent with the batch; a 400 or 413 drops events only
// when its body is the contract's error JSON with one of its codes. Anything else on the path (a captive
// portal's page, a proxy's 400/413, a redirect, a truncated body) is a failed attempt, retried later.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace et {

enum class Verdict {
  Accepted,     // 200 from ingest-api: the batch leaves the queue; `rejected` lists the events it refused
  RejectedAll,  // 400 from ingest-api: every event is rejected (`rejected` gives messages it named)
  TooLarge,     // 413 from ingest-api: split the batch (or drop a single event)
  Retry,        // a failed attempt: keep the batch, back off (Retry-After honoured)
  Pause,        // credentials or endpoint wrong (401, 403, 404, 405, 415): keep everything, wait pause_ms
};

struct RejectedEvent {
  int index;
  std::string error;
};

struct Decision {
  Verdict verdict = Verdict::Retry;
  std::vector<RejectedEvent> rejected;  // in range and unique; Accepted and RejectedAll only
  std::string message;                  // for the report: the status and what the body said or lacked
};

// status 0: the request failed on the network (`network_error` says how).
Decision classify_response(int status, std::string_view body, size_t batch_size, const std::string &network_error);

}  // namespace et
