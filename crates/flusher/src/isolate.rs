//! Writing the groups of rows of one read (the batch, then each often-delivered entry alone)
//! and settling every entry, whatever PostgreSQL answers: committed rows are acknowledged; a batch PostgreSQL refuses for a row's data (or, 3 times in a row, with
//! another SQLSTATE tied to a row) is split until the row is alone, and that row is
//! dead-lettered; while PostgreSQL is unavailable the batch is retried with a backoff, its claim
//! kept fresh, and on shutdown it is left pending for another flusher.

use std::time::{Duration, Instant};

use event_model::EventView;

use crate::FlusherError;
use crate::consumer::Entry;
use crate::flush::Worker;
use crate::sink::{self, WriteError, WritePath};
use crate::telemetry;

/// An entry and the event it holds.
pub type Row<'e> = (&'e Entry, EventView<'e>);

/// The state of one read's writes: its groups and the parts split from them.
struct Isolation<'e> {
    /// Parts still to write; the last is next.
    todo: Vec<Vec<Row<'e>>>,
    backoff: Duration,
    last_keep: Instant,
    /// The same unexpected SQLSTATE for the part in hand, and how often in a row.
    streak: Option<(String, u32)>,
    /// Whether any part committed: a row refused alone with an unexpected SQLSTATE is condemned
    /// only when its siblings (rows of the same read) could be stored.
    committed_any: bool,
}

impl<'e> Isolation<'e> {
    fn pending(&self, part: &[Row<'_>]) -> usize {
        part.len() + self.todo.iter().map(Vec::len).sum::<usize>()
    }

    /// Halves `part`; the left half is written next.
    fn split(&mut self, mut part: Vec<Row<'e>>) {
        let right = part.split_off(part.len() / 2);
        self.todo.push(right);
        self.todo.push(part);
    }
}

/// Test-only fault hook: with `ET_FAULT_EXIT_AFTER_COMMIT=1` the process exits right after
/// its first COMMIT, before XACK, as a crash at the worst moment would.
fn fault_exit_after_commit() -> bool {
    std::env::var_os("ET_FAULT_EXIT_AFTER_COMMIT").is_some_and(|v| v == "1")
}

/// What to do after one write attempt.
enum Step {
    Next,
    LeftPending,
}

impl Worker {
    /// Writes groups of rows in order, each in one write, splitting a group around rows
    /// PostgreSQL refuses, and settles every entry. Backs off while PostgreSQL is unavailable,
    /// keeping the claim fresh on every entry still in hand: the groups waiting their turn too.
    /// When shutdown comes while PostgreSQL is unavailable, the entries not yet settled stay
    /// pending for another flusher to claim.
    pub(crate) async fn write_isolating<'e>(
        &self,
        shard: usize,
        mut groups: Vec<Vec<Row<'e>>>,
    ) -> Result<(), FlusherError> {
        groups.reverse(); // the last is written next
        let mut iso = Isolation {
            todo: groups,
            backoff: self.backoff_start(),
            last_keep: Instant::now(),
            streak: None,
            committed_any: false,
        };
        while let Some(part) = iso.todo.pop() {
            // A long isolation or outage must not let another flusher claim these entries.
            self.keep_fresh(shard, &part, &mut iso).await;
            let started = Instant::now();
            let step = match self.write_keeping_claim(shard, &part, &mut iso).await {
                Ok(path) => {
                    iso.backoff = self.backoff_start();
                    iso.streak = None;
                    iso.committed_any = true;
                    self.acknowledge(shard, &part, path, started).await?;
                    Step::Next
                }
                Err(WriteError::Data { sqlstate, message }) => {
                    self.refused_for_data(shard, part, &mut iso, sqlstate, message)
                        .await?
                }
                Err(WriteError::Refused { sqlstate, message }) => {
                    self.refused_otherwise(shard, part, &mut iso, sqlstate, message)
                        .await?
                }
                Err(WriteError::Transient(e)) => self.unavailable(shard, part, &mut iso, &e).await,
            };
            if let Step::LeftPending = step {
                return Ok(());
            }
        }
        Ok(())
    }

