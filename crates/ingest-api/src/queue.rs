//! The Redis side of ingest-api: each request's events go to one shard in one atomic MULTI/EXEC,
//! requests are spread over the shards in turn, and a shard whose node does not answer is
//! skipped until it does. Also a readiness check, and the queue's state (see
//! [`redis_queue::QueueState`]) with cached shard lengths for backpressure.
//! Every call is bounded by the Redis timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use event_model::queue::EntryEvent;
use redis_queue::writer::Writers;
use redis_queue::{Connector, Layout, LayoutCheck, QueueState, Shared};

pub use redis_queue::QueueError;

/// A handle on the queue; cheap to clone.
#[derive(Clone)]
pub struct EventQueue {
    redis: Shared,
    /// Appends over plain RESP on one node over TCP (see `redis_queue::writer`); `None`: a
    /// cluster or a Unix socket, whose appends go through `redis`.
    writers: Option<Arc<Writers>>,
    check: Arc<LayoutCheck>,
    next: Arc<AtomicUsize>,
    shards: Arc<Vec<ShardHealth>>,
    /// A shard whose node is fuller than this takes no writes (see [`EventQueue::is_full`]).
    max_memory_ratio: f64,
    /// The retention the flushers record, in seconds (0: none), as last read by
    /// [`EventQueue::refresh_retention`].
    retention_secs: Arc<AtomicU64>,
}

#[derive(Default)]
struct ShardHealth {
    length: AtomicU64,
    /// A write to it failed: skipped until the length refresh (every 250 ms) reads it again.
    down: AtomicBool,
    /// Its node's memory over maxmemory, as f64 bits, from the last refresh.
    memory_ratio: AtomicU64,
}

impl ShardHealth {
    fn memory_ratio(&self) -> f64 {
        f64::from_bits(self.memory_ratio.load(Ordering::Relaxed))
    }
}

impl EventQueue {
    /// No connection is made yet: ingest-api starts even while Redis is down.
    pub fn new(
        redis_url: &str,
        cluster: bool,
        stream_key: &str,
        shards: usize,
        timeout: Duration,
        max_memory_ratio: f64,
    ) -> Result<Self, QueueError> {
        let layout = Layout::new(stream_key, shards, cluster)?;
        let connector = Connector::new(redis_url, cluster)?;
        let writers = connector.writers(timeout).map(Arc::new);
        let redis = Shared::new(connector, timeout);
        Ok(EventQueue {
            redis,
            writers,
            shards: Arc::new((0..shards).map(|_| ShardHealth::default()).collect()),
            check: Arc::new(LayoutCheck::new(layout, true)),
            next: Arc::default(),
            max_memory_ratio,
            retention_secs: Arc::default(),
        })
    }

    /// The shared Redis connection (for the rate limiter's state).
    pub fn redis(&self) -> &Shared {
        &self.redis
    }

    pub fn layout(&self) -> &Layout {
        self.check.layout()
    }

    /// Records the shard count in Redis, or fails if another one is recorded (see
    /// [`LayoutCheck::check_all`]); what was checked once is not asked again.
    pub async fn check_layout(&self) -> Result<(), QueueError> {
        self.check.check_all(&self.redis).await
    }

