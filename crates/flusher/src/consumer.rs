//! The flusher's side of the queue: one consumer of the group on every shard — reads, claims,
//! acknowledgement and dead letters (the settling scripts live in `redis_queue::settle`). Reads use a connection of their own (a blocking XREADGROUP
//! would stall every other command on a multiplexed connection); everything else shares one.
//! Every method that touches entries takes the shard they belong to.

use std::time::Duration;

use redis_queue::redis::{self, Value};
use std::sync::Arc;

use redis_queue::reader::{ReadGroup, StreamReader};
use redis_queue::{Conn, Layout, LayoutCheck, QueueState, Shared};

use crate::FlusherError;
use crate::config::GlobalArgs;

/// One stream entry: its ID and its field/value pairs (slices of the reply they came in).
pub use redis_queue::reader::StreamEntry as Entry;

/// The connection reads go over: on one node over TCP, the lean reader of
/// [`redis_queue::reader`]; otherwise (a cluster, a Unix socket) a redis-rs connection.
enum Reader {
    Lean(StreamReader),
    Client(Conn),
}

/// The shared Redis connection and the check of the queue layout the settings describe
/// (`record`: write the shard count where none is recorded yet). Connects nothing yet.
pub fn connect(
    common: &GlobalArgs,
    timeout: Duration,
    record: bool,
) -> Result<(Shared, Arc<LayoutCheck>), FlusherError> {
    let connector = redis_queue::Connector::new(common.redis_url.expose(), common.redis_cluster)?;
    let layout = Layout::new(&common.stream_key, common.shards, common.redis_cluster)?;
    Ok((
        Shared::new(connector, timeout),
        Arc::new(LayoutCheck::new(layout, record)),
    ))
}

/// The queue's shards as one consumer of the group sees them, with its connections.
pub struct Consumer {
    /// For every call but reads: one connection shared by the workers of the process.
    redis: Shared,
    /// Reads only, made on first use and re-made after an error. Behind a lock so that a read
    /// can run beside the writing of the batch before it (see `flush::Worker::write_reading_ahead`);
    /// each worker has its own, so it is never contended.
    reads: tokio::sync::Mutex<ReadConn>,
    /// Which shards' copies of the shard count were verified, shared by the workers.
    check: Arc<LayoutCheck>,
    pub group: String,
    pub consumer: String,
    timeout: Duration,
    block: Duration,
}

/// A worker's read connection, made on first use, and its failed reads in a row.
#[derive(Default)]
struct ReadConn {
    reader: Option<Reader>,
    failures: u32,
}

impl Consumer {
    pub fn new(
        redis: Shared,
        check: Arc<LayoutCheck>,
        group: &str,
        consumer: &str,
        block: Duration,
    ) -> Self {
        Consumer {
            timeout: redis.timeout(),
            redis,
            reads: tokio::sync::Mutex::new(ReadConn::default()),
            check,
            group: group.to_string(),
            consumer: consumer.to_string(),
            block,
        }
    }

    /// Another handle on the same shards and shared connection, without a reader of its own
    /// (for the gauge task).
    pub fn query_handle(&self) -> Consumer {
        Consumer::new(
            self.redis.clone(),
            self.check.clone(),
            &self.group,
            &self.consumer,
            self.block,
        )
    }

    pub fn layout(&self) -> &Layout {
        self.check.layout()
    }

    /// The connection shared by the process (for the readiness probe).
    pub fn redis(&self) -> &Shared {
        &self.redis
    }

    pub fn shards(&self) -> usize {
        self.layout().shards()
    }

    pub fn key(&self, shard: usize) -> String {
        self.layout().key(shard)
    }

    pub fn dead_key(&self, shard: usize) -> String {
        self.layout().dead_key(shard)
    }

