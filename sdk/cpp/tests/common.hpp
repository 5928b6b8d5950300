#pragma once
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <string>

#include "eventtracker/eventtracker.h"
#include "harness.hpp"
#include "socket_transport.hpp"

inline et_client *new_client(const std::string &endpoint, const std::string &queue_path,
                             const char *token = h::kToken) {
  char err[512] = {0};
  et_client *c = et_client_new(endpoint.c_str(), token, queue_path.empty() ? nullptr : queue_path.c_str(), err,
                               sizeof err);
  EXPECT_NE(c, nullptr) << err;
  h::maybe_use_socket_transport(c);
  return c;
}

inline et_counters counters(et_client *c) {
  et_counters k{};
  et_client_counters(c, &k);
  return k;
}

// Tracks, waiting while the in-memory hand-off buffer is full (what an app that must not lose may do).
inline void track_retrying(et_client *c, const char *name, const std::string &props, const char *user = nullptr) {
  for (;;) {
    int rc = et_track(c, name, props.c_str(), user);
    if (rc != ET_E_QUEUE_FULL) {
      ASSERT_EQ(rc, ET_OK);
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// The contract's 200 accepting every event of the request (a fake server's usual answer).
inline h::FakeResponse ok_all(const h::FakeRequest &r) {
  h::FakeResponse res;
  res.body = "{\"accepted\":" + std::to_string(r.event_ids().size()) + ",\"rejected\":[]}";
  return res;
}

// An endpoint nothing listens on: connects are refused at once.
inline std::string unreachable() { return "http://127.0.0.1:" + std::to_string(h::free_port()); }

// What a queue file holds on disk: the file, its WAL and its shared-memory index.
inline int64_t queue_bytes_on_disk(const std::string &q) {
  int64_t n = 0;
  for (const char *suffix : {"", "-wal", "-shm"}) {
    struct stat st {};
    if (stat((q + suffix).c_str(), &st) == 0) n += st.st_size;
  }
  return n;
}
