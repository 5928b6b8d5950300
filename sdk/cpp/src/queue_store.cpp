#include "queue_store.hpp"

#include "platform.hpp"
#include "util.hpp"

namespace et {
namespace {
constexpr const char *kInsert = "INSERT INTO events(event_id, body) VALUES(?, ?)";
constexpr const char *kSelect = "SELECT id, event_id, body FROM events WHERE id > ? ORDER BY id LIMIT ?";
constexpr const char *kDelete = "DELETE FROM events WHERE id BETWEEN ? AND ?";
constexpr const char *kMinId = "SELECT min(id) FROM events";

void finish(sqlite3_stmt *st) {
  if (st) {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
  }
}
}  // namespace

bool QueueStore::exec(const char *sql) { return sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) == SQLITE_OK; }

sqlite3_stmt *QueueStore::cached(const char *sql) {
  for (auto &p : stmts_)
    if (p.first == sql) return p.second;
  sqlite3_stmt *st = nullptr;
  if (sqlite3_prepare_v2(db_, sql, -1, &st, nullptr) != SQLITE_OK) return nullptr;
  stmts_.emplace_back(sql, st);
  return st;
}

int64_t QueueStore::scalar(const char *sql) {
  sqlite3_stmt *st = cached(sql);
  int64_t v = 0;
  if (st && sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
  finish(st);
  return v;
}

std::string QueueStore::error() const { return db_ ? sqlite3_errmsg(db_) : "queue not open"; }

void QueueStore::close() {
  for (auto &p : stmts_) sqlite3_finalize(p.second);
  stmts_.clear();
  if (db_) sqlite3_close(db_);
  db_ = nullptr;
}

bool QueueStore::open_db(const std::string &file, std::string *err, bool *corrupt) {
  *corrupt = false;
  int rc = sqlite3_open_v2(file.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    *err = "cannot open queue " + file + ": " + (db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc));
    return false;
  }
  sqlite3_busy_timeout(db_, 2000);
  auto check = [&](int rc2) {
    if (rc2 == SQLITE_OK || rc2 == SQLITE_DONE || rc2 == SQLITE_ROW) return true;
    int ext = rc2 & 0xff;
    if (ext == SQLITE_CORRUPT || ext == SQLITE_NOTADB) *corrupt = true;
    *err = "queue " + file + ": " + sqlite3_errmsg(db_);
    return false;
  };
  bool mem = file == ":memory:";
  if (!check(sqlite3_exec(db_, mem ? "PRAGMA journal_mode=MEMORY" : "PRAGMA journal_mode=WAL", nullptr, nullptr,
                          nullptr)))
    return false;
  if (!check(sqlite3_exec(db_,
                          "PRAGMA auto_vacuum=INCREMENTAL;"  // takes effect on a new file only
                          "PRAGMA synchronous=NORMAL; PRAGMA journal_size_limit=4194304; PRAGMA cache_size=-8192;"
                          "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                          "CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY AUTOINCREMENT,"
                          " event_id TEXT NOT NULL, body TEXT NOT NULL);",
                          nullptr, nullptr, nullptr)))
    return false;
  if (!mem) {
    sqlite3_stmt *st = nullptr;
    std::string result;
    if (sqlite3_prepare_v2(db_, "PRAGMA quick_check", -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
      const unsigned char *t = sqlite3_column_text(st, 0);
      result = t ? reinterpret_cast<const char *>(t) : "";
    }
    sqlite3_finalize(st);
    if (result != "ok") {
      *corrupt = true;
      *err = "queue " + file + " failed its integrity check: " + result;
      return false;
    }
  }
  return true;
}

bool QueueStore::open(const std::string &path, std::string *err, std::string *reset) {
  path_ = path;
  std::string file = path.empty() ? ":memory:" : path;
  bool corrupt = false;
  std::string e;
  if (open_db(file, &e, &corrupt)) return true;
  close();
  if (!corrupt || path.empty()) {
    *err = e;
    return false;
  }
  std::string aside = path + ".corrupt-" + std::to_string(unix_ms());
  std::string why;
  if (!rename_file(path, aside, &why)) {
    *err = e + "; and it could not be moved aside: " + why;
    return false;
  }
  rename_file(path + "-wal", aside + "-wal", nullptr);
  rename_file(path + "-shm", aside + "-shm", nullptr);
  *reset = e + "; moved aside to " + aside + ", starting empty";
  if (!open_db(file, &e, &corrupt)) {
    close();
    *err = e;
    return false;
  }
  return true;
}

bool QueueStore::get_meta(const char *key, std::string *value) {
  sqlite3_stmt *st = cached("SELECT value FROM meta WHERE key = ?");
  bool found = false;
  if (st) {
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
      const unsigned char *t = sqlite3_column_text(st, 0);
      *value = t ? reinterpret_cast<const char *>(t) : "";
      found = true;
    }
  }
  finish(st);
  return found;
}

bool QueueStore::set_meta(const char *key, const std::string &value) {
  sqlite3_stmt *st = cached("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)");
  if (!st) return false;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, value.data(), static_cast<int>(value.size()), SQLITE_STATIC);
  bool ok = sqlite3_step(st) == SQLITE_DONE;
  finish(st);
  return ok;
}

