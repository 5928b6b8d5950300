// The queue store: the SQLite file (or memory) that holds events between track() and ingest-api's answer.
// It knows rows, ids and bytes, nothing of batches on the wire, counters or policy: the client decides what
// to append, read, remove and drop; this unit does it in SQLite and says what happened.
#pragma once
#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace et {

struct NewRow {
  std::string_view event_id, body;
};

struct StoredRows {  // rows read back, oldest first
  std::vector<int64_t> ids;
  std::vector<std::string> event_ids, bodies;
  int64_t bytes = 0;
};

class QueueStore {
 public:
  QueueStore() = default;
  ~QueueStore() { close(); }
  QueueStore(const QueueStore &) = delete;
  QueueStore &operator=(const QueueStore &) = delete;

  // Opens (or creates) the queue at path; "" = memory only. A corrupt file is moved aside to
  // <path>.corrupt-<unix ms> and a fresh one opened: *reset then says what happened (else it stays empty).
  bool open(const std::string &path, std::string *err, std::string *reset);
  void close();
  bool on_disk() const { return !path_.empty(); }

  bool get_meta(const char *key, std::string *value);
  bool set_meta(const char *key, const std::string &value);

  // Every row's id and size (bytes of the event's JSON), oldest first: what a previous run left.
  std::vector<std::pair<int64_t, int64_t>> scan();
  // Appends rows in one transaction; ids receives each row's id. false: nothing appended (error()).
  bool append(const std::vector<NewRow> &rows, std::vector<int64_t> *ids);
  // Up to max_rows rows after id `after`, at most max_bytes of event JSON (one row at least).
  bool read_after(int64_t after, int64_t max_rows, int64_t max_bytes, StoredRows *out);
  // Deletes rows lo..hi; the count deleted, or -1 (error()).
  int64_t remove_range(int64_t lo, int64_t hi);
  // Deletes the oldest rows outside keep_lo..keep_hi until at least excess_rows rows and excess_bytes
  // bytes are gone; *rows and *bytes say how many. false: nothing deleted (error()).
  bool drop_oldest(int64_t excess_rows, int64_t excess_bytes, int64_t keep_lo, int64_t keep_hi, int64_t *rows,
                   int64_t *bytes);
  bool remove_all();
  int64_t min_id();  // 0 when empty
  // Returns free pages to the OS: all of them when the queue is empty (converting a file made without
  // incremental vacuum), else when more than a quarter of the file (and over 1 MiB) is free.
  void give_back_space(bool empty);

  std::string error() const;

 private:
  bool open_db(const std::string &file, std::string *err, bool *corrupt);
  bool exec(const char *sql);
  sqlite3_stmt *cached(const char *sql);
  int64_t scalar(const char *sql);

  sqlite3 *db_ = nullptr;
  std::string path_;
  // Prepared once, reused (reset after every use: a statement left open would pin a WAL snapshot).
  std::vector<std::pair<const char *, sqlite3_stmt *>> stmts_;
};

}  // namespace et
