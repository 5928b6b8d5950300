//! What the queue looks like, as both binaries read and export it: one [`QueueState`] per shard,
//! the total over the shards that answered, and the `eventtracker_queue_*` gauges. Owning the
//! reading and the gauges here makes `eventtracker_queue_backlog` and the lag mean the same in
//! ingest-api and the flusher:
//!
//! - backlog and lag cover the shards that answered the last read; a shard that did not is
//!   counted in `eventtracker_queue_shards_unreachable`, not in the backlog (its last known
//!   length may be long gone, or long grown);
//! - when no shard answered, the state is unknown: `eventtracker_queue_state_known` is 0 and the
//!   other queue gauges are NaN, never their last reading (which `max()` in the alerting rules
//!   would take for the truth; NaN it skips, and dashboards draw a gap).

use std::time::Duration;

use crate::{Layout, QueueError, Shared};

/// The gauge both binaries export for [`QueueState::memory_ratio`] (the largest of any shard's
/// node), and its help text.
pub const MEMORY_RATIO_GAUGE: &str = "eventtracker_redis_memory_ratio";
pub const MEMORY_RATIO_HELP: &str = "Redis memory used over maxmemory (the fullest node holding a shard; 0 without maxmemory); at 1 Redis refuses writes";

const BACKLOG: &str = "eventtracker_queue_backlog";
const LAG: &str = "eventtracker_queue_lag_seconds";
const UNREACHABLE: &str = "eventtracker_queue_shards_unreachable";
const KNOWN: &str = "eventtracker_queue_state_known";
const PENDING: &str = "eventtracker_queue_pending";
const DEAD: &str = "eventtracker_queue_dead_letters";

/// One shard, or the whole queue (see [`QueueState::total`]), as last read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueState {
    /// Entries in the stream(s): the backlog.
    pub backlog: u64,
    /// Age of the oldest entry (an entry ID starts with its creation time in milliseconds).
    pub lag: Duration,
    /// Entries delivered to a consumer of the group and not yet acknowledged: read only when a
    /// group is given (the flusher), else 0.
    pub pending: u64,
    /// Entries in the dead-letter stream(s): read only when a group is given, else 0.
    pub dead: u64,
    /// Shards that could not be read (their node is down): not in the other numbers.
    pub unreachable: usize,
    /// The (fullest) node's memory as Redis counts it for `maxmemory` (used memory less the
    /// replication and AOF buffers), over `maxmemory`; 0 when no `maxmemory` is set. At 1 the
    /// node refuses every write that may grow memory.
    pub memory_ratio: f64,
    /// Whether at least one shard was read: false before the first reading and after a read no
    /// shard answered (the numbers above mean nothing then).
    pub known: bool,
}

impl QueueState {
    /// The whole queue from every shard's read: sums of the counts, the largest lag and memory
    /// ratio, and how many shards failed. The last error when none could be read.
    pub fn total<E>(reads: impl IntoIterator<Item = Result<QueueState, E>>) -> Result<Self, E> {
        let mut total = QueueState {
            known: true,
            ..Default::default()
        };
        let (mut read, mut last) = (0, None);
        for shard in reads {
            match shard {
                Ok(s) => {
                    read += 1;
                    total.backlog += s.backlog;
                    total.pending += s.pending;
                    total.dead += s.dead;
                    total.lag = total.lag.max(s.lag);
                    total.memory_ratio = total.memory_ratio.max(s.memory_ratio);
                }
                Err(e) => {
                    total.unreachable += 1;
                    last = Some(e);
                }
            }
        }
        match last {
            Some(e) if read == 0 => Err(e),
            _ => Ok(total),
        }
    }

    /// Exports this reading; with `group` (the flusher) the pending and dead-letter counts too.
    pub fn publish(&self, group: bool) {
        metrics::gauge!(BACKLOG).set(self.backlog as f64);
        metrics::gauge!(LAG).set(self.lag.as_secs_f64());
        metrics::gauge!(UNREACHABLE).set(self.unreachable as f64);
        metrics::gauge!(MEMORY_RATIO_GAUGE).set(self.memory_ratio);
        metrics::gauge!(KNOWN).set(1.0);
        if group {
            metrics::gauge!(PENDING).set(self.pending as f64);
            metrics::gauge!(DEAD).set(self.dead as f64);
        }
    }

    /// Not one of the `shards` answered: the readings are unknown, not their last values (which
    /// would say "empty" while the backlog grows).
    pub fn publish_unknown(shards: usize, group: bool) {
        metrics::gauge!(UNREACHABLE).set(shards as f64);
        metrics::gauge!(KNOWN).set(0.0);
        let mut unknown = vec![BACKLOG, LAG, MEMORY_RATIO_GAUGE];
        if group {
            unknown.extend([PENDING, DEAD]);
        }
        for gauge in unknown {
            metrics::gauge!(gauge).set(f64::NAN);
        }
    }

