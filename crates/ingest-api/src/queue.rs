//! The Redis side of ingest-api: each request's events go to one shard in one atomic MULTI/EXEC,
//! requests are spread over the shards in turn, and a shard whose node does not answer is
//! skipped until it does. Also a readiness check and cached shard lengths for backpressure.
//! Every call is bounded by the Redis timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use event_model::QueuedEvent;
use event_model::queue::{ENTRY_VERSION, EVENT_FIELD, VERSION_FIELD};
use redis_queue::{Connector, Layout, Shared, redis};

pub use redis_queue::QueueError;

/// How long a shard whose write failed is skipped, unless the length refresh (every 250 ms)
/// finds its node answering again first.
const SHARD_COOLDOWN: Duration = Duration::from_secs(2);

/// A handle on the queue; cheap to clone.
#[derive(Clone)]
pub struct EventQueue {
    redis: Shared,
    layout: Layout,
    next: Arc<AtomicUsize>,
    shards: Arc<Vec<ShardState>>,
}

#[derive(Default)]
struct ShardState {
    /// The shard's copy of the shard count matched ours (checked once per process).
    checked: AtomicBool,
    length: AtomicU64,
    /// Milliseconds since the epoch until which writes skip this shard (0: healthy).
    down_until: AtomicU64,
}

impl ShardState {
    fn is_down(&self, now_ms: u64) -> bool {
        self.down_until.load(Ordering::Relaxed) > now_ms
    }
}

fn now_ms() -> u64 {
    redis_queue::now_since_epoch().as_millis() as u64
}

impl EventQueue {
    /// No connection is made yet: ingest-api starts even while Redis is down.
    pub fn new(
        redis_url: &str,
        cluster: bool,
        stream_key: &str,
        shards: usize,
        timeout: Duration,
    ) -> Result<Self, QueueError> {
        let layout = Layout::new(stream_key, shards, cluster)?;
        let redis = Shared::new(Connector::new(redis_url, cluster)?, timeout);
        Ok(EventQueue {
            redis,
            shards: Arc::new((0..shards).map(|_| ShardState::default()).collect()),
            layout,
            next: Arc::default(),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Records the shard count in Redis, or fails if another one is recorded: under the
    /// queue's count key and each shard's copy (shards that cannot be reached now are checked
    /// before their first write). Shards already checked cost nothing.
    pub async fn check_layout(&self) -> Result<(), QueueError> {
        if self
            .shards
            .iter()
            .all(|s| s.checked.load(Ordering::Acquire))
        {
            return Ok(());
        }
        let checked = self.layout.check_all(&self.redis).await?;
        for (state, ok) in self.shards.iter().zip(checked) {
            if ok {
                state.checked.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    async fn check_shard(&self, shard: usize) -> Result<(), QueueError> {
        let state = &self.shards[shard];
        if !state.checked.load(Ordering::Acquire) {
            self.layout.check(&self.redis, Some(shard)).await?;
            state.checked.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Appends every event to one shard in one MULTI/EXEC: all of them are in the stream, or
    /// none. Shards take requests in turn; when a shard's node fails, the same entries go to
    /// the next healthy shard (they carry their event IDs, so even a write that did happen
    /// before its reply was lost is stored once). Returns the shard written to.
    pub async fn push(&self, events: &[QueuedEvent]) -> Result<usize, QueueError> {
        let n = self.shards.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = now_ms();
        // Healthy shards first, in turn; shards in their cooldown are a last resort.
        let (up, down): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|k| (start + k) % n)
            .partition(|&s| !self.shards[s].is_down(now));
        let mut last = None;
        for shard in up.into_iter().chain(down.into_iter().take(1)) {
            // Any error moves on to the next shard, error replies too: with its node down, a
            // cluster client may send a shard's MULTI/EXEC to another node, which aborts it
            // with MOVED; a node out of memory refuses with OOM while others have room.
            match self.push_to(shard, events).await {
                Ok(()) => return Ok(shard),
                Err(e @ QueueError::ShardMismatch { .. }) => return Err(e),
                Err(e) => {
                    if n > 1 {
                        log::warn!("shard {shard} did not take a write ({e}); trying another");
                        crate::telemetry::shard_failover();
                    }
                    self.shards[shard].down_until.store(
                        now_ms() + SHARD_COOLDOWN.as_millis() as u64,
                        Ordering::Relaxed,
                    );
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(QueueError::Timeout(self.redis.timeout())))
    }

    async fn push_to(&self, shard: usize, events: &[QueuedEvent]) -> Result<(), QueueError> {
        self.check_shard(shard).await?;
        let key = self.layout.key(shard);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for e in events {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg(VERSION_FIELD)
                .arg(ENTRY_VERSION)
                .arg(EVENT_FIELD)
                .arg(e.encode())
                .ignore();
        }
        self.redis
            .query(async |c| pipe.query_async::<()>(c).await)
            .await
    }

    /// Ready when at least one shard's node answers (asked in turn until one does).
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut last = None;
        for shard in 0..self.shards.len() {
            let key = self.layout.key(shard);
            // EXISTS routes by key, so on a cluster it asks the node that owns this shard.
            match self
                .redis
                .query(async |c| redis::cmd("EXISTS").arg(&key).query_async::<u64>(c).await)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(QueueError::Timeout(self.redis.timeout())))
    }

    /// The sum of the shard lengths as last seen by [`EventQueue::refresh_length`]: the
    /// backpressure limit applies to the whole queue.
    pub fn cached_length(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.length.load(Ordering::Relaxed))
            .sum()
    }

    /// Reads each shard's length (cached for backpressure) and the age of its oldest entry.
    /// A shard that answers is marked healthy again. Returns the total length, the largest
    /// lag, and how many shards could not be read (an error if none could).
    pub async fn refresh_length(&self) -> Result<(u64, Duration, usize), QueueError> {
        let now = redis_queue::now_since_epoch();
        let (mut total, mut lag, mut failed, mut last) = (0, Duration::ZERO, 0, None);
        for (shard, state) in self.shards.iter().enumerate() {
            let key = self.layout.key(shard);
            let mut pipe = redis::pipe();
            pipe.cmd("XLEN")
                .arg(&key)
                .cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1);
            let reply: Result<(u64, Vec<(String, redis::Value)>), _> =
                self.redis.query(async |c| pipe.query_async(c).await).await;
            match reply {
                Ok((len, oldest)) => {
                    state.length.store(len, Ordering::Relaxed);
                    state.down_until.store(0, Ordering::Relaxed);
                    total += len;
                    if let Some((id, _)) = oldest.first() {
                        lag = lag.max(event_model::queue::entry_age(id, now));
                    }
                }
                Err(e) => {
                    failed += 1;
                    if e.code().is_none() {
                        state.down_until.store(
                            now_ms() + SHARD_COOLDOWN.as_millis() as u64,
                            Ordering::Relaxed,
                        );
                    }
                    // Keep its last known length: an unreachable shard still holds its backlog.
                    total += state.length.load(Ordering::Relaxed);
                    last = Some(e);
                }
            }
        }
        match last {
            Some(e) if failed == self.shards.len() => Err(e),
            _ => Ok((total, lag, failed)),
        }
    }
}
