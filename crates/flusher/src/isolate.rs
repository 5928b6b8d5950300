//! Writing the groups of rows of one read (the batch, then each often-delivered entry alone)
//! and settling every entry, whatever PostgreSQL answers: committed rows are acknowledged; a
//! batch PostgreSQL refuses for a row's data (or, 3 times in a row, with another SQLSTATE tied
//! to a row) is split until the row is alone, and that row is dead-lettered; while PostgreSQL is
//! unavailable the batch is retried with a backoff, and on shutdown it is left pending for
//! another flusher. Through every write and backoff the claim on the entries in hand is kept
//! fresh.

use std::time::{Duration, Instant};

use event_model::EventView;

use crate::FlusherError;
use crate::consumer::Entry;
use crate::error::sqlstate_class;
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
            let events: Vec<&EventView<'_>> = part.iter().map(|(_, e)| e).collect();
            let write = sink::write(&self.pool, &events, self.config.pg_timeout(), &self.schema);
            let started = Instant::now();
            // One attempt may take up to four `--pg-timeout-ms` (taking a connection, the COPY,
            // the de-duplicating write, the guarded write of corrected rows, each bounded on its
            // own): longer than the claim idle.
            let step = match self.keeping_claim(shard, &part, &mut iso, write).await {
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
                // Fatal: the process stops; the entries stay pending for a flusher that fits.
                Err(WriteError::Schema(e)) => {
                    return Err(match e {
                        FlusherError::Schema(_) => e,
                        other => FlusherError::Schema(other.to_string()),
                    });
                }
            };
            if let Step::LeftPending = step {
                return Ok(());
            }
        }
        // Every entry settled (a row refused after retries is dead-lettered): nothing fails now.
        self.stats.writes.ok(self.index);
        Ok(())
    }

    /// Awaits `work` (a write, a backoff) while re-claiming every entry in hand (`part` and the
    /// parts waiting their turn) a third of `--claim-idle-ms` after the last time, so that no
    /// other worker or flusher takes them over and writes them a second time meanwhile.
    async fn keeping_claim<T>(
        &self,
        shard: usize,
        part: &[Row<'_>],
        iso: &mut Isolation<'_>,
        work: impl Future<Output = T>,
    ) -> T {
        tokio::pin!(work);
        let every = self.keep_every().max(Duration::from_millis(1));
        loop {
            let due = tokio::time::Instant::from_std(iso.last_keep + every);
            tokio::select! {
                out = &mut work => return out,
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
        self.stats.writes.ok(self.index);
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
            return Ok(self
                .retry_later(shard, part, iso, &e, sqlstate_class(&sqlstate))
                .await);
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
        self.retry_later(shard, part, iso, &what, e.postgres_class())
            .await
    }

    /// Waits out the backoff, cut short by shutdown (or leaves everything pending when shutdown
    /// has come), then puts the part back. The claim is kept fresh while waiting: a backoff may
    /// be as long as `--claim-idle-ms`.
    async fn retry_later<'e>(
        &self,
        shard: usize,
        part: Vec<Row<'e>>,
        iso: &mut Isolation<'e>,
        what: &str,
        class: String,
    ) -> Step {
        if self.stopping() {
            log::warn!(
                "shutting down with {} entries unwritten; they stay pending for another flusher",
                iso.pending(&part)
            );
            return Step::LeftPending;
        }
        log::warn!("{what}; retrying in {:?}", iso.backoff);
        telemetry::postgres_error(class);
        self.stats.writes.failing(self.index, what);
        self.stats.backoff();
        let backoff = self.stop.sleep(iso.backoff);
        self.keeping_claim(shard, &part, iso, backoff).await;
        iso.backoff = self.next_backoff(iso.backoff);
        iso.todo.push(part);
        Step::Next
    }

    /// Moves a row PostgreSQL refused to the dead letters, unless the `events` columns no longer
    /// fit what this flusher writes (a column whose type changed refuses every row, some with a
    /// data error such as 22P02): then `FlusherError::Schema`, and nothing is dead-lettered.
    async fn dead_letter_row(
        &self,
        shard: usize,
        entry: &Entry,
        message: String,
        sqlstate: String,
    ) -> Result<(), FlusherError> {
        match sink::check_columns_pooled(&self.pool, self.config.pg_timeout()).await {
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => log::warn!("could not check the events columns before dead-lettering: {e}"),
            Ok(()) => {}
        }
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

    /// Re-claims the entries still in hand (idle time back to 0); [`Worker::keeping_claim`]
    /// calls it on schedule.
    async fn keep_fresh(&self, shard: usize, part: &[Row<'_>], iso: &mut Isolation<'_>) {
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
