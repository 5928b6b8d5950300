//! `loadgen drain`: started right after the flushers, polls XLEN (every shard's, summed) every
//! 5 ms until the queue is empty; fails at once if a watched process (a flusher) exits.
//!
//! The clock starts when the flushers were spawned (`--spawned-at-unix-ms`, default: when
//! drain started) and stops when the queue is empty (a flusher deletes entries only after their
//! rows committed); from it is subtracted the largest start-up a flusher logged before its first
//! read (`flusher <consumer>: ready in <N> ms`, read from `--flusher-logs`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Error;
use crate::output::DrainOut;
use crate::queue::{Queue, QueueArgs};
use crate::stats::{round1, round3};

#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Entries queued at the start (the rate is events / seconds).
    #[arg(long)]
    pub events: u64,
    /// Give up after this long.
    #[arg(long, default_value_t = 300.0)]
    pub timeout_secs: f64,
    /// Fail as soon as one of these processes (comma-separated pids) exits.
    #[arg(long, value_delimiter = ',')]
    pub watch_pids: Vec<u32>,
    /// When the flushers were spawned (milliseconds since the Unix epoch); default: now.
    #[arg(long)]
    pub spawned_at_unix_ms: Option<u64>,
    /// The flushers' logs (comma-separated paths), each holding its `ready in N ms` line.
    #[arg(long, value_delimiter = ',')]
    pub flusher_logs: Vec<String>,
}

pub async fn drain(args: &DrainArgs) -> Result<DrainOut, Error> {
    let spawned = args.spawned_at_unix_ms.unwrap_or_else(unix_ms);
    let launched = Instant::now();
    let timeout = Duration::from_secs_f64(args.timeout_secs);
    let queue = Queue::new(&args.queue)?;
    let con = queue.connect().await?;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    loop {
        tick.tick().await;
        let len = queue.len(&con).await?;
        if len == 0 {
            break;
        }
        if let Some(pid) = args.watch_pids.iter().find(|&&p| !alive(p)) {
            let n = args.events;
            return Err(
                format!("process {pid} exited with {len} of {n} entries still queued").into(),
            );
        }
        if launched.elapsed() > timeout {
            return Err(format!(
                "{len} of {} entries still queued after {timeout:?}",
                args.events
            )
            .into());
        }
    }
    let from_spawn = unix_ms().saturating_sub(spawned) as f64 / 1e3;
    let ready_ms = max_ready_ms(&args.flusher_logs)?;
    let secs = (from_spawn - ready_ms as f64 / 1e3).max(1e-3);
    Ok(DrainOut {
        events: args.events,
        seconds: round3(secs),
        rows_per_sec: round1(args.events as f64 / secs),
        ready_ms,
        seconds_from_spawn: round3(from_spawn),
    })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The largest N of the `ready in N ms` lines, one required in each log.
pub fn max_ready_ms(logs: &[String]) -> Result<u64, Error> {
    let mut max = 0;
    for path in logs {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
        let n = ready_ms(&text).ok_or_else(|| format!("{path}: no 'ready in N ms' line"))?;
        max = max.max(n);
    }
    Ok(max)
}

/// N from the first line holding `flusher <consumer>: ready in <N> ms`.
pub fn ready_ms(log: &str) -> Option<u64> {
    log.lines().find_map(|l| {
        let rest = l.split_once(": ready in ")?.1;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Whether a process runs (a zombie, exited but not yet reaped, does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

#[cfg(test)]
mod tests {
    use super::ready_ms;

    #[test]
    fn reads_the_start_up_from_a_flusher_log() {
        let log = "[2026-11-28T07:38:31Z INFO  flusher::service] connected\n\
                   [2026-11-28T07:38:31Z INFO  flusher::service] flusher 1-1: ready in 23 ms\n";
        assert_eq!(ready_ms(log), Some(23));
        assert_eq!(ready_ms("flusher x: starting\n"), None);
    }
}