    /// One write attempt of `part`. It may take up to three `--pg-timeout-ms` (taking a
    /// connection, the COPY, the de-duplicating write, each bounded on its own), longer than
    /// `--claim-idle-ms`: meanwhile the claim on every entry in hand is refreshed on schedule.
    async fn write_keeping_claim(
        &self,
        shard: usize,
        part: &[Row<'_>],
        iso: &mut Isolation<'_>,
    ) -> Result<WritePath, WriteError> {
        let events: Vec<&EventView<'_>> = part.iter().map(|(_, e)| e).collect();
        let write = sink::write(&self.pool, &events, self.config.pg_timeout());
        tokio::pin!(write);
        let every = self.keep_every().max(Duration::from_millis(1));
        loop {
            let due = tokio::time::Instant::from_std(iso.last_keep + every);
            tokio::select! {
                written = &mut write => return written,
                () = tokio::time::sleep_until(due) => self.keep_fresh(shard, part, iso).await,
            }
        }
    }

    /// The rows are committed: delete and acknowledge their entries.
    async fn acknowledge(
        &self,
        shard: usize,
        part: &[Row<'_>],
        path: WritePath,
        started: Instant,
    ) -> Result<(), FlusherError> {
        if fault_exit_after_commit() {
            log::error!("fault hook: exiting after COMMIT, before XACK");
            std::process::exit(86);
        }
        // Counted when committed, before the entries leave the stream: whoever sees the stream
        // empty sees every row of it counted.
        self.stats.written(part.len(), path, started.elapsed());
        self.ack_behind(shard, part.iter().map(|(e, _)| e.id.as_str()))
            .await?;
        if path == WritePath::Dedup {
            log::info!(
                "batch of {} went through the de-duplication path",
                part.len()
            );
        } else {
            log::debug!("wrote a batch of {}", part.len());
        }
        Ok(())
    }

    /// A data error (22xxx, 23xxx, 54000/54001): split; a row alone is dead-lettered.
    async fn refused_for_data<'e>(
        &self,
        shard: usize,
        part: Vec<Row<'e>>,
        iso: &mut Isolation<'e>,
        sqlstate: String,
        message: String,
    ) -> Result<Step, FlusherError> {
        if part.len() == 1 {
            let (entry, _) = &part[0];
            log::warn!(
                "dead-lettering entry {}: PostgreSQL refused it ({sqlstate}): {message}",
                entry.id
            );
            self.dead_letter_row(shard, entry, message, sqlstate)
                .await?;
        } else {
            log::info!(
                "PostgreSQL refused a row of a batch of {} ({sqlstate}); splitting it",
                part.len()
            );
            iso.split(part);
        }
        Ok(Step::Next)
    }

    /// Another SQLSTATE tied to the write: retried with a backoff until it repeats
    /// [`sink::REFUSED_STREAK`] times, then split as for data errors; a row refused alone is
    /// dead-lettered once a sibling was stored (until then, the others are tried first).
    async fn refused_otherwise<'e>(
        &self,
        shard: usize,
        part: Vec<Row<'e>>,
        iso: &mut Isolation<'e>,
        sqlstate: String,
        message: String,
    ) -> Result<Step, FlusherError> {
        let count = match &iso.streak {
            Some((code, n)) if *code == sqlstate => n + 1,
            _ => 1,
        };
        iso.streak = Some((sqlstate.clone(), count));
        let nothing_else = part.len() == 1 && !iso.committed_any && iso.todo.is_empty();
        if count < sink::REFUSED_STREAK || nothing_else {
            // Not yet a pattern, or nothing of this group could be stored at all: PostgreSQL's
            // side, not this row's.
            let e = format!(
                "PostgreSQL refused a batch of {} ({sqlstate}, {count} time(s) in a row): {message}",
                part.len()
            );
            return Ok(self.retry_later(shard, part, iso, &e).await);
        }
        iso.streak = None;
        iso.backoff = self.backoff_start();
        if part.len() > 1 {
            log::info!(
                "PostgreSQL refused a batch of {} {} times in a row ({sqlstate}); splitting it",
                part.len(),
                sink::REFUSED_STREAK
            );
            iso.split(part);
        } else if !iso.committed_any {
            // Alone and refused, but no sibling stored yet: try them first.
            iso.todo.insert(0, part);
        } else {
            let (entry, _) = &part[0];
            log::warn!(
                "dead-lettering entry {}: PostgreSQL refused it alone {} times ({sqlstate}) while its siblings were stored: {message}",
                entry.id,
                sink::REFUSED_STREAK
            );
            self.dead_letter_row(shard, entry, message, sqlstate)
                .await?;
        }
        Ok(Step::Next)
    }

