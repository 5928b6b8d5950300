//! Retention: drops `events` chunks older than `--retention` with TimescaleDB's `drop_chunks`
//! (the Apache build has no retention policies). One flusher at a time: an advisory lock.

use std::time::Duration;

use redis_queue::{Layout, Shared};
use tokio_postgres::Client;

use crate::FlusherError;

/// Arbitrary constant naming EventTracker's retention lock.
const RETENTION_LOCK: i64 = 0x4576_656e_7452_6574;

/// The longest duration `parse_duration` takes: 100 years.
pub const MAX_DURATION_SECS: u64 = 36_500 * 86_400;

/// Parses `30d`, `12h`, `90m`, `3600s` (a whole number and one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, like 30d"))?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h, d or w")),
    };
    // Checked: `213503982334602d` once wrapped to ~17 hours, and data younger than asked went.
    let secs = n
        .checked_mul(unit_secs)
        .filter(|&secs| secs <= MAX_DURATION_SECS)
        .ok_or_else(|| format!("{s:?}: at most {}d (100 years)", MAX_DURATION_SECS / 86_400))?;
    if secs == 0 {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(Duration::from_secs(secs))
}

/// One retention pass of `flusher run --retention`: the retention recorded in Redis, then old
/// chunks dropped.
pub struct Pass {
    pub pool: deadpool_postgres::Pool,
    pub redis: Shared,
    pub layout: Layout,
    pub keep: Duration,
}

impl Pass {
    /// Failures are logged; the next pass tries again.
    pub async fn run(&self) {
        record(&self.redis, &self.layout, self.keep).await;
        match self.pool.get().await {
            Ok(client) => {
                if let Err(e) = drop_old_chunks(&client, self.keep).await {
                    log::warn!("retention: {e}");
                }
            }
            Err(e) => log::warn!("retention: {e}"),
        }
    }
}

/// Records `keep` in Redis, where ingest-api reads it and refuses events older than it (see
/// [`Layout::retention_key`]). Written before every drop, so a deleted or lost key comes back;
/// a failure is logged and the drop goes on (ingest-api keeps the window it last read).
pub async fn record(redis: &Shared, layout: &Layout, keep: Duration) {
    if let Err(e) = layout.record_retention(redis, keep).await {
        log::warn!(
            "retention: cannot record it in {} for ingest-api: {e}",
            layout.retention_key()
        );
    }
}

/// A flusher without `--retention` leaves a recorded retention in place (another flusher or a
/// cron job may apply it), and says so: ingest-api keeps refusing events older than it.
pub async fn warn_if_recorded(redis: &Shared, layout: &Layout) {
    if let Ok(Some(keep)) = layout.recorded_retention(redis).await {
        log::warn!(
            "no --retention here, but {} records {} s: ingest-api refuses events older than \
             that; delete the key if no flusher or cron job applies retention any more",
            layout.retention_key(),
            keep.as_secs()
        );
    }
}

/// Drops chunks whose every row is older than `keep`. Returns the number of chunks dropped, or
/// `None` when another flusher holds the lock or `events` is not a hypertable.
pub async fn drop_old_chunks(client: &Client, keep: Duration) -> Result<Option<u64>, FlusherError> {
    if !crate::migrate::events_is_hypertable(client).await? {
        log::warn!("retention needs TimescaleDB: events is a plain table, nothing dropped");
        return Ok(None);
    }
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&RETENTION_LOCK])
        .await?
        .get(0);
    if !locked {
        log::info!("retention: another flusher is running it");
        return Ok(None);
    }
    let interval = format!("{} seconds", keep.as_secs());
    let result = client
        .query(
            "SELECT drop_chunks('events', older_than => now() - $1::text::interval)",
            &[&interval],
        )
        .await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&RETENTION_LOCK])
        .await?;
    let dropped = result?.len() as u64;
    // Logged when nothing went too: an operator (and a test) can see that a pass ran.
    log::info!("retention: dropped {dropped} chunks older than {interval}");
    Ok(Some(dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in ["", "d", "30", "30x", "0d", "-1d", "1.5d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
