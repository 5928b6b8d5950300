// The EventTracker client: track() validates and hands events to a bounded buffer; one worker thread
// moves them into the SQLite queue and sends batches to ingest-api, applying the response rules.
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "eventtracker/eventtracker.h"
#include "json.hpp"
#include "platform.hpp"
#include "queue_store.hpp"
#include "response.hpp"
#include "transport.hpp"
#include "transport_app.hpp"
#include "util.hpp"

using namespace et;

namespace {

constexpr size_t kMaxPropertiesBytes = 32 * 1024;
constexpr size_t kMaxPropertiesDepth = 32;
constexpr int64_t kRetryAfterCapMs = 5 * 60 * 1000;
constexpr size_t kPersistChunk = 500;
constexpr int64_t kNever = INT64_MAX / 4;

struct Config {
  std::string endpoint, token, ca_file, ca_path, proxy, user_agent = "eventtracker-cpp/1.0.0";
  std::string device_id, session_id;
  int64_t max_batch_events = 100;
  int64_t max_batch_bytes = 512 * 1024;
  int64_t flush_interval_ms = 1000;
  bool gzip = true;
  int64_t gzip_min_bytes = 1024;
  int64_t max_queue_events = 50000;              // a few days of a busy game offline
  int64_t max_queue_bytes = 8ll * 1024 * 1024;    // 8 MiB of event JSON: sized for phones and consoles
  int64_t max_buffer_events = 10000;
  int64_t persist_interval_ms = 50;
  int64_t connect_timeout_ms = 10000;
  int64_t request_timeout_ms = 30000;
  int64_t retry_initial_ms = 1000;
  int64_t retry_max_ms = 300000;
  int64_t pause_ms = 300000;
  bool verify_tls = true;
  bool require_consent = false;  // at creation only: a queue without a recorded choice starts pending
  bool send_context = true;      // the $-prefixed context properties on every event
  std::string app_version, app_build, locale;
  std::string global_properties;  // a JSON object's members (no braces), sent with every event
};

// What et_track reads of the configuration, as one immutable snapshot: taken under the lock by
// copying a pointer, used outside it, replaced whole when an option it depends on changes.
struct TrackContext {
  std::string device_id, session_id;
  std::string props_prefix;  // the members every event's properties start with (context, globals)
};

struct Buffered {
  char event_id[37];
  std::string body;
  uint64_t seq;
};

struct Batch {
  std::vector<int64_t> ids;
  std::vector<std::string> event_ids;
  std::vector<std::string> bodies;
  int64_t bytes = 0;
  std::string wire;  // the request body, built ahead while the previous request is on the wire
  bool wire_gzip = false;
  int64_t wire_built_at = 0;
};

struct StoredReport {
  et_report r;
  std::string event_id, message;
};

bool endpoint_valid(const std::string &e) {
  size_t p = e.find("://");
  if (p == std::string::npos) return false;
  std::string scheme = e.substr(0, p);
  if (scheme != "http" && scheme != "https") return false;
  if (e.size() <= p + 3 || e[p + 3] == '/') return false;
  for (char c : e)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return false;
  return true;
}

bool header_safe(const std::string &s) {
  if (s.empty()) return false;
  for (char c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return false;
  return true;
}

bool parse_i64(const char *v, int64_t lo, int64_t hi, int64_t *out) {
  if (!v || !*v) return false;
  char *end = nullptr;
  errno = 0;
  long long x = std::strtoll(v, &end, 10);
  if (errno || *end || x < lo || x > hi) return false;
  *out = x;
  return true;
}

void write_err(char *err, size_t len, const std::string &msg) {
  if (err && len) {
    std::snprintf(err, len, "%s", msg.c_str());
  }
}

std::string_view trim_json_space(std::string_view v) {
  auto space = [](char ch) { return ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r'; };
  while (!v.empty() && space(v.front())) v.remove_prefix(1);
  while (!v.empty() && space(v.back())) v.remove_suffix(1);
  return v;
}

const char *consent_name(int consent) {
  return consent == ET_CONSENT_GRANTED ? "granted" : consent == ET_CONSENT_REVOKED ? "revoked" : "pending";
}

int consent_from_name(const std::string &v) {
  return v == "granted" ? ET_CONSENT_GRANTED : v == "revoked" ? ET_CONSENT_REVOKED : ET_CONSENT_PENDING;
}

// The player's locale as BCP 47 ("de-DE") from the environment, "" when unset or "C"/"POSIX".
std::string default_locale() {
  const char *names[] = {"LC_ALL", "LC_MESSAGES", "LANG"};
  for (const char *n : names) {
    const char *v = std::getenv(n);
    if (!v || !*v) continue;
    std::string l(v);
    l = l.substr(0, l.find_first_of(".@"));
    if (l == "C" || l == "POSIX" || l.empty()) return "";
    std::replace(l.begin(), l.end(), '_', '-');
    return text_valid(l, false) && header_safe(l) ? l : "";
  }
  return "";
}

// The members every event's properties start with: the reserved context ($-prefixed, PostHog's
// convention) unless send_context is 0, then the app's global properties.
std::shared_ptr<const TrackContext> make_track_context(const Config &k) {
  auto t = std::make_shared<TrackContext>();
  t->device_id = k.device_id;
  t->session_id = k.session_id;
  std::string &p = t->props_prefix;
  auto member = [&](const char *key, const std::string &value) {
    if (value.empty()) return;
    if (!p.empty()) p += ',';
    json_append_string(p, key);
    p += ':';
    json_append_string(p, value);
  };
  if (k.send_context) {
    member("$sdk", "eventtracker-cpp");
    member("$sdk_version", et_version());
    member("$platform", platform_name());
    member("$os", os_name());
    member("$os_version", os_version());
    member("$app_version", k.app_version);
    member("$app_build", k.app_build);
    member("$locale", k.locale);
  }
  if (!k.global_properties.empty()) {
    if (!p.empty()) p += ',';
    p += k.global_properties;
  }
  return t;
}

// One option by name (et_client_set, et_client_new_with_options): 0 = applied, 1 = unknown, 2 = bad value.
int apply_option(Config &k, const std::string &o, const std::string &v, bool creating, bool *resume) {
  int64_t x = 0;
  auto num = [&](int64_t lo, int64_t hi, int64_t *field) {
    if (!parse_i64(v.c_str(), lo, hi, &x)) return false;
    *field = x;
    return true;
  };
  auto flag = [&](bool *field) {
    if (v != "0" && v != "1") return false;
    *field = v == "1";
    return true;
  };
  bool ok;
  if (o == "token") ok = header_safe(v) && (k.token = v, *resume = true);
  else if (o == "endpoint") ok = endpoint_valid(v) && (k.endpoint = v, *resume = true);
  else if (o == "max_batch_events") ok = num(1, 1000, &k.max_batch_events);
  else if (o == "max_batch_bytes") ok = num(4096, 1 << 30, &k.max_batch_bytes);
  else if (o == "flush_interval_ms") ok = num(0, 86400000, &k.flush_interval_ms);
  else if (o == "gzip") ok = flag(&k.gzip);
  else if (o == "gzip_min_bytes") ok = num(0, 1 << 30, &k.gzip_min_bytes);
  else if (o == "max_queue_events") ok = num(1, INT64_MAX / 4, &k.max_queue_events);
  else if (o == "max_queue_bytes") ok = num(1024, INT64_MAX / 4, &k.max_queue_bytes);
  else if (o == "max_buffer_events") ok = num(1, 100000000, &k.max_buffer_events);
  else if (o == "persist_interval_ms") ok = num(0, 60000, &k.persist_interval_ms);
  else if (o == "connect_timeout_ms") ok = num(1, 3600000, &k.connect_timeout_ms);
  else if (o == "request_timeout_ms") ok = num(1, 3600000, &k.request_timeout_ms);
  else if (o == "retry_initial_ms") ok = num(0, 3600000, &k.retry_initial_ms);
  else if (o == "retry_max_ms") ok = num(0, 3600000, &k.retry_max_ms);
  else if (o == "pause_ms") ok = num(0, 86400000, &k.pause_ms);
  else if (o == "verify_tls") ok = flag(&k.verify_tls);
  else if (o == "ca_file") ok = (k.ca_file = v, true);
  else if (o == "ca_path") ok = (k.ca_path = v, true);
  else if (o == "proxy") ok = (k.proxy = v, true);
  else if (o == "user_agent") ok = header_safe(v) && (k.user_agent = v, true);
  else if (o == "device_id") ok = text_valid(v, false) && (k.device_id = v, true);
  else if (o == "session_id") ok = text_valid(v, false) && (k.session_id = v, true);
  else if (o == "require_consent") ok = creating && flag(&k.require_consent);
  else if (o == "send_context") ok = flag(&k.send_context);
  else if (o == "app_version") ok = text_valid(v, true) && (k.app_version = v, true);
  else if (o == "app_build") ok = text_valid(v, true) && (k.app_build = v, true);
  else if (o == "locale") ok = text_valid(v, true) && (k.locale = v, true);
  else if (o == "global_properties") {
    std::string_view g = trim_json_space(v);
    ok = g.empty() || (g.front() == '{' && g.size() <= kMaxPropertiesBytes / 2 &&
                       json_parse(g, kMaxPropertiesDepth, nullptr, nullptr));
    if (ok) k.global_properties = g.empty() ? "" : std::string(trim_json_space(g.substr(1, g.size() - 2)));
  } else return 1;
  return ok ? 0 : 2;
}


}  // namespace

struct et_client {
  // ---- shared state (mu) ----
  std::mutex mu;
  std::condition_variable cv;        // wakes the worker
  std::condition_variable done_cv;   // wakes flush()/close() waiters
  Config cfg;
  uint64_t cfg_version = 1;
  bool resume_requested = false;
  std::vector<Buffered> buffer;
  std::vector<Buffered> spare;  // an empty vector with capacity, swapped in for the buffer (under mu)
  std::shared_ptr<const TrackContext> track_ctx;  // replaced, never changed in place (under mu)
  int consent = ET_CONSENT_GRANTED;                // under mu; persisted in the queue's meta table
  bool purge_requested = false;                    // under mu: delete everything queued
  uint64_t purge_seq = 0;                          // under mu: the last event a purge resolves
  std::atomic<uint64_t> request_ticket{0}, request_done{0};  // see serve_requests
  std::atomic<bool> consent_granted{true};
  uint64_t next_seq = 1;
  uint64_t resolved_seq = 0;
  int flush_waiters = 0;
  bool worker_done = false;
  bool orphaned = false;  // et_client_free gave up waiting: the worker frees the client when it ends
  std::atomic<bool> closing{false};
  std::atomic<int64_t> close_deadline{kNever};
  std::atomic<bool> abort{false};

  std::atomic<uint64_t> n_tracked{0}, n_refused{0}, n_sent{0}, n_rejected{0}, n_dropped{0}, n_retries{0},
      n_requests{0}, n_db{0}, n_buffered{0};
  std::atomic<int> paused_flag{0};
  int queue_resets = 0;

  std::recursive_mutex cb_mu;  // recursive: a callback may set the callback again
  et_report_fn cb = nullptr;
  void *cb_user = nullptr;
  bool cb_ever_set = false;
  std::vector<StoredReport> early;

  // ---- worker-only state ----
  std::string queue_path;
  QueueStore store;
  FileLock queue_lock;
  // The transport (worker-owned; an app's replaces it between requests) and the thread that runs its
  // blocking send while the worker goes on persisting, preparing the next batch and watching deadlines.
  std::unique_ptr<Transport> transport;
  std::unique_ptr<Transport> next_transport;  // under mu: set by et_client_set_transport
  bool transport_changed = false;             // under mu
  std::thread sender;
  std::mutex smu;
  std::condition_variable scv;
  const HttpRequest *s_request = nullptr;  // under smu: the exchange to run
  HttpResponse *s_response = nullptr;
  bool s_done = false, s_quit = false;
  Config wcfg;  // the worker's copy, refreshed before each batch
  uint64_t wcfg_version = 0;
  std::deque<std::pair<int64_t, uint64_t>> session_rows;  // (row id, seq) still in the queue
  std::deque<Batch> batches;                              // taken from the queue, not yet answered
  int64_t taken_id = 0;                                   // rows up to this id are in `batches`
  int64_t unsent_count = 0;                               // rows after taken_id
  int64_t unsent_since = kNever;                          // steady ms since which rows wait
  int64_t db_bytes = 0;
  int64_t attempts = 0;
  int64_t next_send_at = 0;
  bool paused = false;
  int64_t persist_retry_at = 0;
  const Batch *inflight = nullptr;
  int64_t report_time_ms = 0;  // when set, the time the next report carries
  std::string resp_body, retry_after;
  std::thread worker;
  std::thread::id worker_id;

  // ------------------------------------------------------------------------------------------------
  void report(int kind, int status, int index, int count, int64_t retry_ms, const std::string &event_id,
              const std::string &message) {
    et_report r{};
    r.kind = kind;
    r.status = status;
    r.index = index;
    r.count = count;
    r.retry_after_ms = retry_ms;
    r.event_id = event_id.empty() ? nullptr : event_id.c_str();
    r.message = message.c_str();
    r.time_ms = report_time_ms ? report_time_ms : steady_ms();
    report_time_ms = 0;
    std::lock_guard<std::recursive_mutex> g(cb_mu);
    if (cb) {
      cb(cb_user, &r);
    } else if (!cb_ever_set && kind == ET_REPORT_QUEUE_RESET && early.size() < 16) {
      early.push_back(StoredReport{r, event_id, message});
    }
  }

  // ---- the queue ---------------------------------------------------------------------------------
  bool init_queue(const std::string &path, std::string *err) {
    queue_path = path;
    if (!path.empty()) {
      std::string lock = path + ".lock";
      bool locked = false;
      if (!queue_lock.acquire(lock, err, &locked)) {
        if (locked) *err = "queue " + path + " is locked: another client (this or another process) has it open";
        return false;
      }
    }
    std::string reset;
    if (!store.open(path, err, &reset)) return false;
    if (!reset.empty()) {
      queue_resets = 1;
      report(ET_REPORT_QUEUE_RESET, 0, -1, 0, 0, "", reset);
    }
    // device_id: generated once, kept with the queue.
    std::string device;
    if (!store.get_meta("device_id", &device) || device.empty()) {
      device = uuid_v4();
      store.set_meta("device_id", device);
    }
    if (cfg.device_id.empty()) cfg.device_id = device;  // an option given at creation wins
    std::string recorded;
    if (store.get_meta("consent", &recorded)) {
      consent = consent_from_name(recorded);
    } else {
      consent = cfg.require_consent ? ET_CONSENT_PENDING : ET_CONSENT_GRANTED;
      if (cfg.require_consent) store.set_meta("consent", "pending");  // the next run waits too, whatever its options
    }
    consent_granted = consent == ET_CONSENT_GRANTED;
    // What a previous run left: counts as tracked, due at once.
    for (const auto &row : store.scan()) {
      session_rows.emplace_back(row.first, next_seq++);
      db_bytes += row.second;
    }
    n_db = session_rows.size();
    unsent_count = static_cast<int64_t>(session_rows.size());
    if (unsent_count) unsent_since = steady_ms() - 24 * 3600 * 1000ll;
    return true;
  }

  // Moves the buffer into the queue; then applies the cap.
  void persist(bool force) {
    std::vector<Buffered> items;
    int64_t tracked_at;
    {
      std::lock_guard<std::mutex> g(mu);
      if (buffer.empty()) return;
      if (!force && steady_ms() < persist_retry_at) return;
      items.swap(buffer);
      buffer.swap(spare);  // the capacity of the last hand-off, so et_track does not reallocate
      tracked_at = oldest_buffered_at;
    }
    size_t done = 0;
    std::string failure;
    std::vector<NewRow> chunk;
    std::vector<int64_t> ids;
    while (done < items.size()) {
      size_t end = std::min(items.size(), done + kPersistChunk);
      chunk.clear();
      int64_t bytes = 0;
      for (size_t i = done; i < end; i++) {
        chunk.push_back(NewRow{std::string_view(items[i].event_id, 36), items[i].body});
        bytes += static_cast<int64_t>(items[i].body.size());
      }
      if (!store.append(chunk, &ids)) {
        failure = store.error();
        break;
      }
      for (size_t i = done; i < end; i++) session_rows.emplace_back(ids[i - done], items[i].seq);
      int64_t n = static_cast<int64_t>(end - done);
      n_db += static_cast<uint64_t>(n);
      db_bytes += bytes;
      if (unsent_count == 0) unsent_since = tracked_at;  // flush_interval counts from track()
      unsent_count += n;
      done = end;
      enforce_cap();  // after every chunk, so the file never holds much more than the cap
      n_buffered -= static_cast<uint64_t>(n);  // last: buffered == 0 means written and capped
    }
    if (done < items.size()) {
      // Keep what could not be written (disk full, I/O error) in memory, in order; try again in 1 s.
      std::lock_guard<std::mutex> g(mu);
      buffer.insert(buffer.begin(), std::make_move_iterator(items.begin() + static_cast<long>(done)),
                    std::make_move_iterator(items.end()));
      oldest_buffered_at = tracked_at;
      persist_retry_at = steady_ms() + 1000;
    }
    if (!failure.empty()) report(ET_REPORT_ERROR, 0, -1, 0, 0, "", "writing the queue failed: " + failure);
    enforce_cap();
    items.clear();
    std::lock_guard<std::mutex> g(mu);
    if (spare.capacity() < items.capacity()) spare.swap(items);
  }

  // Past max_queue_events / max_queue_bytes the oldest rows go (never the batch on the wire).
  void enforce_cap() {
    int64_t excess_n = static_cast<int64_t>(n_db.load()) - wcfg.max_queue_events;
    int64_t excess_b = db_bytes - wcfg.max_queue_bytes;
    if (excess_n <= 0 && excess_b <= 0) return;
    int64_t lo = inflight ? inflight->ids.front() : 0, hi = inflight ? inflight->ids.back() : -1;
    int64_t n = 0, b = 0;
    if (!store.drop_oldest(excess_n, excess_b, lo, hi, &n, &b)) {
      report(ET_REPORT_ERROR, 0, -1, 0, 0, "", "dropping past the queue cap failed: " + store.error());
      return;
    }
    if (n == 0) return;
    n_db -= static_cast<uint64_t>(n);
    db_bytes -= b;
    n_dropped += static_cast<uint64_t>(n);
    // Batches not on the wire are formed again from what is left.
    if (inflight) {
      while (batches.size() > 1) batches.pop_back();
      taken_id = inflight->ids.back();
    } else {
      batches.clear();
      taken_id = 0;
    }
    // Every row left is on the wire or after it: counted, not scanned (the file may hold 100k rows).
    unsent_count = std::max<int64_t>(
        0, static_cast<int64_t>(n_db.load()) - (inflight ? static_cast<int64_t>(inflight->ids.size()) : 0));
    if (unsent_count == 0) unsent_since = kNever;
    report(ET_REPORT_DROPPED, 0, -1, static_cast<int>(n), 0, "",
           "queue cap reached: dropped the " + std::to_string(n) + " oldest events");
    update_resolved();
  }

  void update_resolved() {
    int64_t min_id = n_db.load() ? store.min_id() : INT64_MAX;
    uint64_t r = 0;
    bool changed = false;
    while (!session_rows.empty() && session_rows.front().first < min_id) {
      r = session_rows.front().second;
      session_rows.pop_front();
      changed = true;
    }
    if (changed) {
      std::lock_guard<std::mutex> g(mu);
      if (r > resolved_seq) resolved_seq = r;
      done_cv.notify_all();
    }
  }

  void remove_batch(const Batch &b) {
    int64_t n = store.remove_range(b.ids.front(), b.ids.back());
    if (n < 0) {
      report(ET_REPORT_ERROR, 0, -1, 0, 0, "", "deleting sent events failed: " + store.error());
      return;
    }
    n_db -= static_cast<uint64_t>(n);
    db_bytes -= b.bytes;
    give_back_space();
    update_resolved();
  }

  void give_back_space() { store.give_back_space(n_db.load() == 0); }

  bool form_batch() {
    if (unsent_count <= 0) return false;
    StoredRows rows;
    store.read_after(taken_id, wcfg.max_batch_events, wcfg.max_batch_bytes, &rows);
    Batch b;
    b.ids = std::move(rows.ids);
    b.event_ids = std::move(rows.event_ids);
    b.bodies = std::move(rows.bodies);
    b.bytes = rows.bytes;
    if (b.ids.empty()) {
      unsent_count = 0;
      unsent_since = kNever;
      return false;
    }
    taken_id = b.ids.back();
    unsent_count -= static_cast<int64_t>(b.ids.size());
    if (unsent_count <= 0) {  // a count that ran low finds its rows again with the next write
      unsent_count = 0;
      unsent_since = kNever;
    }
    batches.push_back(std::move(b));
    return true;
  }

  // ---- HTTP ------------------------------------------------------------------------------------
  static bool gzip(const std::string &in, std::string *out) {
    z_stream zs{};
    if (deflateInit2(&zs, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) return false;
    out->resize(deflateBound(&zs, in.size()) + 32);
    zs.next_in = reinterpret_cast<Bytef *>(const_cast<char *>(in.data()));
    zs.avail_in = static_cast<uInt>(in.size());
    zs.next_out = reinterpret_cast<Bytef *>(&(*out)[0]);
    zs.avail_out = static_cast<uInt>(out->size());
    int rc = deflate(&zs, Z_FINISH);
    out->resize(zs.total_out);
    deflateEnd(&zs);
    return rc == Z_STREAM_END;
  }

  // Sends the front batch; returns false when aborted by close.
  // The JSON body with sent_at = now, gzipped above gzip_min_bytes.
  void build_wire(Batch &b) {
    std::string body;
    body.reserve(static_cast<size_t>(b.bytes) + 64 + b.bodies.size());
    body += "{\"sent_at\":\"";
    body += format_utc_ms(unix_ms());
    body += "\",\"events\":[";
    for (size_t i = 0; i < b.bodies.size(); i++) {
      if (i) body.push_back(',');
      body += b.bodies[i];
    }
    body += "]}";
    std::string zipped;
    b.wire_gzip = wcfg.gzip && static_cast<int64_t>(body.size()) > wcfg.gzip_min_bytes && gzip(body, &zipped);
    b.wire = b.wire_gzip ? std::move(zipped) : std::move(body);
    b.wire_built_at = steady_ms();
  }

  bool send_front() {
    Batch &b = batches.front();
    // A body built ahead is used only if fresh (sent_at must be the time of this attempt, within 200 ms).
    if (b.wire.empty() || steady_ms() - b.wire_built_at > 200) build_wire(b);
    bool zip = b.wire_gzip;
    const std::string &wire = b.wire;
    bool prefetched = false;

    std::string url = wcfg.endpoint;
    while (!url.empty() && url.back() == '/') url.pop_back();
    url += "/v1/events";
    HttpRequest rq;
    rq.url = url;
    rq.headers.emplace_back("Content-Type", "application/json");
    rq.headers.emplace_back("Authorization", "Bearer " + wcfg.token);
    if (zip) rq.headers.emplace_back("Content-Encoding", "gzip");
    rq.body = &wire;
    rq.connect_timeout_ms = wcfg.connect_timeout_ms;
    rq.timeout_ms = wcfg.request_timeout_ms;
    rq.verify_tls = wcfg.verify_tls;
    rq.ca_file = wcfg.ca_file;
    rq.ca_path = wcfg.ca_path;
    rq.proxy = wcfg.proxy;
    rq.user_agent = wcfg.user_agent;
    HttpResponse resp;

    report_time_ms = steady_ms();
    report(ET_REPORT_REQUEST, 0, -1, static_cast<int>(b.ids.size()), 0, "", "sending a batch");
    n_requests++;
    inflight = &b;
    start_send(&rq, &resp);
    bool aborted = false, cancelled = false;
    for (;;) {
      int wait = 50;
      if (closing.load())
        wait = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(50, close_deadline.load() - steady_ms())));
      if (wait_send(wait)) break;
      persist_if_due();
      if (!prefetched && batches.size() == 1 && unsent_count >= wcfg.max_batch_events && !closing.load()) {
        // Overlap: the next full batch is read and encoded while this request is answered.
        prefetched = true;
        if (form_batch()) build_wire(batches.back());
      }
      if (abort.load() || (closing.load() && steady_ms() >= close_deadline.load())) {
        aborted = true;
      } else if (requests_pending()) {  // a purge (or revoked consent) cuts the exchange; its batch is deleted
        cancelled = true;
      } else {
        continue;
      }
      // The transport ends promptly once cancelled; if it does not (an old libcurl joining a stalled
      // resolver, an app's transport that ignores the flag), et_client_free leaves this thread behind.
      transport->cancel();
      wait_send(-1);
      break;
    }
    inflight = nullptr;
    b.wire.clear();  // a retry builds it again, with a new sent_at
    b.wire.shrink_to_fit();
    if (aborted) return false;  // cut by close: the batch stays queued for the next run
    if (cancelled) return true;
    resp_body = std::move(resp.body);
    retry_after = std::move(resp.retry_after);
    handle_response(resp.status, resp.error);
    return true;
  }

  // ---- the sending thread ------------------------------------------------------------------------
  void start_send(const HttpRequest *rq, HttpResponse *resp) {
    {
      std::lock_guard<std::mutex> g(mu);
      if (transport_changed) {
        transport = next_transport ? std::move(next_transport) : make_default_transport();
        transport_changed = false;
      }
    }
    transport->reset_cancel();
    std::lock_guard<std::mutex> g(smu);
    s_request = rq;
    s_response = resp;
    s_done = false;
    scv.notify_all();
  }

  // True once the exchange is over; waits at most wait_ms (< 0: until it is).
  bool wait_send(int wait_ms) {
    std::unique_lock<std::mutex> lk(smu);
    if (wait_ms < 0) {
      scv.wait(lk, [&] { return s_done; });
      return true;
    }
    return scv.wait_for(lk, std::chrono::milliseconds(wait_ms), [&] { return s_done; });
  }

  void run_sender() {
    std::unique_lock<std::mutex> lk(smu);
    for (;;) {
      scv.wait(lk, [&] { return s_quit || s_request != nullptr; });
      if (!s_request) return;  // s_quit
      const HttpRequest *rq = s_request;
      HttpResponse *resp = s_response;
      lk.unlock();
      transport->send(*rq, resp);
      lk.lock();
      s_request = nullptr;
      s_done = true;
      scv.notify_all();
    }
  }

  void stop_sender() {
    {
      std::lock_guard<std::mutex> g(smu);
      s_quit = true;
      scv.notify_all();
    }
    if (sender.joinable()) sender.join();
  }

  void handle_response(int status, const std::string &neterr) {
    Batch b = std::move(batches.front());
    batches.pop_front();
    int n = static_cast<int>(b.ids.size());
    Decision d = classify_response(status, resp_body, b.ids.size(), neterr);
    switch (d.verdict) {
      case Verdict::Accepted: {
        for (const RejectedEvent &r : d.rejected)
          report(ET_REPORT_REJECTED, status, r.index, 1, 0, b.event_ids[static_cast<size_t>(r.index)], r.error);
        int k = static_cast<int>(d.rejected.size());
        n_rejected += static_cast<uint64_t>(k);
        n_sent += static_cast<uint64_t>(n - k);
        attempts = 0;
        report(ET_REPORT_SENT, 200, -1, n - k, 0, "", d.message);
        remove_batch(b);  // last: flush() waiters wake on it and must see the counters and reports
        return;
      }
      case Verdict::RejectedAll: {
        std::vector<bool> named(static_cast<size_t>(n), false);
        for (const RejectedEvent &r : d.rejected) {
          named[static_cast<size_t>(r.index)] = true;
          report(ET_REPORT_REJECTED, status, r.index, 1, 0, b.event_ids[static_cast<size_t>(r.index)], r.error);
        }
        for (int i = 0; i < n; i++)
          if (!named[static_cast<size_t>(i)])
            report(ET_REPORT_REJECTED, status, i, 1, 0, b.event_ids[static_cast<size_t>(i)], d.message);
        n_rejected += static_cast<uint64_t>(n);
        attempts = 0;
        remove_batch(b);
        return;
      }
      case Verdict::TooLarge:
        attempts = 0;
        if (n == 1) {
          n_dropped++;
          report(ET_REPORT_TOO_LARGE, 413, 0, 1, 0, b.event_ids[0], "a single event was answered 413: dropped");
          remove_batch(b);
          return;
        }
        split_front(std::move(b));
        return;
      case Verdict::Retry:
        batches.push_front(std::move(b));
        schedule_retry(status, n, d.message);
        return;
      case Verdict::Pause:
        batches.push_front(std::move(b));
        paused = true;
        paused_flag = 1;
        next_send_at = steady_ms() + wcfg.pause_ms;
        report(ET_REPORT_PAUSED, status, -1, n, wcfg.pause_ms, "", d.message);
        return;
    }
  }

  // A batch answered 413 by ingest-api goes back as two halves, the first half first.
  void split_front(Batch b) {
    size_t n = b.ids.size(), half = n / 2;
    Batch a, c;
    for (size_t i = 0; i < n; i++) {
      Batch &t = i < half ? a : c;
      t.ids.push_back(b.ids[i]);
      t.event_ids.push_back(std::move(b.event_ids[i]));
      t.bytes += static_cast<int64_t>(b.bodies[i].size());
      t.bodies.push_back(std::move(b.bodies[i]));
    }
    batches.push_front(std::move(c));
    batches.push_front(std::move(a));
  }

  // The wait before the next attempt: the server's Retry-After (capped), else full-jitter doubling backoff.
  void schedule_retry(int status, int n, const std::string &message) {
    int64_t now = steady_ms();
    attempts++;
    n_retries++;
    int64_t delay = -1;
    if (status != 0 && !retry_after.empty()) {
      bool digits = std::all_of(retry_after.begin(), retry_after.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
      if (digits) {
        delay = retry_after.size() > 7 ? kRetryAfterCapMs : std::stoll(retry_after) * 1000;
      } else {
        int64_t t = 0;
        if (parse_http_date(retry_after, &t)) delay = std::max<int64_t>(0, t * 1000 - unix_ms());
      }
      if (delay > kRetryAfterCapMs) delay = kRetryAfterCapMs;
    }
    if (delay < 0) {
      int64_t cap = wcfg.retry_initial_ms;
      for (int64_t i = 1; i < attempts && cap < wcfg.retry_max_ms; i++) cap *= 2;
      cap = std::min(cap, wcfg.retry_max_ms);
      delay = cap > 0 ? static_cast<int64_t>(random_u64() % static_cast<uint64_t>(cap + 1)) : 0;
    }
    next_send_at = now + delay;
    report_time_ms = now;
    report(ET_REPORT_RETRY, status, -1, n, delay, "", message);
  }

  // ---- the worker ------------------------------------------------------------------------------
  bool requests_pending() const { return request_ticket.load() != request_done.load(); }

  // What the API asked of the worker, which alone owns the queue file: record the consent choice,
  // delete everything queued. The callers wait for request_done to reach their ticket.
  void serve_requests() {
    if (!requests_pending()) return;
    uint64_t ticket, purge_upto;
    int consent_now;
    bool purge;
    {
      std::lock_guard<std::mutex> g(mu);
      ticket = request_ticket.load();
      consent_now = consent;
      purge = purge_requested;
      purge_requested = false;
      purge_upto = purge_seq;
    }
    if (!store.set_meta("consent", consent_name(consent_now)))
      report(ET_REPORT_ERROR, 0, -1, 0, 0, "", "recording consent failed: " + store.error());
    if (purge) {
      int64_t n = static_cast<int64_t>(n_db.load());
      if (store.remove_all()) {
        n_db = 0;
        db_bytes = 0;
        batches.clear();
        taken_id = 0;
        unsent_count = 0;
        unsent_since = kNever;
        give_back_space();
        update_resolved();
        report(ET_REPORT_PURGED, 0, -1, static_cast<int>(std::min<int64_t>(n, INT32_MAX)), 0, "",
               "deleted everything queued");
      } else {
        report(ET_REPORT_ERROR, 0, -1, 0, 0, "", "purging the queue failed: " + store.error());
      }
    }
    std::lock_guard<std::mutex> g(mu);
    if (purge && purge_upto > resolved_seq) resolved_seq = purge_upto;
    request_done = ticket;
    done_cv.notify_all();
  }

  void refresh_config() {
    serve_requests();
    std::lock_guard<std::mutex> g(mu);
    if (wcfg_version != cfg_version) {
      wcfg = cfg;
      wcfg_version = cfg_version;
    }
    if (resume_requested) {
      resume_requested = false;
      paused = false;
      paused_flag = 0;
      attempts = 0;
      next_send_at = 0;
    }
  }

  void persist_if_due() {
    bool due;
    {
      std::lock_guard<std::mutex> g(mu);
      due = !buffer.empty() &&
            (closing.load() || flush_waiters > 0 || static_cast<int64_t>(buffer.size()) >= 100 ||
             steady_ms() - oldest_buffered_at >= wcfg.persist_interval_ms);
    }
    if (due) persist(closing.load());
  }

  int64_t oldest_buffered_at = 0;  // under mu: when the buffer last went from empty to non-empty

  void run() {
    for (;;) {
      refresh_config();
      persist_if_due();
      int64_t now = steady_ms();
      bool is_closing = closing.load();
      if (is_closing && (abort.load() || now >= close_deadline.load())) break;
      bool have = !batches.empty() || unsent_count > 0;
      bool can_send = now >= next_send_at && consent_granted.load();
      int waiters;
      {
        std::lock_guard<std::mutex> g(mu);
        waiters = flush_waiters;
      }
      bool due = !batches.empty() || unsent_count >= wcfg.max_batch_events ||
                 (unsent_count > 0 && (is_closing || waiters > 0 || now - unsent_since >= wcfg.flush_interval_ms));
      if (is_closing && (!have || !can_send)) break;
      if (have && due && can_send) {
        if (batches.empty() && !form_batch()) continue;
        if (!send_front()) break;
        continue;
      }
      std::unique_lock<std::mutex> lk(mu);
      if (resume_requested || wcfg_version != cfg_version || requests_pending()) continue;
      if (closing.load() != is_closing) continue;
      if (!buffer.empty() && (flush_waiters > 0 || is_closing || static_cast<int64_t>(buffer.size()) >= 100)) continue;
      if (flush_waiters > 0 && unsent_count > 0 && can_send) continue;
      int64_t wake = kNever;
      if (!buffer.empty()) wake = std::min(wake, oldest_buffered_at + wcfg.persist_interval_ms);
      if (have && consent_granted.load()) {
        int64_t send_due = batches.empty() && unsent_count < wcfg.max_batch_events && flush_waiters == 0
                               ? unsent_since + wcfg.flush_interval_ms
                               : now;
        wake = std::min(wake, std::max(next_send_at, send_due));
      }
      if (is_closing) wake = std::min(wake, close_deadline.load());
      if (wake >= kNever)
        cv.wait(lk);
      else if (wake > now)
        cv.wait_for(lk, std::chrono::milliseconds(wake - now));
    }
    serve_requests();  // a purge asked for while closing is done before anything else is written
    persist(true);  // whatever is still in memory goes to disk, even past the deadline (local I/O only)
    serve_requests();
    stop_sender();
    bool orphan;
    {
      std::lock_guard<std::mutex> g(mu);
      worker_done = true;
      orphan = orphaned;
      done_cv.notify_all();
    }
    if (orphan) {  // et_client_free returned without us (see there): the last one out frees the client
      release();
      delete this;
    }
  }

  bool on_worker_thread() const { return std::this_thread::get_id() == worker_id; }

  // Nothing more to do: the worker looks at its flags at least every 50 ms while an exchange runs.
  void wake_transport() { cv.notify_all(); }

  // Everything but the worker thread itself.
  void release() {
    transport.reset();
    store.close();
    queue_lock.release();
  }
};

// ---- the C API ---------------------------------------------------------------------------------

extern "C" {

ET_API const char *et_version(void) { return "1.1.0"; }

ET_API et_client *et_client_new(const char *endpoint, const char *token, const char *queue_path, char *err,
                                size_t err_len) {
  return et_client_new_with_options(endpoint, token, queue_path, nullptr, err, err_len);
}

ET_API et_client *et_client_new_with_options(const char *endpoint, const char *token, const char *queue_path,
                                             const char *const *options, char *err, size_t err_len) {
  try {
    if (!endpoint || !endpoint_valid(endpoint)) {
      write_err(err, err_len, "bad endpoint URL: expected http://host[:port] or https://host[:port]");
      return nullptr;
    }
    if (!token || !header_safe(token)) {
      write_err(err, err_len, "empty token (or one with control characters)");
      return nullptr;
    }
    std::unique_ptr<et_client> c(new et_client());
    c->cfg.endpoint = endpoint;
    c->cfg.token = token;
    c->cfg.session_id = uuid_v4();
    c->cfg.locale = default_locale();
    for (size_t i = 0; options && options[i]; i += 2) {
      bool resume = false;
      if (!options[i + 1] || apply_option(c->cfg, options[i], options[i + 1], true, &resume) != 0) {
        write_err(err, err_len, std::string("bad option ") + options[i] + (options[i + 1] ? "" : " (no value)"));
        return nullptr;
      }
    }
    std::string e;
    if (!c->init_queue(queue_path ? queue_path : "", &e)) {
      write_err(err, err_len, e);
      c->release();
      return nullptr;
    }
    c->track_ctx = make_track_context(c->cfg);
    c->wcfg = c->cfg;
    c->wcfg_version = c->cfg_version;
    c->transport = make_default_transport();
    et_client *raw = c.release();
    raw->sender = std::thread([raw] { raw->run_sender(); });
    raw->worker = std::thread([raw] { raw->run(); });
    raw->worker_id = raw->worker.get_id();
    return raw;
  } catch (const std::exception &ex) {
    write_err(err, err_len, std::string("out of resources: ") + ex.what());
    return nullptr;
  }
}

ET_API int et_client_set(et_client *c, const char *option, const char *value) {
  if (!c || !option || !value) return 1;
  try {
    std::lock_guard<std::mutex> g(c->mu);
    bool resume = false;
    int rc = apply_option(c->cfg, option, value, false, &resume);
    if (rc != 0) return rc;
    c->cfg_version++;
    c->track_ctx = make_track_context(c->cfg);
    if (resume) c->resume_requested = true;
    c->cv.notify_one();
    return 0;
  } catch (...) {
    return 3;
  }
}

ET_API int et_track_event(et_client *c, const et_event *ev, char *event_id_out) {
  if (!c || !ev) return ET_E_ARGUMENT;
  try {
    auto refuse = [&](int code) {
      c->n_refused++;
      return code;
    };
    if (!ev->name || !text_valid(ev->name, false)) return refuse(ET_E_NAME);
    std::string_view props;
    if (ev->properties_json) {
      props = trim_json_space(ev->properties_json);
      if (props.empty() || props.front() != '{' || props.size() > kMaxPropertiesBytes ||
          !json_parse(props, kMaxPropertiesDepth, nullptr, nullptr))
        return refuse(ET_E_PROPERTIES);
    }
    auto opt_text = [](const char *s) { return !s || !*s || text_valid(s, true); };
    if (!opt_text(ev->user_id)) return refuse(ET_E_USER_ID);
    if (!opt_text(ev->device_id)) return refuse(ET_E_DEVICE_ID);
    if (!opt_text(ev->session_id)) return refuse(ET_E_SESSION_ID);
    if (ev->timestamp && !timestamp_valid(ev->timestamp, nullptr)) return refuse(ET_E_TIMESTAMP);
    if (ev->event_id && !uuid_valid(ev->event_id)) return refuse(ET_E_EVENT_ID);
    std::shared_ptr<const TrackContext> ctx;
    {
      std::lock_guard<std::mutex> g(c->mu);
      if (c->consent == ET_CONSENT_REVOKED) return refuse(ET_E_NO_CONSENT);
      ctx = c->track_ctx;
    }
    if (c->closing.load()) return refuse(ET_E_CLOSED);
    // The merged properties: context and global members first, the event's own last (the last of a
    // key given twice wins, at the server too), within the server's limit.
    std::string_view inner = props.empty() ? std::string_view() : trim_json_space(props.substr(1, props.size() - 2));
    size_t merged = ctx->props_prefix.empty() && inner.empty() ? 0 : ctx->props_prefix.size() + inner.size() + 3;
    if (merged > kMaxPropertiesBytes) return refuse(ET_E_PROPERTIES);

    Buffered b;
    if (ev->event_id) {
      std::memcpy(b.event_id, ev->event_id, 37);
    } else {
      uuid_v7(b.event_id);
    }
    char ts[25];
    if (!ev->timestamp) format_utc_ms(unix_ms(), ts);
    std::string_view dev = ev->device_id && *ev->device_id ? std::string_view(ev->device_id) : ctx->device_id;
    std::string_view ses = ev->session_id && *ev->session_id ? std::string_view(ev->session_id) : ctx->session_id;
    std::string_view name = ev->name, user = ev->user_id ? ev->user_id : "";
    std::string_view when = ev->timestamp ? std::string_view(ev->timestamp) : std::string_view(ts, 24);
    std::string &s = b.body;
    s.reserve(128 + name.size() + when.size() + user.size() + merged + dev.size() + ses.size() + 16);
    s += "{\"event_id\":\"";
    s.append(b.event_id, 36);
    s += "\",\"name\":";
    json_append_string(s, name);
    s += ",\"timestamp\":\"";
    s += when;
    s += '"';
    if (!user.empty()) {
      s += ",\"user_id\":";
      json_append_string(s, user);
    }
    if (merged) {
      s += ",\"properties\":{";
      s += ctx->props_prefix;
      if (!ctx->props_prefix.empty() && !inner.empty()) s += ',';
      s += inner;
      s += '}';
    }
    s += ",\"device_id\":";
    json_append_string(s, dev);
    s += ",\"session_id\":";
    json_append_string(s, ses);
    s += '}';
    {
      std::unique_lock<std::mutex> lk(c->mu);
      if (static_cast<int64_t>(c->buffer.size()) >= c->cfg.max_buffer_events) {
        lk.unlock();
        return refuse(ET_E_QUEUE_FULL);
      }
      if (c->consent == ET_CONSENT_REVOKED) {
        lk.unlock();
        return refuse(ET_E_NO_CONSENT);
      }
      if (event_id_out) std::memcpy(event_id_out, b.event_id, 37);
      b.seq = c->next_seq++;
      bool was_empty = c->buffer.empty();
      if (was_empty) c->oldest_buffered_at = steady_ms();
      c->buffer.push_back(std::move(b));
      c->n_buffered++;
      c->n_tracked++;
      if (was_empty || c->buffer.size() == 100) c->cv.notify_one();
    }
    return ET_OK;
  } catch (...) {
    c->n_refused++;
    return ET_E_QUEUE_FULL;
  }
}

ET_API int et_track(et_client *c, const char *name, const char *properties_json, const char *user_id) {
  et_event e{};
  e.name = name;
  e.properties_json = properties_json;
  e.user_id = user_id;
  return et_track_event(c, &e, nullptr);
}

// Asks the worker to record the consent choice and (purge) delete everything queued; waits until done,
// except on the worker's own thread (a report callback), where it is done once the callback returns.
static int ask_worker(et_client *c, int consent, bool purge) {
  std::unique_lock<std::mutex> lk(c->mu);
  if (consent >= 0) {
    c->consent = consent;
    c->consent_granted = consent == ET_CONSENT_GRANTED;
  }
  if (purge) {
    uint64_t n = c->buffer.size();
    c->buffer.clear();
    c->n_buffered -= n;
    c->purge_requested = true;
    c->purge_seq = c->next_seq - 1;
  }
  uint64_t ticket = ++c->request_ticket;
  c->cv.notify_all();
  lk.unlock();
  c->wake_transport();
  if (c->on_worker_thread()) return 0;
  lk.lock();
  c->done_cv.wait(lk, [&] { return c->request_done.load() >= ticket || c->worker_done; });
  return c->request_done.load() >= ticket ? 0 : ET_E_CLOSED;
}

ET_API int et_client_set_transport(et_client *c, et_transport_fn fn, void *user) {
  if (!c) return ET_E_ARGUMENT;
  try {
    std::unique_ptr<et::Transport> t = fn ? et::make_app_transport(fn, user) : nullptr;
    std::lock_guard<std::mutex> g(c->mu);
    c->next_transport = std::move(t);
    c->transport_changed = true;
    return 0;
  } catch (...) {
    return ET_E_QUEUE_FULL;
  }
}

ET_API int et_client_set_consent(et_client *c, int consent) {
  if (!c) return ET_E_ARGUMENT;
  if (consent != ET_CONSENT_GRANTED && consent != ET_CONSENT_PENDING && consent != ET_CONSENT_REVOKED)
    return ET_E_ARGUMENT;
  return ask_worker(c, consent, consent == ET_CONSENT_REVOKED);
}

ET_API int et_client_consent(et_client *c) {
  if (!c) return -1;
  std::lock_guard<std::mutex> g(c->mu);
  return c->consent;
}

ET_API int et_client_purge(et_client *c) {
  if (!c) return ET_E_ARGUMENT;
  return ask_worker(c, -1, true);
}

ET_API int et_flush(et_client *c, int timeout_ms) {
  if (!c) return 1;
  if (c->on_worker_thread()) return 1;  // from a report callback: the thread that would answer is ours
  std::unique_lock<std::mutex> lk(c->mu);
  uint64_t target = c->next_seq - 1;
  if (c->resolved_seq >= target) return 0;
  c->flush_waiters++;
  c->cv.notify_one();
  bool ok = c->done_cv.wait_for(lk, std::chrono::milliseconds(std::max(0, timeout_ms)),
                                [&] { return c->resolved_seq >= target || c->worker_done; });
  c->flush_waiters--;
  return ok && c->resolved_seq >= target ? 0 : 1;
}

ET_API int et_client_counters(et_client *c, et_counters *out) {
  if (!c || !out) return 1;
  std::memset(out, 0, sizeof *out);
  out->tracked = c->n_tracked;
  out->refused = c->n_refused;
  out->buffered = c->n_buffered;
  out->queued = c->n_db + c->n_buffered;
  out->sent = c->n_sent;
  out->rejected = c->n_rejected;
  out->dropped = c->n_dropped;
  out->retries = c->n_retries;
  out->requests = c->n_requests;
  out->paused = c->paused_flag;
  out->queue_resets = c->queue_resets;
  return 0;
}

ET_API void et_client_set_report_callback(et_client *c, et_report_fn fn, void *user) {
  if (!c) return;
  std::vector<StoredReport> early;
  {
    std::lock_guard<std::recursive_mutex> g(c->cb_mu);
    c->cb = fn;
    c->cb_user = user;
    if (fn && !c->cb_ever_set) {
      c->cb_ever_set = true;
      early.swap(c->early);
      for (auto &s : early) {
        s.r.event_id = s.event_id.empty() ? nullptr : s.event_id.c_str();
        s.r.message = s.message.c_str();
        fn(user, &s.r);
      }
    }
  }
}

// Grace after the deadline for the worker to finish a cut transfer and write memory to disk.
constexpr int64_t kCloseGraceMs = 250;

ET_API void et_client_free(et_client *c, int timeout_ms) {
  if (!c) return;
  int64_t deadline = steady_ms() + std::max(0, timeout_ms);
  bool self = c->on_worker_thread();  // from a report callback: the worker finishes and frees the client
  {
    std::lock_guard<std::mutex> g(c->mu);
    c->close_deadline = self ? steady_ms() : deadline;
    c->closing = true;
    c->cv.notify_all();
  }
  if (self) {
    c->abort = true;
    std::lock_guard<std::mutex> g(c->mu);
    c->orphaned = true;
    c->worker.detach();
    return;
  }
  c->wake_transport();
  auto wait_done = [&](int64_t until) {
    std::unique_lock<std::mutex> lk(c->mu);
    c->done_cv.wait_for(lk, std::chrono::milliseconds(std::max<int64_t>(0, until - steady_ms())),
                        [&] { return c->worker_done; });
    return c->worker_done;
  };
  wait_done(deadline);
  c->abort = true;
  c->wake_transport();
  if (!wait_done(deadline + kCloseGraceMs)) {
    // Still inside the network stack (e.g. an old libcurl joining a stalled resolver): return on time,
    // and let the worker free the client when it gets out. The queue file stays locked until then.
    std::lock_guard<std::mutex> g(c->mu);
    if (!c->worker_done) {
      c->orphaned = true;
      c->worker.detach();
      return;
    }
  }
  c->worker.join();
  c->release();
  delete c;
}

}  // extern "C"