    /// PostgreSQL is down, restarting or silent: back off and retry the same part.
    async fn unavailable<'e>(
        &self,
        shard: usize,
        part: Vec<Row<'e>>,
        iso: &mut Isolation<'e>,
        e: &FlusherError,
    ) -> Step {
        let what = format!("writing to PostgreSQL failed: {e}");
        self.retry_later(shard, part, iso, &what).await
    }

    /// Waits out the backoff (or leaves everything pending on shutdown), then puts the part back.
    /// The claim is kept fresh while waiting: a backoff as long as `--claim-idle-ms` (or a
    /// failed attempt plus a shorter one) would otherwise let another worker or flusher claim
    /// entries this one still holds, and write them a second time.
    async fn retry_later<'e>(
        &self,
        shard: usize,
        part: Vec<Row<'e>>,
        iso: &mut Isolation<'e>,
        what: &str,
    ) -> Step {
        if self.stopping() {
            log::warn!(
                "shutting down with {} entries unwritten; they stay pending for another flusher",
                iso.pending(&part)
            );
            return Step::LeftPending;
        }
        log::warn!("{what}; retrying in {:?}", iso.backoff);
        telemetry::postgres_error();
        self.stats.backoff();
        let until = Instant::now() + iso.backoff;
        let slice = self.keep_every().max(Duration::from_millis(1));
        loop {
            self.keep_fresh(shard, &part, iso).await;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stop.sleep(left.min(slice)).await {
                break;
            }
        }
        iso.backoff = self.next_backoff(iso.backoff);
        iso.todo.push(part);
        Step::Next
    }

    async fn dead_letter_row(
        &self,
        shard: usize,
        entry: &Entry,
        message: String,
        sqlstate: String,
    ) -> Result<(), FlusherError> {
        let moved = self
            .consumer
            .dead_letter(shard, &[(entry, message, Some(sqlstate))])
            .await?;
        self.stats.dead(moved as usize);
        Ok(())
    }

    /// How often entries in hand are re-claimed: a third of `--claim-idle-ms`.
    fn keep_every(&self) -> Duration {
        Duration::from_millis(self.config.claim_idle_ms / 3)
    }

    /// Re-claims the entries still in hand once a third of `--claim-idle-ms` has passed since
    /// the last time, so no other flusher takes them over while this one is still at work.
    async fn keep_fresh(&self, shard: usize, part: &[Row<'_>], iso: &mut Isolation<'_>) {
        if iso.last_keep.elapsed() < self.keep_every() {
            return;
        }
        iso.last_keep = Instant::now();
        let ids: Vec<String> = part
            .iter()
            .chain(iso.todo.iter().flatten())
            .map(|(e, _)| e.id.clone())
            .collect();
        if let Err(e) = self.consumer.keep_claimed(shard, &ids).await {
            log::warn!("refreshing the claim on {} entries: {e}", ids.len());
        }
    }
}
