// The queue store on its own (src/queue_store.cpp): rows in and out, the cap's deletion around the batch
// on the wire, meta values, a corrupt file moved aside, space given back.
#include <sys/stat.h>

#include <fstream>

#include "../src/queue_store.hpp"
#include "common.hpp"

namespace {
std::vector<int64_t> append_n(et::QueueStore &s, int n, size_t body_bytes = 10) {
  std::vector<std::string> ids, bodies;
  std::vector<et::NewRow> rows;
  for (int i = 0; i < n; i++) {
    ids.push_back("00000000-0000-7000-8000-" + std::string(12 - std::to_string(i).size(), '0') + std::to_string(i));
    bodies.push_back(std::string(body_bytes, 'b'));
  }
  for (int i = 0; i < n; i++) rows.push_back(et::NewRow{ids[static_cast<size_t>(i)], bodies[static_cast<size_t>(i)]});
  std::vector<int64_t> out;
  EXPECT_TRUE(s.append(rows, &out)) << s.error();
  return out;
}
}  // namespace

TEST(QueueStore, RowsGoInAndComeOutInOrderWithinTheLimits) {
  et::QueueStore s;
  std::string err, reset;
  ASSERT_TRUE(s.open(h::temp_dir() + "/q.db", &err, &reset)) << err;
  EXPECT_TRUE(reset.empty());
  auto ids = append_n(s, 10, 100);
  ASSERT_EQ(ids.size(), 10u);
  et::StoredRows rows;
  ASSERT_TRUE(s.read_after(0, 4, 1 << 20, &rows));
  ASSERT_EQ(rows.ids.size(), 4u);
  EXPECT_EQ(rows.ids.front(), ids[0]);
  EXPECT_EQ(rows.bytes, 400);
  ASSERT_TRUE(s.read_after(ids[3], 100, 250, &rows));  // the byte limit: two rows of 100 (+1 separator each)
  EXPECT_EQ(rows.ids.size(), 2u);
  ASSERT_TRUE(s.read_after(ids[3], 100, 10, &rows));   // one row at least, whatever the limit
  EXPECT_EQ(rows.ids.size(), 1u);
  EXPECT_EQ(s.remove_range(ids[0], ids[3]), 4);
  EXPECT_EQ(s.min_id(), ids[4]);
  EXPECT_EQ(s.scan().size(), 6u);
  EXPECT_EQ(s.scan().front().second, 100);
}

TEST(QueueStore, TheCapDropsTheOldestButNeverTheBatchOnTheWire) {
  et::QueueStore s;
  std::string err, reset;
  ASSERT_TRUE(s.open("", &err, &reset)) << err;
  auto ids = append_n(s, 10, 10);
  int64_t rows = 0, bytes = 0;
  // Rows 0..2 are on the wire: 4 rows must go, the oldest outside it.
  ASSERT_TRUE(s.drop_oldest(4, 0, ids[0], ids[2], &rows, &bytes));
  EXPECT_EQ(rows, 4);
  EXPECT_EQ(bytes, 40);
  auto left = s.scan();
  ASSERT_EQ(left.size(), 6u);
  EXPECT_EQ(left[0].first, ids[0]);
  EXPECT_EQ(left[3].first, ids[7]);
  ASSERT_TRUE(s.drop_oldest(0, 15, 0, -1, &rows, &bytes));  // by bytes: two rows of 10 cover 15
  EXPECT_EQ(rows, 2);
}

TEST(QueueStore, MetaValuesPersistAndACorruptFileIsMovedAside) {
  std::string dir = h::temp_dir(), q = dir + "/q.db";
  {
    et::QueueStore s;
    std::string err, reset;
    ASSERT_TRUE(s.open(q, &err, &reset)) << err;
    ASSERT_TRUE(s.set_meta("consent", "pending"));
  }
  {
    et::QueueStore s;
    std::string err, reset, v;
    ASSERT_TRUE(s.open(q, &err, &reset)) << err;
    ASSERT_TRUE(s.get_meta("consent", &v));
    EXPECT_EQ(v, "pending");
    EXPECT_FALSE(s.get_meta("nothing", &v));
  }
  {
    std::ofstream f(q, std::ios::binary | std::ios::trunc);
    for (int i = 0; i < 8192; i++) f.put(static_cast<char>((i * 131) & 0xff));
  }
  et::QueueStore s;
  std::string err, reset;
  ASSERT_TRUE(s.open(q, &err, &reset)) << err;
  EXPECT_NE(reset.find(".corrupt-"), std::string::npos) << reset;
  EXPECT_TRUE(s.scan().empty());
}

TEST(QueueStore, AnEmptiedFileGivesItsSpaceBack) {
  std::string q = h::temp_dir() + "/q.db";
  et::QueueStore s;
  std::string err, reset;
  ASSERT_TRUE(s.open(q, &err, &reset)) << err;
  auto ids = append_n(s, 3000, 2000);
  int64_t full = queue_bytes_on_disk(q);
  EXPECT_GE(full, 5 * 1024 * 1024);
  ASSERT_EQ(s.remove_range(ids.front(), ids.back()), 3000);
  s.give_back_space(true);
  EXPECT_LE(queue_bytes_on_disk(q), 256 * 1024) << "full: " << full;
}
