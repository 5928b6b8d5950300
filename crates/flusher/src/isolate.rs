//! Writing the groups of rows of one read (the batch, then each often-delivered entry alone)
//! and settling every entry, whatever PostgreSQL answers: committed rows are acknowledged; a
//! batch PostgreSQL refuses for a row's data (or, 3 times in a row, with another SQLSTATE tied
//! to a row) is split until the row is alone, and that row is dead-lettered; while PostgreSQL is
//! unavailable the batch is retried with a backoff, and on shutdown it is left pending for
//! another flusher. Through every write and backoff the claim on the entries in hand is kept
//! fresh. What to do after each failure is [`crate::policy::decide`]'s; this module carries it
//! out.

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use event_model::EventView;
use service_kit::shutdown::Shutdown;

use crate::FlusherError;
use crate::ack::AckBehind;
use crate::backoff::Backoff;
use crate::config::RunConfig;
use crate::consumer::{Consumer, Entry};
use crate::error::sqlstate_class;
use crate::policy::{self, Action, Failure, Part, Streak};
use crate::sink::{self, SchemaCheck, WriteError, WritePath};
use crate::stats::Stats;
use crate::telemetry;

/// An entry and the event it holds.
pub type Row<'e> = (&'e Entry, EventView<'e>);

/// What a worker lends to write one read's groups: its connections, settings, counters and
/// its acknowledgement in flight.
pub struct BatchWriter<'w> {
    pub consumer: &'w Consumer,
    pub pool: &'w Pool,
    pub config: &'w RunConfig,
    pub stats: &'w Stats,
    /// The worker's number, for the write health (`/readyz`).
    pub index: usize,
    pub stop: &'w Shutdown,
    pub schema: &'w SchemaCheck,
    pub acks: &'w AckBehind,
}

/// The state of one read's writes: its groups and the parts split from them.
struct Isolation<'e> {
    /// Parts still to write; the last is next.
    todo: Vec<Vec<Row<'e>>>,
    backoff: Backoff,
    last_keep: Instant,
    /// The same unexpected SQLSTATE for the part in hand, and how often in a row.
    streak: Option<Streak>,
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

/// A SQLSTATE PostgreSQL refused a part with: a data error, or (`refused`) another one, seen
/// `count` times in a row.
struct Refusal {
    sqlstate: String,
    message: String,
    refused: bool,
    count: u32,
}

/// Where the writes stand after one attempt.
enum Step {
    Next,
    LeftPending,
}

