//! The drain loop: read a batch, write it, acknowledge it. Also claims a dead flusher's entries,
//! isolates rows PostgreSQL refuses, backs off while PostgreSQL is down, and prunes consumers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use event_model::QueuedEvent;
use event_model::queue::{EVENT_FIELD, VERSION_FIELD};
use tokio::sync::watch;

use crate::FlusherError;
use crate::config::RunConfig;
use crate::sink::{self, WriteError, WritePath};
use crate::stream::{Entry, Stream};
use crate::telemetry;

/// Counters of what this flusher did; logged periodically and read by tests through the log.
#[derive(Debug, Default)]
pub struct Stats {
    pub events_written: AtomicU64,
    pub batches_written: AtomicU64,
    pub dedup_batches: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub claimed: AtomicU64,
    pub backoffs: AtomicU64,
    /// The queue as last read by the gauge task (see `lib.rs`), for the summary line.
    pub queue: std::sync::Mutex<telemetry::QueueState>,
}

impl Stats {
    fn written(&self, events: usize, path: WritePath, took: Duration) {
        self.events_written
            .fetch_add(events as u64, Ordering::Relaxed);
        self.batches_written.fetch_add(1, Ordering::Relaxed);
        let label = match path {
            WritePath::Copy => "copy",
            WritePath::Dedup => {
                self.dedup_batches.fetch_add(1, Ordering::Relaxed);
                "dedup"
            }
        };
        telemetry::batch_written(events, label, took);
        telemetry::backoff(false);
    }

    fn dead(&self, n: usize) {
        self.dead_lettered.fetch_add(n as u64, Ordering::Relaxed);
        telemetry::dead_lettered(n);
    }

    fn claimed(&self, n: usize) {
        self.claimed.fetch_add(n as u64, Ordering::Relaxed);
        telemetry::claimed(n);
    }

    fn backoff(&self) {
        self.backoffs.fetch_add(1, Ordering::Relaxed);
        telemetry::backoff(true);
    }

    pub fn queue(&self) -> telemetry::QueueState {
        self.queue.lock().map(|q| *q).unwrap_or_default()
    }

    pub fn summary(&self) -> String {
        format!(
            "written={} batches={} dedup_batches={} dead_lettered={} claimed={} backoffs={}",
            self.events_written.load(Ordering::Relaxed),
            self.batches_written.load(Ordering::Relaxed),
            self.dedup_batches.load(Ordering::Relaxed),
            self.dead_lettered.load(Ordering::Relaxed),
            self.claimed.load(Ordering::Relaxed),
            self.backoffs.load(Ordering::Relaxed),
        )
    }
}

/// Test-only fault hook: with `ET_FAULT_EXIT_AFTER_COMMIT=1` the process exits right after
/// its first COMMIT, before XACK, as a crash at the worst moment would.
fn fault_exit_after_commit() -> bool {
    std::env::var_os("ET_FAULT_EXIT_AFTER_COMMIT").is_some_and(|v| v == "1")
}

pub struct Flusher {
    pub stream: Stream,
    pub pool: Pool,
    pub config: RunConfig,
    pub stats: Arc<Stats>,
    /// This worker's number in the process: where its first sweep starts; worker 0 reports.
    index: usize,
    shutdown: watch::Receiver<bool>,
}

/// Per shard: whether its consumer group is known to exist, and its backoff after an error.
struct ShardState {
    group_ready: bool,
    retry_at: Instant,
    backoff: Duration,
}

/// Outcome of trying to write rows while shutting down.
enum Written {
    Done,
    Abandoned,
}

