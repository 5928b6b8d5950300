// EventTracker C++ API: a header-only RAII wrapper over the C ABI (eventtracker.h), so the shared
// library exports no C++ symbols. Nothing here throws except the constructor (a client that cannot
// be created) and std::bad_alloc.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

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

  // queue_path empty: memory only. Throws eventtracker::Error (bad URL, empty token, locked queue).
  Client(std::string_view endpoint, std::string_view token, std::string_view queue_path = {}) {
    char err[512] = {0};
    std::string q(queue_path);
    c_ = et_client_new(std::string(endpoint).c_str(), std::string(token).c_str(), q.empty() ? nullptr : q.c_str(),
                       err, sizeof err);
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
      std::string f[7] = {std::string(e.name),       std::string(e.properties_json), std::string(e.user_id),
                          std::string(e.device_id),  std::string(e.session_id),      std::string(e.timestamp),
                          std::string(e.event_id)};
      et_event ev{};
      ev.name = f[0].c_str();
      ev.properties_json = f[1].empty() ? nullptr : f[1].c_str();
      ev.user_id = f[2].empty() ? nullptr : f[2].c_str();
      ev.device_id = f[3].empty() ? nullptr : f[3].c_str();
      ev.session_id = f[4].empty() ? nullptr : f[4].c_str();
      ev.timestamp = f[5].empty() ? nullptr : f[5].c_str();
      ev.event_id = f[6].empty() ? nullptr : f[6].c_str();
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
  bool flush(std::chrono::milliseconds timeout) noexcept {
    return c_ && et_flush(c_, static_cast<int>(timeout.count())) == 0;
  }

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
      on_report_.reset();
      return;
    }
    auto holder = std::make_unique<std::function<void(const Report &)>>(std::move(fn));
    et_client_set_report_callback(c_, &Client::trampoline, holder.get());
    on_report_ = std::move(holder);
  }

  // Stops within the timeout; unsent events stay in the queue file. Idempotent.
  void close(std::chrono::milliseconds timeout = kDefaultCloseTimeout) noexcept {
    if (c_) et_client_free(std::exchange(c_, nullptr), static_cast<int>(timeout.count()));
    on_report_.reset();
  }

  et_client *native() const noexcept { return c_; }

 private:
  static void trampoline(void *user, const et_report *r) {
    try {
      (*static_cast<std::function<void(const Report &)> *>(user))(*r);
    } catch (...) {
    }
  }
  et_client *c_ = nullptr;
  std::unique_ptr<std::function<void(const Report &)>> on_report_;
};

}  // namespace eventtracker