std::vector<std::pair<int64_t, int64_t>> QueueStore::scan() {
  std::vector<std::pair<int64_t, int64_t>> rows;
  sqlite3_stmt *st = nullptr;
  if (sqlite3_prepare_v2(db_, "SELECT id, length(CAST(body AS BLOB)) FROM events ORDER BY id", -1, &st, nullptr) ==
      SQLITE_OK) {
    while (sqlite3_step(st) == SQLITE_ROW) rows.emplace_back(sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1));
  }
  sqlite3_finalize(st);
  return rows;
}

bool QueueStore::append(const std::vector<NewRow> &rows, std::vector<int64_t> *ids) {
  ids->clear();
  sqlite3_stmt *ins = cached(kInsert);
  if (!ins || !exec("BEGIN IMMEDIATE")) return false;
  bool ok = true;
  for (const NewRow &r : rows) {
    sqlite3_bind_text(ins, 1, r.event_id.data(), static_cast<int>(r.event_id.size()), SQLITE_STATIC);
    sqlite3_bind_text(ins, 2, r.body.data(), static_cast<int>(r.body.size()), SQLITE_STATIC);
    ok = sqlite3_step(ins) == SQLITE_DONE;
    sqlite3_reset(ins);
    if (!ok) break;
    ids->push_back(sqlite3_last_insert_rowid(db_));
  }
  finish(ins);
  if (ok && exec("COMMIT")) return true;
  exec("ROLLBACK");
  ids->clear();
  return false;
}

bool QueueStore::read_after(int64_t after, int64_t max_rows, int64_t max_bytes, StoredRows *out) {
  *out = StoredRows();
  sqlite3_stmt *st = cached(kSelect);
  if (!st) return false;
  sqlite3_bind_int64(st, 1, after);
  sqlite3_bind_int64(st, 2, max_rows);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    int64_t len = sqlite3_column_bytes(st, 2);
    if (!out->ids.empty() && out->bytes + len + 1 > max_bytes) break;
    out->ids.push_back(sqlite3_column_int64(st, 0));
    out->event_ids.emplace_back(reinterpret_cast<const char *>(sqlite3_column_text(st, 1)));
    out->bodies.emplace_back(reinterpret_cast<const char *>(sqlite3_column_text(st, 2)), static_cast<size_t>(len));
    out->bytes += len;
  }
  finish(st);
  return rc == SQLITE_ROW || rc == SQLITE_DONE;
}

int64_t QueueStore::remove_range(int64_t lo, int64_t hi) {
  sqlite3_stmt *st = cached(kDelete);
  if (!st) return -1;
  sqlite3_bind_int64(st, 1, lo);
  sqlite3_bind_int64(st, 2, hi);
  int rc = sqlite3_step(st);
  finish(st);
  return rc == SQLITE_DONE ? sqlite3_changes(db_) : -1;
}

bool QueueStore::drop_oldest(int64_t excess_rows, int64_t excess_bytes, int64_t keep_lo, int64_t keep_hi,
                             int64_t *rows, int64_t *bytes) {
  *rows = 0;
  *bytes = 0;
  sqlite3_stmt *st = cached("SELECT id, length(CAST(body AS BLOB)) FROM events WHERE id < ? OR id > ? ORDER BY id");
  if (!st) return false;
  sqlite3_bind_int64(st, 1, keep_lo);
  sqlite3_bind_int64(st, 2, keep_hi);
  int64_t upto = -1, n = 0, b = 0;
  while ((excess_rows > 0 || excess_bytes > 0) && sqlite3_step(st) == SQLITE_ROW) {
    upto = sqlite3_column_int64(st, 0);
    int64_t len = sqlite3_column_int64(st, 1);
    n++;
    b += len;
    excess_rows--;
    excess_bytes -= len;
  }
  finish(st);
  if (n == 0) return true;
  st = cached("DELETE FROM events WHERE id <= ? AND (id < ? OR id > ?)");
  if (!st) return false;
  sqlite3_bind_int64(st, 1, upto);
  sqlite3_bind_int64(st, 2, keep_lo);
  sqlite3_bind_int64(st, 3, keep_hi);
  int rc = sqlite3_step(st);
  finish(st);
  if (rc != SQLITE_DONE) return false;
  *rows = n;
  *bytes = b;
  return true;
}

bool QueueStore::remove_all() { return exec("DELETE FROM events"); }

int64_t QueueStore::min_id() { return scalar(kMinId); }

void QueueStore::give_back_space(bool empty) {
  if (path_.empty()) return;
  int64_t free_pages = scalar("PRAGMA freelist_count");
  if (empty) {
    if (scalar("PRAGMA auto_vacuum") != 2) {
      exec("PRAGMA auto_vacuum=INCREMENTAL");
      exec("VACUUM");
    } else if (free_pages > 0) {
      exec("PRAGMA incremental_vacuum");
    }
    exec("PRAGMA wal_checkpoint(TRUNCATE)");
  } else if (free_pages > 256 && free_pages * 4 > scalar("PRAGMA page_count")) {
    exec("PRAGMA incremental_vacuum");
  }
}

}  // namespace et
