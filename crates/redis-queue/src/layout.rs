//! Where the queue lives: the stream key of each shard, its dead-letter stream, and the key that
//! records the shard count.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{QueueError, Shared};

/// The queue's keys for a base stream key and a shard count.
///
/// - One shard on one Redis node: `event_queue` and `event_queue:dead`, the layout from before
///   sharding existed.
/// - Otherwise (several shards, or any count on a Redis Cluster): `event_queue:{0}` …
///   `event_queue:{N-1}` and `event_queue:{n}:dead`. The `{n}` hash tag puts a shard and its
///   dead letters in one slot (so one MULTI/EXEC can move an entry between them) and spreads
///   the shards over the cluster's nodes.
/// - `event_queue:shards` holds the shard count, set by the first process that uses the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    base: String,
    shards: usize,
    tagged: bool,
}

impl Layout {
    pub fn new(base: &str, shards: usize, cluster: bool) -> Result<Self, QueueError> {
        if shards == 0 {
            return Err(QueueError::Config("--shards must be at least 1".into()));
        }
        if base.is_empty() || base.contains(['{', '}']) {
            return Err(QueueError::Config(
                "the stream key must be non-empty and hold no `{` or `}` (shard keys add a hash tag)"
                    .into(),
            ));
        }
        Ok(Layout {
            base: base.to_string(),
            shards,
            tagged: shards > 1 || cluster,
        })
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The stream key of shard `n`.
    pub fn key(&self, n: usize) -> String {
        if self.tagged {
            format!("{}:{{{n}}}", self.base)
        } else {
            self.base.clone()
        }
    }

    /// The dead-letter stream of shard `n`.
    pub fn dead_key(&self, n: usize) -> String {
        format!("{}:dead", self.key(n))
    }

    /// The key recording the shard count: the queue's own (`<key>:shards`), or shard `n`'s
    /// copy (`<key>:{n}:shards`, on the node that holds the shard).
    pub fn count_key(&self, shard: Option<usize>) -> String {
        match shard {
            Some(n) if self.tagged => format!("{}:shards", self.key(n)),
            _ => format!("{}:shards", self.base),
        }
    }

    /// The key recording the retention the flushers apply (`<key>:retention`, in whole
    /// seconds): ingest-api refuses events older than it, so that nothing it accepts is
    /// already due for deletion. Written by every flusher started with `--retention`, at each
    /// pass; left in place by one without (an operator deletes it to turn retention off).
    pub fn retention_key(&self) -> String {
        format!("{}:retention", self.base)
    }

    /// Records `keep` under [`Layout::retention_key`].
    pub async fn record_retention(
        &self,
        redis: &Shared,
        keep: std::time::Duration,
    ) -> Result<(), QueueError> {
        let key = self.retention_key();
        redis
            .query(async |c| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(keep.as_secs())
                    .query_async::<()>(c)
                    .await
            })
            .await
    }

    /// The retention recorded under [`Layout::retention_key`], if any.
    pub async fn recorded_retention(
        &self,
        redis: &Shared,
    ) -> Result<Option<std::time::Duration>, QueueError> {
        let key = self.retention_key();
        let stored: Option<String> = redis
            .query(async |c| redis::cmd("GET").arg(&key).query_async(c).await)
            .await?;
        stored
            .map(|s| match s.parse::<u64>() {
                Ok(secs) if secs > 0 => Ok(std::time::Duration::from_secs(secs)),
                _ => Err(QueueError::Config(format!(
                    "{key} holds {s:?}, not a whole number of seconds above 0"
                ))),
            })
            .transpose()
    }

    /// Verifies (and with `record`, records if absent) the shard count under one count key.
    /// The queue's own key also refuses a sharded layout while the unsharded stream `<key>`
    /// still holds entries (a switch from one shard to several without draining first).
    async fn check(
        &self,
        redis: &Shared,
        shard: Option<usize>,
        record: bool,
    ) -> Result<(), QueueError> {
        // Before recording anything: a refused process must not leave its count behind, or the
        // drain the message asks for would be refused in turn.
        if shard.is_none() && self.tagged {
            let base = &self.base;
            let left: u64 = redis
                .query(async |c| {
                    // XLEN of a key that is no stream (or none) is an error or 0: only a
                    // stream with entries counts.
                    let t: String = redis::cmd("TYPE").arg(base).query_async(c).await?;
                    if t != "stream" {
                        return Ok(0);
                    }
                    redis::cmd("XLEN").arg(base).query_async(c).await
                })
                .await?;
            if left > 0 {
                return Err(QueueError::UnshardedBacklog {
                    key: self.base.clone(),
                    entries: left,
                });
            }
        }
        let key = self.count_key(shard);
        let (k, n) = (&key, self.shards);
        // Read first: a Redis at maxmemory refuses every write, and a process must still start
        // against it when the count is recorded already. Only a missing count is written, with
        // SET NX … GET, which returns the value that was there (nil when this call set it): two
        // processes starting at once cannot both "win".
        let mut stored: Option<String> = redis
            .query(async |c| redis::cmd("GET").arg(k).query_async(c).await)
            .await?;
        if stored.is_none() && record {
            stored = redis
                .query(async |c| {
                    redis::cmd("SET")
                        .arg(k)
                        .arg(n)
                        .arg("NX")
                        .arg("GET")
                        .query_async(c)
                        .await
                })
                .await?;
        }
        match stored {
            Some(s) if s != n.to_string() => {
                return Err(QueueError::ShardMismatch {
                    key: self.base.clone(),
                    count_key: key,
                    stored: s,
                    configured: n,
                });
            }
            None if record => log::debug!("recorded {n} queue shard(s) in {key:?}"),
            _ => {}
        }
        Ok(())
    }