    /// Describes the gauges [`QueueState::publish`] exports (with `group`, the flusher's two
    /// more).
    pub fn describe(group: bool) {
        use metrics::describe_gauge;
        describe_gauge!(
            BACKLOG,
            "Entries in the queue, all shards that answered the last read together (the flushers' backlog); NaN when none answered"
        );
        describe_gauge!(
            LAG,
            "Age of the oldest entry still in the queue (the oldest of the shards that answered); NaN when none answered"
        );
        describe_gauge!(
            UNREACHABLE,
            "Shards whose node did not answer the last queue-state read (not in the backlog)"
        );
        describe_gauge!(
            KNOWN,
            "1 when the last queue-state read reached at least one shard; 0 when none answered (the queue gauges are NaN then, not their last reading)"
        );
        describe_gauge!(MEMORY_RATIO_GAUGE, MEMORY_RATIO_HELP);
        if group {
            describe_gauge!(
                PENDING,
                "Entries delivered to a flusher and not yet acknowledged (no backlog signal)"
            );
            describe_gauge!(DEAD, "Entries in the dead-letter streams (all shards)");
        }
    }
}

/// Reads every shard at once (see [`read_shard`]).
pub async fn read_shards(
    redis: &Shared,
    layout: &Layout,
    group: Option<&str>,
) -> Vec<Result<QueueState, QueueError>> {
    futures_util::future::join_all(
        (0..layout.shards()).map(|n| read_shard(redis, layout, n, group)),
    )
    .await
}

/// Reads a shard's length, the age of its oldest entry and how full its node's memory is, in
/// one round trip; with a consumer `group`, also its dead-letter length and the group's pending
/// count (0 while the group does not exist).
pub async fn read_shard(
    redis: &Shared,
    layout: &Layout,
    shard: usize,
    group: Option<&str>,
) -> Result<QueueState, QueueError> {
    let key = layout.key(shard);
    let mut pipe = redis::pipe();
    pipe.cmd("XLEN")
        .arg(&key)
        .cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1);
    // EVALSHA routes by its key: on a cluster it asks the node that holds the shard.
    crate::scripts::pipe_evalsha(&mut pipe, &crate::scripts::MEMORY)
        .arg(1)
        .arg(&key);
    let (backlog, oldest, (used, max)): (u64, Vec<(String, redis::Value)>, (u64, u64)) =
        crate::scripts::query_pipe(redis, &crate::scripts::MEMORY, &pipe).await?;
    let lag = oldest
        .first()
        .map(|(id, _)| event_model::queue::entry_age(id, crate::now_since_epoch()))
        .unwrap_or_default();
    // Without maxmemory Redis never refuses a write for memory: the ratio is 0.
    let memory_ratio = if max == 0 {
        0.0
    } else {
        used as f64 / max as f64
    };
    let mut state = QueueState {
        backlog,
        lag,
        memory_ratio,
        known: true,
        ..Default::default()
    };
    if let Some(group) = group {
        let dead = layout.dead_key(shard);
        state.dead = redis
            .query(async |c| redis::cmd("XLEN").arg(&dead).query_async(c).await)
            .await?;
        state.pending = pending(redis, &key, group).await;
    }
    Ok(state)
}

/// The group's pending count on `key`; 0 without a group yet (or when it cannot be read).
async fn pending(redis: &Shared, key: &str, group: &str) -> u64 {
    redis
        .query(async |c| {
            redis::cmd("XPENDING")
                .arg(key)
                .arg(group)
                .query_async::<redis::Value>(c)
                .await
        })
        .await
        .ok()
        .and_then(|v| match v {
            redis::Value::Array(items) | redis::Value::Set(items) => match items.first() {
                Some(redis::Value::Int(n)) => Some(*n as u64),
                _ => None,
            },
            _ => None,
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(backlog: u64, lag_ms: u64, memory_ratio: f64) -> Result<QueueState, &'static str> {
        Ok(QueueState {
            backlog,
            lag: Duration::from_millis(lag_ms),
            pending: 1,
            dead: 2,
            memory_ratio,
            known: true,
            ..Default::default()
        })
    }

    #[test]
    fn the_total_sums_the_shards_that_answered_and_counts_the_others() {
        let total = QueueState::total([shard(5, 10, 0.5), Err("down"), shard(7, 30, 0.2)]).unwrap();
        assert_eq!(
            total,
            QueueState {
                backlog: 12,
                lag: Duration::from_millis(30),
                pending: 2,
                dead: 4,
                unreachable: 1,
                memory_ratio: 0.5,
                known: true,
            }
        );
    }

    #[test]
    fn no_shard_read_is_an_error_not_an_empty_queue() {
        assert_eq!(
            QueueState::total([Err::<QueueState, _>("a"), Err("b")]),
            Err("b")
        );
        assert!(!QueueState::default().known);
    }
}
