// EventTracker C++ API: a header-only RAII wrapper over the C ABI (eventtracker.h), so the shared
// library exports no C++ symbols. Nothing here throws except the constructor (a client that cannot
// be created) and std::bad_alloc.
#pragma once

#include <chrono>
#include <climits>
#include <functional>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "eventtracker/eventtracker.h"

namespace eventtracker {

using Counters = et_counters;
using Report = et_report;

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Every field of an event; empty views mean "not given" (defaults as in et_event).
struct Event {
  std::string_view name = {};
  std::string_view properties_json = {};
  std::string_view user_id = {};
  std::string_view device_id = {};
  std::string_view session_id = {};
  std::string_view timestamp = {};
  std::string_view event_id = {};
};

class Client {
 public:
  static constexpr std::chrono::milliseconds kDefaultCloseTimeout{2000};

  using Option = std::pair<std::string_view, std::string_view>;

  // queue_path empty: memory only. options: applied before the client starts (see eventtracker.h, e.g.
  // {{"require_consent", "1"}, {"app_version", "1.4.2"}}). Throws eventtracker::Error (bad URL, empty
  // token, locked queue, bad option).
  Client(std::string_view endpoint, std::string_view token, std::string_view queue_path = {},
         std::initializer_list<Option> options = {}) {
    char err[512] = {0};
    std::string q(queue_path);
    std::vector<std::string> kv;
    for (const Option &o : options) {
      kv.emplace_back(o.first);
      kv.emplace_back(o.second);
    }
    std::vector<const char *> argv;
    for (const std::string &x : kv) argv.push_back(x.c_str());
    argv.push_back(nullptr);
    c_ = et_client_new_with_options(std::string(endpoint).c_str(), std::string(token).c_str(),
                                    q.empty() ? nullptr : q.c_str(), argv.data(), err, sizeof err);
    if (!c_) throw Error(err);
  }
  ~Client() { close(kDefaultCloseTimeout); }
  Client(const Client &) = delete;
  Client &operator=(const Client &) = delete;
  Client(Client &&o) noexcept : c_(std::exchange(o.c_, nullptr)), on_report_(std::move(o.on_report_)) {}
  Client &operator=(Client &&o) noexcept {
    if (this != &o) {
      close(kDefaultCloseTimeout);
      c_ = std::exchange(o.c_, nullptr);
      on_report_ = std::move(o.on_report_);
    }
    return *this;
  }

  // 0 = queued, else an ET_E_* code. Never blocks on I/O, never throws.
  int track(std::string_view name, std::string_view properties_json = {}, std::string_view user_id = {}) noexcept {
    Event e;
    e.name = name;
    e.properties_json = properties_json;
    e.user_id = user_id;
    return track(e);
  }
  int track(const Event &e, std::string *event_id_out = nullptr) noexcept {
    if (!c_) return ET_E_CLOSED;
    try {
      // The C ABI takes NUL-terminated strings: the fields are copied, NUL after each, into one buffer
      // per thread that keeps its capacity, so a call allocates nothing here once warm.
      static thread_local std::string scratch;
      const std::string_view f[7] = {e.name, e.properties_json, e.user_id, e.device_id, e.session_id,
                                     e.timestamp, e.event_id};
      size_t at[7];
      scratch.clear();
      for (int i = 0; i < 7; i++) {
        at[i] = scratch.size();
        scratch.append(f[i].data(), f[i].size());
        scratch.push_back('\0');
      }
      auto field = [&](int i) { return f[i].empty() ? nullptr : scratch.data() + at[i]; };
      et_event ev{};
      ev.name = scratch.data() + at[0];
      ev.properties_json = field(1);
      ev.user_id = field(2);
      ev.device_id = field(3);
      ev.session_id = field(4);
      ev.timestamp = field(5);
      ev.event_id = field(6);
      char id[37];
      int rc = et_track_event(c_, &ev, id);
      if (rc == ET_OK && event_id_out) event_id_out->assign(id);
      return rc;
    } catch (...) {
      return ET_E_QUEUE_FULL;
    }
  }

  // Option by name (see eventtracker.h); true when accepted.
  bool set(std::string_view option, std::string_view value) noexcept {
    try {
      return c_ && et_client_set(c_, std::string(option).c_str(), std::string(value).c_str()) == 0;
    } catch (...) {
      return false;
    }
  }

  // true when everything tracked so far was answered within the timeout.
  bool flush(std::chrono::milliseconds timeout) noexcept { return c_ && et_flush(c_, clamp_ms(timeout)) == 0; }

  // The player's choice (ET_CONSENT_GRANTED, _PENDING, _REVOKED), recorded in the queue file.
  bool set_consent(int consent) noexcept { return c_ && et_client_set_consent(c_, consent) == 0; }
  int consent() const noexcept { return c_ ? et_client_consent(c_) : -1; }
  // Deletes every event queued on the device.
  bool purge() noexcept { return c_ && et_client_purge(c_) == 0; }

  Counters counters() const noexcept {
    Counters k{};
    if (c_) et_client_counters(c_, &k);
    return k;
  }

  // The callback runs on the client's thread.
  void on_report(std::function<void(const Report &)> fn) {
    if (!c_) return;
    if (!fn) {
      et_client_set_report_callback(c_, nullptr, nullptr);
      retire_callback();
      return;
    }
    auto holder = std::make_unique<std::function<void(const Report &)>>(std::move(fn));
    et_client_set_report_callback(c_, &Client::trampoline, holder.get());
    retire_callback();
    on_report_ = std::move(holder);
  }

  // Stops within the timeout; unsent events stay in the queue file. Idempotent.
  void close(std::chrono::milliseconds timeout = kDefaultCloseTimeout) noexcept {
    if (c_) et_client_free(std::exchange(c_, nullptr), clamp_ms(timeout));
    retire_callback();
  }

  et_client *native() const noexcept { return c_; }

 private:
  // The callback being replaced may be the one running on this thread (a callback that closes its
  // client or sets another callback): it must outlive this call, so it is leaked, once.
  void retire_callback() noexcept {
    if (on_report_ && in_callback_ == on_report_.get())
      (void)on_report_.release();
    else
      on_report_.reset();
  }
  static int clamp_ms(std::chrono::milliseconds t) noexcept {
    return t.count() <= 0 ? 0 : t.count() >= INT_MAX ? INT_MAX : static_cast<int>(t.count());
  }
  static void trampoline(void *user, const et_report *r) {
    auto *fn = static_cast<std::function<void(const Report &)> *>(user);
    auto *outer = std::exchange(in_callback_, fn);
    try {
      (*fn)(*r);
    } catch (...) {
    }
    in_callback_ = outer;
  }
  static inline thread_local const std::function<void(const Report &)> *in_callback_ = nullptr;
  et_client *c_ = nullptr;
  std::unique_ptr<std::function<void(const Report &)>> on_report_;
};

}  // namespace eventtracker