    /// Ok as soon as the node of any shard answers (asked all at once), for readiness probes.
    pub async fn any_shard_answers(&self, redis: &Shared) -> Result<(), QueueError> {
        let probes = (0..self.shards).map(|n| {
            let key = self.key(n);
            Box::pin(async move {
                // EXISTS routes by key: on a cluster it asks the node that holds the shard.
                redis
                    .query(async |c| redis::cmd("EXISTS").arg(&key).query_async::<u64>(c).await)
                    .await
            })
        });
        futures_util::future::select_ok(probes).await.map(|_| ())
    }
}

/// Which of a layout's count keys were verified, shared by the tasks of one process: each is
/// checked once, the unchecked ones again until they answer.
pub struct LayoutCheck {
    layout: Layout,
    record: bool,
    queue: AtomicBool,
    shards: Vec<AtomicBool>,
}

impl LayoutCheck {
    /// `record`: write the count where none is recorded (the binaries); without it a missing
    /// count is fine (the dead-letters CLI only reads).
    pub fn new(layout: Layout, record: bool) -> Self {
        let shards = (0..layout.shards())
            .map(|_| AtomicBool::new(false))
            .collect();
        LayoutCheck {
            layout,
            record,
            queue: AtomicBool::new(false),
            shards,
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Checks the queue's count key and every shard's copy not checked yet, all at once. The
    /// count is recorded in each shard's slot too, so that a process started while a cluster
    /// node is down still finds a mismatch on the shards it reaches (the others are checked
    /// before first use, see [`LayoutCheck::check_shard`]). Fails on a mismatch (fatal, see
    /// [`QueueError::is_fatal`]), or when nothing was ever verified and nothing answers now.
    pub async fn check_all(&self, redis: &Shared) -> Result<(), QueueError> {
        let mut last = None;
        // The queue's own key first, alone: it refuses a leftover unsharded backlog, and then no
        // shard's copy of the count may be recorded either.
        if !self.queue.load(Ordering::Acquire) {
            match self.layout.check(redis, None, self.record).await {
                Ok(()) => self.mark(None),
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        let mut todo: Vec<Option<usize>> = Vec::new();
        if self.layout.tagged {
            todo.extend(
                (0..self.shards.len())
                    .filter(|&n| !self.is_checked(n))
                    .map(Some),
            );
        }
        let results = futures_util::future::join_all(
            todo.iter()
                .map(|&shard| self.layout.check(redis, shard, self.record)),
        )
        .await;
        for (shard, result) in todo.into_iter().zip(results) {
            match result {
                Ok(()) => self.mark(shard),
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        let any = self.queue.load(Ordering::Acquire)
            || (0..self.shards.len()).any(|n| self.is_checked(n));
        match last {
            Some(e) if !any => Err(e),
            _ => Ok(()),
        }
    }

    /// Checks shard `n`'s copy of the count unless it was checked already.
    pub async fn check_shard(&self, redis: &Shared, n: usize) -> Result<(), QueueError> {
        if !self.is_checked(n) {
            let shard = self.layout.tagged.then_some(n);
            self.layout.check(redis, shard, self.record).await?;
            self.mark(shard);
        }
        Ok(())
    }

    pub fn is_checked(&self, n: usize) -> bool {
        if self.layout.tagged {
            self.shards[n].load(Ordering::Acquire)
        } else {
            self.queue.load(Ordering::Acquire)
        }
    }

    fn mark(&self, shard: Option<usize>) {
        match shard {
            Some(n) => self.shards[n].store(true, Ordering::Release),
            None => self.queue.store(true, Ordering::Release),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_on_one_node_keeps_the_old_keys() {
        let l = Layout::new("event_queue", 1, false).unwrap();
        assert_eq!(l.key(0), "event_queue");
        assert_eq!(l.dead_key(0), "event_queue:dead");
        assert_eq!(l.count_key(None), "event_queue:shards");
        assert_eq!(l.count_key(Some(0)), "event_queue:shards");
    }

    #[test]
    fn shards_carry_a_hash_tag() {
        let l = Layout::new("event_queue", 8, false).unwrap();
        assert_eq!(l.key(0), "event_queue:{0}");
        assert_eq!(l.key(7), "event_queue:{7}");
        assert_eq!(l.dead_key(3), "event_queue:{3}:dead");
        assert_eq!(l.count_key(None), "event_queue:shards");
        assert_eq!(l.count_key(Some(3)), "event_queue:{3}:shards");
        let c = Layout::new("event_queue", 1, true).unwrap();
        assert_eq!(c.key(0), "event_queue:{0}");
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert!(Layout::new("q", 0, false).is_err());
        assert!(Layout::new("q{x}", 2, false).is_err());
        assert!(Layout::new("", 2, false).is_err());
    }
}