impl BatchWriter<'_> {
    /// Writes groups of rows in order, each in one write, splitting a group around rows
    /// PostgreSQL refuses, and settles every entry. Backs off while PostgreSQL is unavailable,
    /// keeping the claim fresh on every entry still in hand: the groups waiting their turn too.
    /// When shutdown comes while PostgreSQL is unavailable, the entries not yet settled stay
    /// pending for another flusher to claim.
    pub async fn write<'e>(
        &self,
        shard: usize,
        mut groups: Vec<Vec<Row<'e>>>,
    ) -> Result<(), FlusherError> {
        groups.reverse(); // the last is written next
        let mut iso = Isolation {
            todo: groups,
            backoff: Backoff::of(self.config),
            last_keep: Instant::now(),
            streak: None,
            committed_any: false,
        };
        while let Some(part) = iso.todo.pop() {
            let events: Vec<&EventView<'_>> = part.iter().map(|(_, e)| e).collect();
            let write = sink::write(self.pool, &events, self.config.pg_timeout(), self.schema);
            let started = Instant::now();
            // One attempt may take up to four `--pg-timeout-ms` (taking a connection, the COPY,
            // the de-duplicating write, the guarded write of corrected rows, each bounded on its
            // own): longer than the claim idle.
            let failed = match self.keeping_claim(shard, &part, &mut iso, write).await {
                Ok(path) => {
                    iso.backoff.reset();
                    iso.streak = None;
                    iso.committed_any = true;
                    self.acknowledge(shard, &part, path, started).await?;
                    continue;
                }
                Err(e) => e,
            };
            let step = self.failed(shard, part, &mut iso, failed).await?;
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
        self.acks
            .ack(
                self.consumer,
                shard,
                part.iter().map(|(e, _)| e.id.as_str()),
            )
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

    /// Carries out what [`policy::decide`] says about a failed write of `part`.
    async fn failed<'e>(
        &self,
        shard: usize,
        part: Vec<Row<'e>>,
        iso: &mut Isolation<'e>,
        error: WriteError,
    ) -> Result<Step, FlusherError> {
        let failure = match &error {
            WriteError::Data { sqlstate, .. } => Failure::Data { sqlstate },
            WriteError::Refused { sqlstate, .. } => Failure::Refused { sqlstate },
            WriteError::Transient(_) => Failure::Unavailable,
            WriteError::Schema(_) => Failure::Schema,
        };
        let state = Part {
            rows: part.len(),
            committed_any: iso.committed_any,
            others_waiting: !iso.todo.is_empty(),
            stopping: self.stop.is_triggered(),
        };
        let decision = policy::decide(failure, iso.streak.as_ref(), state);
        iso.streak = decision.streak;
        if decision.reset_backoff {
            iso.backoff.reset();
        }
        let count = iso.streak.as_ref().map_or(0, |s| s.count);
        let (sqlstate, message, refused) = match error {
            WriteError::Data { sqlstate, message } => (sqlstate, message, false),
            WriteError::Refused { sqlstate, message } => (sqlstate, message, true),
            WriteError::Transient(e) => {
                let what = format!("writing to PostgreSQL failed: {e}");
                let class = e.postgres_class();
                return Ok(self
                    .backing_off(shard, part, iso, decision.action, &what, class)
                    .await);
            }
            // Fatal: the process stops; the entries stay pending for a flusher that fits.
            WriteError::Schema(e) => {
                return Err(match e {
                    FlusherError::Schema(_) => e,
                    other => FlusherError::Schema(other.to_string()),
                });
            }
        };
        let refusal = Refusal {
            sqlstate,
            message,
            refused,
            count,
        };
        self.refused(shard, part, iso, decision.action, refusal)
            .await
    }

    /// Carries out `action` for a part PostgreSQL refused with a SQLSTATE.
    async fn refused<'e>(
        &self,
        shard: usize,
        part: Vec<Row<'e>>,
        iso: &mut Isolation<'e>,
        action: Action,
        refusal: Refusal,
    ) -> Result<Step, FlusherError> {
        let Refusal {
            sqlstate,
            message,
            refused,
            count,
        } = refusal;
        let rows = part.len();
        match action {
            Action::BackOff | Action::LeavePending => {
                let what = format!(
                    "PostgreSQL refused a batch of {rows} ({sqlstate}, {count} time(s) in a row): {message}"
                );
                let class = sqlstate_class(&sqlstate);
                return Ok(self
                    .backing_off(shard, part, iso, action, &what, class)
                    .await);
            }
            Action::Split if refused => {
                log::info!(
                    "PostgreSQL refused a batch of {rows} {} times in a row ({sqlstate}); splitting it",
                    policy::REFUSED_STREAK
                );
                iso.split(part);
            }
            Action::Split => {
                log::info!(
                    "PostgreSQL refused a row of a batch of {rows} ({sqlstate}); splitting it"
                );
                iso.split(part);
            }
            // Alone and refused, but no sibling stored yet: try them first.
            Action::RetryAlone => iso.todo.insert(0, part),
            Action::DeadLetter => {
                let (entry, _) = &part[0];
                if refused {
                    log::warn!(
                        "dead-lettering entry {}: PostgreSQL refused it alone {} times ({sqlstate}) while its siblings were stored: {message}",
                        entry.id,
                        policy::REFUSED_STREAK
                    );
                } else {
                    log::warn!(
                        "dead-lettering entry {}: PostgreSQL refused it ({sqlstate}): {message}",
                        entry.id
                    );
                }
                self.dead_letter_row(shard, entry, message, sqlstate)
                    .await?;
            }
            Action::Stop => unreachable!("only a schema error stops"),
        }
        Ok(Step::Next)
    }

    /// A backoff [`policy::decide`] asked for: wait it out (or, at shutdown, leave the entries
    /// pending).
    async fn backing_off<'e>(
        &self,
        shard: usize,
        part: Vec<Row<'e>>,
        iso: &mut Isolation<'e>,
        action: Action,
        what: &str,
        class: String,
    ) -> Step {
        if action == Action::LeavePending {
            log::warn!(
                "shutting down with {} entries unwritten; they stay pending for another flusher",
                iso.pending(&part)
            );
            return Step::LeftPending;
        }
        self.retry_later(shard, part, iso, what, class).await
    }

    /// Waits out the backoff, cut short by shutdown, then puts the part back. The claim is
    /// kept fresh while waiting: a backoff may be as long as `--claim-idle-ms`.
    async fn retry_later<'e>(
        &self,
        shard: usize,
        part: Vec<Row<'e>>,
        iso: &mut Isolation<'e>,
        what: &str,
        class: String,
    ) -> Step {
        let wait = iso.backoff.failed();
        log::warn!("{what}; retrying in {wait:?}");
        telemetry::postgres_error(class);
        self.stats.writes.failing(self.index, what);
        self.stats.backoff();
        let backoff = self.stop.sleep(wait);
        self.keeping_claim(shard, &part, iso, backoff).await;
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
        match sink::check_columns_pooled(self.pool, self.config.pg_timeout()).await {
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

    /// Re-claims the entries still in hand (idle time back to 0); [`BatchWriter::keeping_claim`]
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
