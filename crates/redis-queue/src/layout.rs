//! Where the queue lives: the stream key of each shard, its dead-letter stream, and the key that
//! records the shard count.

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

    /// Records the shard count under one count key if none is recorded there yet, and fails
    /// when another count is.
    pub async fn check(&self, redis: &Shared, shard: Option<usize>) -> Result<(), QueueError> {
        let key = self.count_key(shard);
        let (k, n) = (&key, self.shards);
        // SET NX … GET returns the value that was there (nil when this call set it): one
        // atomic round trip, and two processes starting at once cannot both "win".
        let stored: Option<String> = redis
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
        match stored {
            None => {
                log::debug!("recorded {n} queue shard(s) in {key:?}");
                Ok(())
            }
            Some(s) if s == n.to_string() => Ok(()),
            Some(stored) => Err(QueueError::ShardMismatch {
                key: self.base.clone(),
                count_key: key,
                stored,
                configured: n,
            }),
        }
    }

    /// Checks the queue's count key and every shard's copy. The count is recorded in each
    /// shard's slot too, so that a process started while some cluster node is down still
    /// finds a mismatch on the shards it can reach (the others are checked when first used).
    /// Returns which shards were checked; an error on a mismatch, or when nothing answered.
    pub async fn check_all(&self, redis: &Shared) -> Result<Vec<bool>, QueueError> {
        let mut last = None;
        let mut any = false;
        let mut checked = vec![false; self.shards];
        match self.check(redis, None).await {
            Ok(()) => any = true,
            Err(e @ QueueError::ShardMismatch { .. }) => return Err(e),
            Err(e) => last = Some(e),
        }
        for (n, done) in checked.iter_mut().enumerate() {
            if !self.tagged {
                *done = any;
                continue;
            }
            match self.check(redis, Some(n)).await {
                Ok(()) => {
                    *done = true;
                    any = true;
                }
                Err(e @ QueueError::ShardMismatch { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) if !any => Err(e),
            _ => Ok(checked),
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