    /// Appends every event to one shard in one MULTI/EXEC: all of them are in the stream, or
    /// none. Shards take requests in turn. On a Redis Cluster, when a shard's node fails the
    /// same entries go to the next healthy shard (they carry their event IDs, so even a write
    /// that did happen before its reply was lost is stored once), all within twice the Redis
    /// timeout; on one node another shard would fail the same way, so there is no second try.
    /// Returns the shard written to.
    pub async fn push(&self, events: &[EntryEvent<'_>]) -> Result<usize, QueueError> {
        let n = self.shards.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        // A shard whose node is past the memory ratio is never written to: Redis must keep
        // room for the flushers' own bookkeeping, and for the backlog to drain.
        let roomy = |s: &usize| !self.shard_full(*s);
        if !self.redis.connector().is_cluster() {
            let Some(shard) = (0..n).map(|k| (start + k) % n).find(roomy) else {
                return Err(QueueError::Full);
            };
            return self.push_to(shard, events).await.map(|()| shard);
        }
        // Healthy shards first, in turn; one that is down is a last resort.
        let (up, down): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|k| (start + k) % n)
            .filter(roomy)
            .partition(|&s| !self.shards[s].down.load(Ordering::Relaxed));
        if up.is_empty() && down.is_empty() {
            return Err(QueueError::Full);
        }
        let deadline = tokio::time::Instant::now() + 2 * self.redis.timeout();
        let mut last = None;
        for shard in up.into_iter().chain(down.into_iter().take(1)) {
            let attempt = tokio::time::timeout_at(deadline, self.push_to(shard, events)).await;
            match attempt {
                Ok(Ok(())) => return Ok(shard),
                Ok(Err(e)) if e.is_fatal() => return Err(e),
                // Any other error moves on, error replies too: with its node down, the cluster
                // client may send a shard's MULTI/EXEC to another node, which aborts it with
                // MOVED; a node out of memory refuses with OOM while others have room.
                Ok(Err(e)) => {
                    log::warn!("shard {shard} did not take a write ({e}); trying another");
                    crate::telemetry::shard_failover();
                    self.shards[shard].down.store(true, Ordering::Relaxed);
                    last = Some(e);
                }
                Err(_) => {
                    self.shards[shard].down.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
        Err(last.unwrap_or(QueueError::Timeout(2 * self.redis.timeout())))
    }

    async fn push_to(&self, shard: usize, events: &[EntryEvent<'_>]) -> Result<(), QueueError> {
        self.check.check_shard(&self.redis, shard).await?;
        let key = self.layout().key(shard);
        if let Some(writers) = &self.writers {
            writers.append(&key, events).await?;
        } else {
            let pipe = redis_queue::append::entries(&key, events.iter().copied());
            self.redis
                .query(async |c| pipe.query_async::<()>(c).await)
                .await?;
        }
        crate::telemetry::shard_write(shard, events.len());
        Ok(())
    }

    fn shard_full(&self, shard: usize) -> bool {
        self.shards[shard].memory_ratio() > self.max_memory_ratio
    }

    /// Every shard's node is past the memory ratio (as last read): requests get 503 queue_full
    /// until the flushers free memory.
    pub fn is_full(&self) -> bool {
        (0..self.shards.len()).all(|s| self.shard_full(s))
    }

    /// Reads the retention the flushers record (see [`Layout::retention_key`]); until it is
    /// read again the last one read holds, and none before the first.
    pub async fn refresh_retention(&self) -> Result<(), QueueError> {
        let keep = self.layout().recorded_retention(&self.redis).await?;
        let secs = keep.map_or(0, |k| k.as_secs());
        let before = self.retention_secs.swap(secs, Ordering::Relaxed);
        if before != secs {
            log::info!(
                "retention recorded by the flushers: {}",
                keep.map_or("none".to_string(), |k| format!("{} s", k.as_secs()))
            );
        }
        Ok(())
    }

    /// How old an event may be ([`retention_window`] of the recorded retention), if retention
    /// is on.
    pub fn max_age(&self) -> Option<time::Duration> {
        match self.retention_secs.load(Ordering::Relaxed) {
            0 => None,
            secs => Some(retention_window(Duration::from_secs(secs))),
        }
    }

    /// Ready when at least one shard's node answers.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.layout().any_shard_answers(&self.redis).await
    }

    /// The sum of the shard lengths as last seen by [`EventQueue::refresh_state`]: the
    /// backpressure limit applies to the whole queue. A shard that could not be read counts
    /// with its last known length: it still holds its backlog (unlike the exported
    /// `eventtracker_queue_backlog`, which covers the shards read, see [`QueueState`]).
    pub fn cached_length(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.length.load(Ordering::Relaxed))
            .sum()
    }

    /// Reads every shard's length (cached for backpressure), the age of its oldest entry and
    /// its node's memory, all shards at once. A shard that answers is healthy again; one that
    /// does not is marked down. Returns the queue's state over the shards read (an error if
    /// none could be).
    pub async fn refresh_state(&self) -> Result<QueueState, QueueError> {
        let reads = redis_queue::queue_state::read_shards(&self.redis, self.layout(), None).await;
        for (health, read) in self.shards.iter().zip(&reads) {
            match read {
                Ok(stats) => {
                    health.length.store(stats.backlog, Ordering::Relaxed);
                    health.down.store(false, Ordering::Relaxed);
                    health
                        .memory_ratio
                        .store(stats.memory_ratio.to_bits(), Ordering::Relaxed);
                }
                // Its last known length stays cached for backpressure.
                Err(e) if e.code().is_none() => health.down.store(true, Ordering::Relaxed),
                Err(_) => {}
            }
        }
        QueueState::total(reads)
    }
}

/// The oldest event time accepted under a retention of `keep`, as an age: `keep` less an hour
/// (less half of `keep` when it is under two hours). The margin is the time the queue has to
/// store an accepted event before retention could take it; so nothing accepted is due for
/// deletion when it is answered 200, nor when it is stored after up to an hour in the queue.
pub fn retention_window(keep: Duration) -> time::Duration {
    let margin = Duration::from_secs(3600).min(keep / 2);
    time::Duration::try_from(keep - margin).unwrap_or(time::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_the_retention_less_an_hour_or_half_of_a_short_one() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(retention_window(h(720)), time::Duration::hours(719));
        assert_eq!(retention_window(h(2)), time::Duration::hours(1));
        assert_eq!(retention_window(h(1)), time::Duration::minutes(30));
        assert_eq!(
            retention_window(Duration::from_secs(1)),
            time::Duration::milliseconds(500)
        );
    }
}