    /// Runs one command or pipeline on the shared connection, within the timeout.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        run: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, FlusherError> {
        self.redis.query(run).await.map_err(FlusherError::from)
    }

    /// Records the shard count, or fails if another one is recorded, under the queue's count
    /// key and every reachable shard's copy.
    pub async fn check_layout(&self) -> Result<(), FlusherError> {
        Ok(self.check.check_all(&self.redis).await?)
    }

    /// The same for one shard's copy of the count (a shard whose node was down at start);
    /// nothing once it was checked.
    pub async fn check_shard(&self, shard: usize) -> Result<(), FlusherError> {
        Ok(self.check.check_shard(&self.redis, shard).await?)
    }

    /// Creates the consumer group at ID 0 (so nothing queued before the first flusher is
    /// skipped), creating the stream too if needed. Reads first: a Redis at maxmemory refuses
    /// XGROUP CREATE, and a flusher must start against it when the group exists already.
    pub async fn ensure_group(&self, shard: usize) -> Result<(), FlusherError> {
        let (key, group) = (&self.key(shard), &self.group);
        let groups = self
            .query(async |c| {
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(key)
                    .query_async::<Value>(c)
                    .await
            })
            .await;
        match groups {
            Ok(v)
                if as_array(v.clone())
                    .into_iter()
                    .any(|g| group_name(g).as_deref() == Some(group.as_str())) =>
            {
                return Ok(());
            }
            // No stream yet ("ERR no such key"), or no such group: create them.
            Ok(_) => {}
            Err(e) if e.redis_code().is_some() => {}
            Err(e) => return Err(e),
        }
        let result = self
            .query(async |c| {
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(key)
                    .arg(group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async::<()>(c)
                    .await
            })
            .await;
        match result {
            Err(e) if e.redis_code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Reads up to `count` new entries of one shard, waiting up to `block` when none are there
    /// (not at all when `block` is zero). Returns at once with what is there when fewer than
    /// `count` are waiting.
    pub async fn read_new(
        &self,
        shard: usize,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>, FlusherError> {
        self.read_new_times(shard, count, block, 1).await
    }

    /// `times` reads of up to `count` new entries each, in one round trip where the connection
    /// allows it (the lean reader pipelines them; a redis-rs connection reads one after the
    /// other and stops at the first that is not full).
    pub async fn read_new_times(
        &self,
        shard: usize,
        count: usize,
        block: Duration,
        times: usize,
    ) -> Result<Vec<Entry>, FlusherError> {
        let key = self.check.layout().key(shard);
        let limit = block + self.timeout;
        let mut conn = self.reads.lock().await;
        let reader = match &mut conn.reader {
            Some(reader) => reader,
            none => none.insert(self.connect_reader().await?),
        };
        let read = ReadGroup {
            key: &key,
            group: &self.group,
            consumer: &self.consumer,
            count,
            block: (!block.is_zero()).then_some(block),
        };
        let reply = tokio::time::timeout(limit, reader.read(&read, times)).await;
        match reply {
            Ok(Ok(entries)) => {
                conn.failures = 0;
                Ok(entries)
            }
            Ok(Err(e)) => {
                // Reconnecting is cheap; a connection that saw an error is not trusted again
                // (a cluster connection only when it needs it, see `needs_new_connection`, or
                // after many failures in a row with no read between).
                conn.failures += 1;
                let renew = match &e {
                    FlusherError::Queue(q) => {
                        q.needs_new_connection(self.redis.connector().is_cluster())
                    }
                    _ => true,
                };
                if renew || conn.failures >= 20 {
                    *conn = ReadConn::default();
                }
                Err(e)
            }
            Err(_) => {
                *conn = ReadConn::default();
                Err(redis_queue::QueueError::Timeout(limit).into())
            }
        }
    }

    /// A new read connection: the lean reader where it can be.
    async fn connect_reader(&self) -> Result<Reader, FlusherError> {
        let connector = self.redis.connector();
        let lean = tokio::time::timeout(self.timeout, connector.stream_reader())
            .await
            .map_err(|_| redis_queue::QueueError::Timeout(self.timeout))??;
        Ok(match lean {
            Some(lean) => Reader::Lean(lean),
            None => Reader::Client(
                connector
                    .connect(self.timeout, self.block + self.timeout)
                    .await?,
            ),
        })
    }

    /// Claims entries idle longer than `min_idle` from any consumer (a crashed flusher's),
    /// looping on the XAUTOCLAIM cursor, up to `max` entries.
    pub async fn claim_stale(
        &self,
        shard: usize,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Entry>, FlusherError> {
        let mut cursor = "0-0".to_string();
        let mut claimed = Vec::new();
        let key = &self.key(shard);
        loop {
            let (group, consumer, start) = (&self.group, &self.consumer, &cursor);
            let reply: Value = self
                .query(async |c| {
                    redis::cmd("XAUTOCLAIM")
                        .arg(key)
                        .arg(group)
                        .arg(consumer)
                        .arg(min_idle.as_millis() as u64)
                        .arg(start)
                        .arg("COUNT")
                        .arg(max.saturating_sub(claimed.len()).max(1))
                        .query_async(c)
                        .await
                })
                .await?;
            let (next, entries) = parse_autoclaim_reply(reply)?;
            claimed.extend(entries);
            if next == "0-0" || claimed.len() >= max {
                return Ok(claimed);
            }
            cursor = next;
        }
    }

    /// How often each of these pending entries has been delivered.
    pub async fn delivery_counts(
        &self,
        shard: usize,
        ids: &[String],
    ) -> Result<Vec<(String, u64)>, FlusherError> {
        let (Some(first), Some(last)) = (
            ids.iter().min_by(|a, b| cmp_ids(a, b)),
            ids.iter().max_by(|a, b| cmp_ids(a, b)),
        ) else {
            return Ok(Vec::new());
        };
        let (key, group) = (&self.key(shard), &self.group);
        let reply: Value = self
            .query(async |c| {
                redis::cmd("XPENDING")
                    .arg(key)
                    .arg(group)
                    .arg(first)
                    .arg(last)
                    .arg(ids.len().max(1) * 4)
                    .query_async(c)
                    .await
            })
            .await?;
        let mut out = Vec::new();
        for item in as_array(reply) {
            let fields = as_array(item);
            if let (Some(id), Some(Value::Int(n))) =
                (fields.first().and_then(as_string), fields.get(3))
                && ids.contains(&id)
            {
                out.push((id, *n as u64));
            }
        }
        Ok(out)
    }

    /// Re-claims our own entries with idle 0, so other flushers do not take over entries we
    /// are still retrying (while PostgreSQL is down, say).
    pub async fn keep_claimed(&self, shard: usize, ids: &[String]) -> Result<(), FlusherError> {
        if ids.is_empty() {
            return Ok(());
        }
        let (key, group, consumer) = (&self.key(shard), &self.group, &self.consumer);
        self.query(async |c| {
            redis::cmd("XCLAIM")
                .arg(key)
                .arg(group)
                .arg(consumer)
                .arg(0)
                .arg(ids)
                .arg("JUSTID")
                .query_async::<()>(c)
                .await
        })
        .await
    }

    /// Acknowledges and deletes entries whose rows are committed (atomically, also while Redis
    /// is out of memory: see [`redis_queue::settle`]). The future owns what it needs, so it can
    /// run on a task of its own while the worker goes on.
    pub fn ack_delete<'i>(
        &self,
        shard: usize,
        ids: impl IntoIterator<Item = &'i str>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), FlusherError>> + Send>> {
        use redis_queue::settle;
        let cmd = settle::ack_delete(&self.key(shard), &self.group, ids);
        let redis = self.redis.clone();
        Box::pin(async move {
            if let Some(cmd) = cmd {
                settle::run(&redis, &cmd).await?;
            }
            Ok(())
        })
    }

    /// Moves entries to the dead-letter stream with the reason, each only if it is still
    /// pending with this consumer (another flusher that claimed it settles it instead), with
    /// its acknowledgement and deletion from the main stream. Returns how many it moved.
    pub async fn dead_letter(
        &self,
        shard: usize,
        dead: &[(&Entry, String, Option<String>)],
    ) -> Result<u64, FlusherError> {
        if dead.is_empty() {
            return Ok(0);
        }
        let (key, dead_key) = (self.key(shard), self.dead_key(shard));
        let now = time::OffsetDateTime::now_utc();
        let at = event_model::timestamp::format_timestamp(now);
        let letters: Vec<redis_queue::settle::DeadLetter<'_>> = dead
            .iter()
            .map(|(entry, reason, sqlstate)| {
                let mut fields: Vec<(&[u8], &[u8])> = entry
                    .fields
                    .iter()
                    .map(|(k, v)| (k.as_ref(), v.as_ref()))
                    .collect();
                fields.extend([
                    (DL_ORIGINAL_ID.as_bytes(), entry.id.as_bytes()),
                    (DL_REASON.as_bytes(), reason.as_bytes()),
                    (
                        DL_SQLSTATE.as_bytes(),
                        sqlstate.as_deref().unwrap_or("").as_bytes(),
                    ),
                    (DL_AT.as_bytes(), at.as_bytes()),
                    (DL_CONSUMER.as_bytes(), self.consumer.as_bytes()),
                ]);
                redis_queue::settle::DeadLetter {
                    id: &entry.id,
                    fields,
                }
            })
            .collect();
        let moved = redis_queue::settle::dead_letter(
            &self.redis,
            &key,
            &dead_key,
            &self.group,
            &self.consumer,
            &letters,
        )
        .await?;
        if (moved as usize) < dead.len() {
            log::info!(
                "{} of {} entries to dead-letter were claimed by another flusher meanwhile; it settles them",
                dead.len() - moved as usize,
                dead.len()
            );
        }
        Ok(moved)
    }

    /// Backlog, lag, pending and dead-letter counts of all shards together (lag: the oldest
    /// entry of any shard), for metrics and the periodic log line. Shards that cannot be read
    /// are counted in `unreachable`; an error only when none can be.
    pub async fn queue_state(&self) -> Result<QueueState, FlusherError> {
        let reads =
            redis_queue::queue_state::read_shards(&self.redis, self.layout(), Some(&self.group))
                .await;
        Ok(QueueState::total(reads)?)
    }

    /// Removes consumers idle longer than `max_idle` that hold no pending entries. Check and
    /// removal run as one Lua script: a consumer that read entries between a separate check and
    /// DELCONSUMER would lose their pending state, and they would never be delivered again.
    pub async fn remove_idle_consumers(
        &self,
        shard: usize,
        max_idle: Duration,
    ) -> Result<Vec<String>, FlusherError> {
        let script = redis::Script::new(PRUNE_CONSUMERS_LUA);
        let (key, group, me) = (&self.key(shard), &self.group, &self.consumer);
        let removed: Vec<String> = self
            .query(async |c| {
                script
                    .key(key)
                    .arg(group)
                    .arg(max_idle.as_millis() as u64)
                    .arg(me)
                    .invoke_async(c)
                    .await
            })
            .await?;
        for name in &removed {
            log::info!("removed idle consumer {name} from {key}");
        }
        Ok(removed)
    }

    /// Removes this consumer from the group of one shard unless it still holds pending entries
    /// (checked and removed in one script, as in [`Consumer::remove_idle_consumers`]): a
    /// cleanly stopped flusher leaves no consumer behind, and loses nothing. `Ok(false)`: kept,
    /// its pending entries are claimed by another flusher after `--claim-idle-ms`.
    pub async fn leave_group(&self, shard: usize) -> Result<bool, FlusherError> {
        let script = redis::Script::new(LEAVE_GROUP_LUA);
        let (key, group, me) = (&self.key(shard), &self.group, &self.consumer);
        let left: i64 = self
            .query(async |c| script.key(key).arg(group).arg(me).invoke_async(c).await)
            .await?;
        Ok(left == 1)
    }
}

/// 1: removed (or never there); 0: kept, it holds pending entries; -1: no such group or stream.
const LEAVE_GROUP_LUA: &str = r#"
local ok, held = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if not ok then return -1 end
if #held > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

const PRUNE_CONSUMERS_LUA: &str = r#"
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['pending'] == 0 and f['idle'] >= tonumber(ARGV[2]) and f['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    table.insert(removed, f['name'])
  end
end
return removed
"#;

/// Dead-letter entry fields added to the original ones.
pub const DL_ORIGINAL_ID: &str = "dl_original_id";
pub const DL_REASON: &str = "dl_reason";
pub const DL_SQLSTATE: &str = "dl_sqlstate";
pub const DL_AT: &str = "dl_at";
pub const DL_CONSUMER: &str = "dl_consumer";

/// Orders stream IDs (`ms-seq`) numerically.
pub fn cmp_ids(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |s: &str| {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    parse(a).cmp(&parse(b))
}

fn as_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// The `name` of one `XINFO GROUPS` item (a flat array in RESP2, a map in RESP3).
fn group_name(v: Value) -> Option<String> {
    let mut it = as_array(v).into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if as_string(&k).as_deref() == Some("name") {
            return as_string(&v);
        }
    }
    None
}

fn as_bytes(v: Value) -> Option<bytes::Bytes> {
    match v {
        Value::BulkString(b) => Some(b.into()),
        Value::SimpleString(s) => Some(s.into_bytes().into()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes().into()),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    as_bytes(v.clone()).and_then(|b| String::from_utf8(b.into()).ok())
}

impl Reader {
    /// `times` reads: pipelined on the lean reader; one after the other on a redis-rs
    /// connection, stopping at the first that is not full.
    async fn read(
        &mut self,
        read: &ReadGroup<'_>,
        times: usize,
    ) -> Result<Vec<Entry>, FlusherError> {
        match self {
            Reader::Lean(lean) => Ok(lean.read_groups(read, times).await?),
            Reader::Client(conn) => {
                let mut entries = Vec::new();
                for _ in 0..times {
                    let reply = read_group_cmd(read)
                        .query_async::<Value>(conn)
                        .await
                        .map_err(redis_queue::QueueError::Redis)?;
                    let more = parse_read_reply(reply)?;
                    let full = more.len() == read.count;
                    entries.extend(more);
                    if !full {
                        break;
                    }
                }
                Ok(entries)
            }
        }
    }
}

/// [`ReadGroup`] as a redis-rs command (for the connections that are not the lean reader).
fn read_group_cmd(read: &ReadGroup<'_>) -> redis::Cmd {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(read.group)
        .arg(read.consumer)
        .arg("COUNT")
        .arg(read.count);
    if let Some(block) = read.block {
        cmd.arg("BLOCK").arg(block.as_millis() as u64);
    }
    cmd.arg("STREAMS").arg(read.key).arg(">");
    cmd
}

fn parse_entry(v: Value) -> Option<Entry> {
    let mut parts = as_array(v).into_iter();
    let id = as_string(&parts.next()?)?;
    let mut fields = Vec::new();
    let mut raw = as_array(parts.next().unwrap_or(Value::Nil)).into_iter();
    while let (Some(k), Some(v)) = (raw.next(), raw.next()) {
        fields.push((as_bytes(k)?, as_bytes(v)?));
    }
    Some(Entry { id, fields })
}

pub(crate) fn parse_entries(v: Value) -> Vec<Entry> {
    as_array(v).into_iter().filter_map(parse_entry).collect()
}

/// `XREADGROUP` reply: nil on timeout, else `[[key, [entry, ...]]]` (a map in RESP3).
fn parse_read_reply(v: Value) -> Result<Vec<Entry>, FlusherError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Map(pairs) => Ok(pairs
            .into_iter()
            .flat_map(|(_, e)| parse_entries(e))
            .collect()),
        Value::Array(streams) => Ok(streams
            .into_iter()
            .flat_map(|s| {
                let mut it = as_array(s).into_iter();
                it.next();
                it.next().map(parse_entries).unwrap_or_default()
            })
            .collect()),
        other => Err(FlusherError::Protocol(format!(
            "unexpected XREADGROUP reply {other:?}"
        ))),
    }
}

/// `XAUTOCLAIM` reply: `[next-cursor, [entry, ...], [deleted-id, ...]]`.
fn parse_autoclaim_reply(v: Value) -> Result<(String, Vec<Entry>), FlusherError> {
    let mut it = as_array(v).into_iter();
    let next = it
        .next()
        .as_ref()
        .and_then(as_string)
        .ok_or_else(|| FlusherError::Protocol("XAUTOCLAIM reply without a cursor".into()))?;
    let entries = it.next().map(parse_entries).unwrap_or_default();
    Ok((next, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(cmp_ids("9-0", "10-0"), Less);
        assert_eq!(cmp_ids("10-2", "10-10"), Less);
        assert_eq!(cmp_ids("10-2", "10-2"), Equal);
    }

    #[test]
    fn parses_a_read_reply() {
        let entry = Value::Array(vec![
            Value::BulkString(b"1-1".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"v".to_vec()),
                Value::BulkString(b"1".to_vec()),
            ]),
        ]);
        let reply = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"event_queue".to_vec()),
            Value::Array(vec![entry]),
        ])]);
        let entries = parse_read_reply(reply).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "1-1");
        assert_eq!(entries[0].field("v"), Some(&b"1"[..]));
        assert!(parse_read_reply(Value::Nil).unwrap().is_empty());
    }
}