impl Flusher {
    /// `stats` is shared by the workers of one process; worker `index` 0 logs it.
    pub fn new(
        stream: Stream,
        pool: Pool,
        config: RunConfig,
        stats: Arc<Stats>,
        index: usize,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Flusher {
            stream,
            pool,
            config,
            stats,
            index,
            shutdown,
        }
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs until shutdown is signalled; the batch in hand is finished first.
    ///
    /// With several shards each pass reads the shards in turn without blocking, starting after
    /// the one read last, and writes the first batch it finds; when a whole sweep finds nothing
    /// it blocks on one shard for `--block-ms / shards`. A shard whose node fails is skipped
    /// (with its own backoff) while the others go on.
    pub async fn run(&mut self) -> Result<(), FlusherError> {
        let claim_every = Duration::from_millis((self.config.claim_idle_ms / 2).max(100));
        let prune_every = Duration::from_secs(60);
        let summary_every = Duration::from_secs(10);
        let idle_summary_every = Duration::from_secs(300);
        let mut last_claim = Instant::now() - claim_every;
        let mut last_prune = Instant::now() - prune_every;
        let mut last_summary = Instant::now();
        let mut written_at_summary = 0u64;
        let n = self.stream.shards();
        let mut shards: Vec<ShardState> = (0..n)
            .map(|_| ShardState {
                group_ready: false,
                retry_at: Instant::now(),
                backoff: self.backoff_start(),
            })
            .collect();
        let mut cursor = self.index % n;
        let block = Duration::from_millis(self.config.block_ms);
        let sweep_block = (block / n as u32).max(Duration::from_millis(10));

        while !self.stopping() {
            let now = Instant::now();
            let mut order: Vec<usize> = (0..n)
                .map(|k| (cursor + k) % n)
                .filter(|&s| shards[s].retry_at <= now)
                .collect();
            if order.is_empty() {
                let next = shards.iter().map(|s| s.retry_at).min().unwrap_or(now);
                self.sleep(next.saturating_duration_since(now)).await;
                continue;
            }
            let mut ready = Vec::with_capacity(order.len());
            for s in order.drain(..) {
                match self.stream.check_shard(s).await {
                    Ok(()) => {}
                    Err(e @ FlusherError::Layout(_)) => return Err(e),
                    Err(e) => {
                        self.shard_trouble(s, &mut shards[s], &e);
                        continue;
                    }
                }
                if !shards[s].group_ready {
                    match self.stream.ensure_group(s).await {
                        Ok(()) => shards[s].group_ready = true,
                        Err(e) => {
                            self.shard_trouble(s, &mut shards[s], &e);
                            continue;
                        }
                    }
                }
                ready.push(s);
            }
            if ready.is_empty() {
                continue;
            }
            if last_prune.elapsed() >= prune_every {
                last_prune = Instant::now();
                for &s in &ready {
                    if let Err(e) = self
                        .stream
                        .remove_idle_consumers(
                            s,
                            Duration::from_secs(self.config.consumer_idle_secs),
                        )
                        .await
                    {
                        log::warn!("pruning idle consumers of shard {s}: {e}");
                    }
                }
            }
            if last_claim.elapsed() >= claim_every {
                last_claim = Instant::now();
                for &s in &ready {
                    if let Err(e) = self.claim_and_write(s).await {
                        self.shard_trouble(s, &mut shards[s], &e);
                    }
                }
                ready.retain(|&s| shards[s].retry_at <= Instant::now());
            }
            // Every 10 s while there is work, every 5 minutes when idle: a quiet log at rest.
            let written = self.stats.events_written.load(Ordering::Relaxed);
            let queue = self.stats.queue();
            let busy = written != written_at_summary || queue.backlog > 0;
            let every = if busy {
                summary_every
            } else {
                idle_summary_every
            };
            if self.index == 0 && last_summary.elapsed() >= every {
                let rate =
                    (written - written_at_summary) as f64 / last_summary.elapsed().as_secs_f64();
                written_at_summary = written;
                last_summary = Instant::now();
                log::info!(
                    "flusher {}: {rate:.0} events/s, backlog {}, lag {:.1}s, {}",
                    self.stream.consumer,
                    queue.backlog,
                    queue.lag.as_secs_f64(),
                    self.stats.summary()
                );
            }
            // One shard: block on it, as ever. Several: a sweep without blocking, then a short
            // block on the next shard when the sweep found nothing.
            let Some(last) = ready.len().checked_sub(1) else {
                continue;
            };
            let mut found = false;
            for (k, &s) in ready.iter().enumerate() {
                let wait = match (n, k == last) {
                    (1, _) => block,
                    (_, true) => sweep_block,
                    (_, false) => Duration::ZERO,
                };
                match self.stream.read_new(s, self.config.batch_size, wait).await {
                    Ok(entries) if entries.is_empty() => {
                        shards[s].backoff = self.backoff_start();
                    }
                    Ok(entries) => {
                        shards[s].backoff = self.backoff_start();
                        if let Err(e) = self.process(s, entries, false).await {
                            self.shard_trouble(s, &mut shards[s], &e);
                        }
                        found = true;
                    }
                    Err(e) => self.shard_trouble(s, &mut shards[s], &e),
                }
                if found || self.stopping() {
                    cursor = (s + 1) % n;
                    break;
                }
            }
            if !found {
                cursor = (cursor + 1) % n;
            }
        }
        Ok(())
    }

    /// A Redis call for one shard failed: that shard waits out its own backoff (doubling up
    /// to --backoff-max-ms), the others go on.
    fn shard_trouble(&self, shard: usize, state: &mut ShardState, e: &FlusherError) {
        if e.is_no_group() {
            state.group_ready = false;
        }
        let wait = state.backoff;
        if self.stream.shards() > 1 {
            log::warn!("redis, shard {shard}: {e}; retrying it in {wait:?}");
        } else {
            log::warn!("redis: {e}; retrying in {wait:?}");
        }
        telemetry::redis_error();
        self.stats.backoff();
        state.retry_at = Instant::now() + wait;
        state.backoff = self.next_backoff(wait);
    }

    fn backoff_start(&self) -> Duration {
        Duration::from_millis(self.config.backoff_initial_ms)
    }

    fn next_backoff(&self, current: Duration) -> Duration {
        (current * 2).min(Duration::from_millis(self.config.backoff_max_ms))
    }

    /// Waits out a backoff step, waking early on shutdown.
    async fn sleep(&self, d: Duration) {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    }

    /// Claims entries a crashed or stuck flusher left pending, and writes them.
    async fn claim_and_write(&mut self, shard: usize) -> Result<(), FlusherError> {
        loop {
            let claimed = self
                .stream
                .claim_stale(
                    shard,
                    Duration::from_millis(self.config.claim_idle_ms),
                    self.config.batch_size,
                )
                .await?;
            if claimed.is_empty() {
                return Ok(());
            }
            let n = claimed.len();
            self.stats.claimed(n);
            log::info!(
                "claimed {n} entries of {} idle for over {} ms",
                self.stream.key(shard),
                self.config.claim_idle_ms
            );
            self.process(shard, claimed, true).await?;
            if n < self.config.batch_size || self.stopping() {
                return Ok(());
            }
        }
    }

    /// Writes one batch of entries and settles each: acknowledged and deleted once its row is
    /// committed, or moved to the dead-letter stream when it cannot be stored.
    async fn process(
        &mut self,
        shard: usize,
        entries: Vec<Entry>,
        claimed: bool,
    ) -> Result<(), FlusherError> {
        let mut dead: Vec<(&Entry, String, Option<String>)> = Vec::new();
        let mut good: Vec<(&Entry, QueuedEvent)> = Vec::with_capacity(entries.len());
        for entry in &entries {
            match QueuedEvent::decode(entry.field(VERSION_FIELD), entry.field(EVENT_FIELD)) {
                Ok(e) => good.push((entry, e)),
                Err(err) => dead.push((entry, format!("undecodable entry: {err}"), None)),
            }
        }
        if !dead.is_empty() {
            for (entry, reason, _) in &dead {
                log::warn!("dead-lettering entry {}: {reason}", entry.id);
            }
            let moved = self.stream.dead_letter(shard, &dead).await?;
            self.stats.dead(moved as usize);
        }

        // Entries delivered many times are retried alone: they may be what broke earlier batches.
        let mut alone = Vec::new();
        if claimed && !good.is_empty() {
            let ids: Vec<String> = good.iter().map(|(e, _)| e.id.clone()).collect();
            let counts = self.stream.delivery_counts(shard, &ids).await?;
            let many: Vec<&String> = counts
                .iter()
                .filter(|(_, n)| *n > self.config.max_deliveries)
                .map(|(id, _)| id)
                .collect();
            if !many.is_empty() {
                log::warn!(
                    "retrying {} entries delivered more than {} times one at a time",
                    many.len(),
                    self.config.max_deliveries
                );
                let (single, rest): (Vec<_>, Vec<_>) =
                    good.into_iter().partition(|(e, _)| many.contains(&&e.id));
                alone = single;
                good = rest;
            }
        }
        let mut groups: Vec<Vec<(&Entry, QueuedEvent)>> = Vec::new();
        if !good.is_empty() {
            groups.push(good);
        }
        groups.extend(alone.into_iter().map(|one| vec![one]));
        for group in groups {
            if let Written::Abandoned = self.write_isolating(shard, group).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Writes rows, splitting the batch around rows PostgreSQL refuses for their data, and
    /// settles every entry. Backs off (keeping the claim fresh) while PostgreSQL is unavailable.
    async fn write_isolating(
        &self,
        shard: usize,
        rows: Vec<(&Entry, QueuedEvent)>,
    ) -> Result<Written, FlusherError> {
        let mut todo = vec![rows];
        let mut backoff = self.backoff_start();
        let mut last_keep = Instant::now();
        // The same unexpected SQLSTATE for the part in hand, and how often in a row.
        let mut streak: Option<(String, u32)> = None;
        // Whether any part of this batch committed: a row refused alone with an unexpected
        // SQLSTATE is condemned only when its siblings could be stored.
        let mut committed_any = false;
        while let Some(part) = todo.pop() {
            // A long isolation or outage must not let another flusher claim these entries.
            self.keep_fresh(shard, &part, &todo, &mut last_keep).await;
            let events: Vec<&QueuedEvent> = part.iter().map(|(_, e)| e).collect();
            let started = Instant::now();
            match sink::write(&self.pool, &events, self.config.pg_timeout()).await {
                Ok(path) => {
                    backoff = self.backoff_start();
                    streak = None;
                    committed_any = true;
                    if fault_exit_after_commit() {
                        log::error!("fault hook: exiting after COMMIT, before XACK");
                        std::process::exit(86);
                    }
                    let ids: Vec<String> = part.iter().map(|(e, _)| e.id.clone()).collect();
                    self.stream.ack_delete(shard, &ids).await?;
                    self.stats.written(events.len(), path, started.elapsed());
                    if path == WritePath::Dedup {
                        log::info!(
                            "batch of {} went through the de-duplication path",
                            events.len()
                        );
                    } else {
                        log::debug!("wrote a batch of {}", events.len());
                    }
                }
                Err(WriteError::Data { sqlstate, message }) if part.len() == 1 => {
                    let (entry, _) = &part[0];
                    log::warn!(
                        "dead-lettering entry {}: PostgreSQL refused it ({sqlstate}): {message}",
                        entry.id
                    );
                    let moved = self
                        .stream
                        .dead_letter(shard, &[(entry, message, Some(sqlstate))])
                        .await?;
                    self.stats.dead(moved as usize);
                }
                Err(WriteError::Data { sqlstate, .. }) => {
                    log::info!(
                        "PostgreSQL refused a row of a batch of {} ({sqlstate}); splitting it",
                        part.len()
                    );
                    let mut part = part;
                    let right = part.split_off(part.len() / 2);
                    todo.push(right);
                    todo.push(part);
                }
                Err(WriteError::Refused { sqlstate, message }) => {
                    let count = match &streak {
                        Some((code, n)) if *code == sqlstate => n + 1,
                        _ => 1,
                    };
                    streak = Some((sqlstate.clone(), count));
                    let whole = part.len() + todo.iter().map(Vec::len).sum::<usize>();
                    if count < sink::REFUSED_STREAK
                        || (part.len() == 1 && !committed_any && todo.is_empty())
                    {
                        // Not yet a pattern, or nothing of this batch could be stored at all:
                        // PostgreSQL's side, not this row's. Retry after a backoff.
                        if self.stopping() {
                            log::warn!(
                                "shutting down with {whole} entries unwritten; they stay pending for another flusher"
                            );
                            return Ok(Written::Abandoned);
                        }
                        log::warn!(
                            "PostgreSQL refused a batch of {} ({sqlstate}, {count} time(s) in a row): {message}; retrying in {backoff:?}",
                            part.len()
                        );
                        telemetry::postgres_error();
                        self.stats.backoff();
                        self.sleep(backoff).await;
                        backoff = self.next_backoff(backoff);
                        todo.push(part);
                        continue;
                    }
                    streak = None;
                    backoff = self.backoff_start();
                    if part.len() > 1 {
                        log::info!(
                            "PostgreSQL refused a batch of {} {} times in a row ({sqlstate}); splitting it",
                            part.len(),
                            sink::REFUSED_STREAK
                        );
                        let mut part = part;
                        let right = part.split_off(part.len() / 2);
                        todo.push(right);
                        todo.push(part);
                    } else if !committed_any {
                        // Alone and refused, but no sibling stored yet: try them first.
                        todo.insert(0, part);
                    } else {
                        let (entry, _) = &part[0];
                        log::warn!(
                            "dead-lettering entry {}: PostgreSQL refused it alone {} times ({sqlstate}) while its siblings were stored: {message}",
                            entry.id,
                            sink::REFUSED_STREAK
                        );
                        let moved = self
                            .stream
                            .dead_letter(shard, &[(entry, message, Some(sqlstate))])
                            .await?;
                        self.stats.dead(moved as usize);
                    }
                }
                Err(WriteError::Transient(e)) => {
                    if self.stopping() {
                        log::warn!(
                            "shutting down with {} entries unwritten; they stay pending for another flusher",
                            part.len() + todo.iter().map(Vec::len).sum::<usize>()
                        );
                        return Ok(Written::Abandoned);
                    }
                    log::warn!("writing to PostgreSQL failed: {e}; retrying in {backoff:?}");
                    telemetry::postgres_error();
                    self.stats.backoff();
                    self.sleep(backoff).await;
                    backoff = self.next_backoff(backoff);
                    todo.push(part);
                }
            }
        }
        Ok(Written::Done)
    }

    /// Re-claims the entries still in hand once a third of `--claim-idle-ms` has passed since
    /// the last time, so no other flusher takes them over while this one is still at work.
    async fn keep_fresh(
        &self,
        shard: usize,
        part: &[(&Entry, QueuedEvent)],
        todo: &[Vec<(&Entry, QueuedEvent)>],
        last_keep: &mut Instant,
    ) {
        if last_keep.elapsed() < Duration::from_millis(self.config.claim_idle_ms / 3) {
            return;
        }
        *last_keep = Instant::now();
        let ids: Vec<String> = part
            .iter()
            .chain(todo.iter().flatten())
            .map(|(e, _)| e.id.clone())
            .collect();
        if let Err(e) = self.stream.keep_claimed(shard, &ids).await {
            log::warn!("refreshing the claim on {} entries: {e}", ids.len());
        }
    }
}
