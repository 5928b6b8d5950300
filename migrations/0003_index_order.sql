-- Cost that stays flat as the table grows. The unique key is led by `time` instead of
-- `event_id`: a row's index entry then lands beside the entries of its own moment, and the part
-- of the index that inserts touch stays small whatever the ids (clients may send any UUID; random
-- v4 ids into an index led by `event_id` touch pages all over it, and the write rate halves once
-- the chunk's index outgrows memory). Same columns, so exactly-once holds as before: a duplicate
-- (event_id, time) is refused by this index, and `ON CONFLICT DO NOTHING` infers it.
--
-- The guarded write of corrected rows looks rows up by `event_id` and `device_time`; a partial
-- index holds only corrected rows (`device_time` set, rare), so an ordinary row costs it nothing.
--
-- `(source, time DESC)` served no query of the README's "Querying events" and cost every row an
-- index entry: dropped (create it again if your queries filter on source). `events_time_idx`
-- (`time DESC`, made by create_hypertable) is the unique key's first column: the unique index
-- serves every query it served (a btree is read backwards as well), so it goes too.
--
-- Locks: building an index holds a SHARE lock on each chunk until this migration commits, so
-- writes to `events` wait meanwhile; reads go on. Dropping an index takes an ACCESS EXCLUSIVE
-- lock, which stops reads too: the drops come last, so reads wait only for them and the commit.
-- `flusher migrate` says so, with the table's row count, before it starts (README, "Upgrading":
-- 12 s for 12M rows on 2 cores).
CREATE UNIQUE INDEX IF NOT EXISTS events_time_event_id_key ON events (time, event_id);
CREATE INDEX IF NOT EXISTS events_corrected_idx ON events (event_id, device_time)
    WHERE device_time IS NOT NULL;
DROP INDEX IF EXISTS events_event_id_time_key;
DROP INDEX IF EXISTS events_source_time_idx;
DROP INDEX IF EXISTS events_time_idx;
