//! A worker's loop: sweep the shards, read a batch, hand it to an [`crate::isolate::BatchWriter`]
//! to be written and settled. Between batches it claims a dead flusher's entries, prunes idle consumers and
//! logs a summary; a shard whose node fails waits out its own backoff while the others go on.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use event_model::EventView;
use event_model::queue::{EVENT_FIELD, VERSION_FIELD};
use service_kit::shutdown::Shutdown;

use crate::FlusherError;
use crate::ack::AckBehind;
use crate::backoff::Backoff;
use crate::config::RunConfig;
use crate::consumer::{Consumer, Entry};
use crate::isolate::{BatchWriter, Row};
use crate::stats::Stats;
use crate::telemetry;

/// One reader of the consumer group: reads batches and writes them until shutdown.
pub struct Worker {
    consumer: Consumer,
    pool: Pool,
    config: RunConfig,
    stats: Arc<Stats>,
    /// This worker's number in the process: where its first sweep starts; worker 0 reports.
    index: usize,
    stop: Shutdown,
    /// Whether the `events` columns were checked (see [`crate::sink::write`]).
    schema: Arc<crate::sink::SchemaCheck>,
    /// The acknowledgement of the last committed batch, still running.
    acks: AckBehind,
}

/// Per shard: whether its consumer group is known to exist, and its backoff after an error.
struct ShardBackoff {
    group_ready: bool,
    retry_at: Instant,
    backoff: Backoff,
}

/// When the chores between batches were last done.
struct Chores {
    claim_every: Duration,
    last_claim: Instant,
    last_prune: Instant,
    last_summary: Instant,
    written_at_summary: u64,
}

const PRUNE_EVERY: Duration = Duration::from_secs(60);
const SUMMARY_EVERY: Duration = Duration::from_secs(10);
const IDLE_SUMMARY_EVERY: Duration = Duration::from_secs(300);
/// How long a worker goes on writing one batch while reading the next before it returns to
/// its loop (and its chores).
const READ_AHEAD_FOR: Duration = Duration::from_secs(1);

impl Worker {
    /// `stats` is shared by the workers of one process; worker `index` 0 logs it.
    pub fn new(
        consumer: Consumer,
        pool: Pool,
        config: RunConfig,
        stats: Arc<Stats>,
        index: usize,
        stop: Shutdown,
        schema: Arc<crate::sink::SchemaCheck>,
    ) -> Self {
        Worker {
            consumer,
            pool,
            config,
            stats,
            index,
            stop,
            schema,
            acks: AckBehind::default(),
        }
    }

    /// What writes this worker's batches and settles their entries.
    fn writer(&self) -> BatchWriter<'_> {
        BatchWriter {
            consumer: &self.consumer,
            pool: &self.pool,
            config: &self.config,
            stats: &self.stats,
            index: self.index,
            stop: &self.stop,
            schema: &self.schema,
            acks: &self.acks,
        }
    }

    fn stopping(&self) -> bool {
        self.stop.is_triggered()
    }

    /// Runs until shutdown is signalled; the batch in hand is finished first.
    ///
    /// With several shards each pass reads the shards in turn without blocking, starting after
    /// the one read last, and writes the first batch it finds; when a whole sweep finds nothing
    /// it blocks on one shard for `--block-ms / shards`. A shard whose node fails is skipped
    /// (with its own backoff) while the others go on.
    pub async fn run(&mut self) -> Result<(), FlusherError> {
        let n = self.consumer.shards();
        let mut shards: Vec<ShardBackoff> = (0..n)
            .map(|_| ShardBackoff {
                group_ready: false,
                retry_at: Instant::now(),
                backoff: Backoff::of(&self.config),
            })
            .collect();
        let claim_every = Duration::from_millis((self.config.claim_idle_ms / 2).max(100));
        let mut chores = Chores {
            claim_every,
            last_claim: Instant::now() - claim_every,
            last_prune: Instant::now() - PRUNE_EVERY,
            last_summary: Instant::now(),
            written_at_summary: 0,
        };
        let mut cursor = self.index % n;
        let drained = async {
            while !self.stopping() {
                let mut ready = self.ready_shards(&mut shards, cursor).await?;
                if ready.is_empty() {
                    continue;
                }
                self.chores(&mut chores, &mut ready, &mut shards).await?;
                cursor = self.sweep(&ready, &mut shards, cursor).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = self.acks.settled().await {
            log::warn!("acknowledging the last batch: {e}; its entries stay pending");
        }
        self.leave_group().await;
        drained
    }

    /// On the way out: this worker's consumer leaves the group of every shard where it holds
    /// nothing pending, rather than linger until another flusher prunes it
    /// (`--consumer-idle-secs`).
    async fn leave_group(&self) {
        for s in 0..self.consumer.shards() {
            match self.consumer.leave_group(s).await {
                Ok(true) => log::debug!(
                    "consumer {} left the group of {}",
                    self.consumer.consumer,
                    self.consumer.key(s)
                ),
                Ok(false) => log::info!(
                    "consumer {} stays in the group of {}: it holds pending entries, which \
                     another flusher claims after --claim-idle-ms",
                    self.consumer.consumer,
                    self.consumer.key(s)
                ),
                Err(e) => log::warn!(
                    "consumer {} could not leave the group of {}: {e}",
                    self.consumer.consumer,
                    self.consumer.key(s)
                ),
            }
        }
    }

    /// The shards whose backoff is over, in sweep order from `cursor`, with their shard count
    /// checked and their group known to exist. Sleeps until the next backoff ends when none is
    /// due. A shard-count mismatch is fatal.
    async fn ready_shards(
        &self,
        shards: &mut [ShardBackoff],
        cursor: usize,
    ) -> Result<Vec<usize>, FlusherError> {
        let n = shards.len();
        let now = Instant::now();
        let due: Vec<usize> = (0..n)
            .map(|k| (cursor + k) % n)
            .filter(|&s| shards[s].retry_at <= now)
            .collect();
        if due.is_empty() {
            let next = shards.iter().map(|s| s.retry_at).min().unwrap_or(now);
            self.stop.sleep(next.saturating_duration_since(now)).await;
            return Ok(Vec::new());
        }
        let mut ready = Vec::with_capacity(due.len());
        for s in due {
            match self.consumer.check_shard(s).await {
                Ok(()) => {}
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => {
                    self.shard_trouble(s, &mut shards[s], &e);
                    continue;
                }
            }
            if !shards[s].group_ready {
                match self.consumer.ensure_group(s).await {
                    Ok(()) => shards[s].group_ready = true,
                    Err(e) => {
                        self.shard_trouble(s, &mut shards[s], &e);
                        continue;
                    }
                }
            }
            ready.push(s);
        }
        Ok(ready)
    }

    /// Between batches: prune idle consumers (every minute), claim and write stale entries
    /// (every half `--claim-idle-ms`; a shard that fails is dropped from `ready`), log the
    /// summary (worker 0). A fatal error (see [`FlusherError::is_fatal`]) stops the worker.
    async fn chores(
        &mut self,
        chores: &mut Chores,
        ready: &mut Vec<usize>,
        shards: &mut [ShardBackoff],
    ) -> Result<(), FlusherError> {
        if chores.last_prune.elapsed() >= PRUNE_EVERY {
            chores.last_prune = Instant::now();
            let idle = Duration::from_secs(self.config.consumer_idle_secs);
            for &s in ready.iter() {
                if let Err(e) = self.consumer.remove_idle_consumers(s, idle).await {
                    log::warn!("pruning idle consumers of shard {s}: {e}");
                }
            }
        }
        if chores.last_claim.elapsed() >= chores.claim_every {
            chores.last_claim = Instant::now();
            for &s in ready.iter() {
                match self.claim_and_write(s).await {
                    Err(e) if e.is_fatal() => return Err(e),
                    Err(e) => self.shard_trouble(s, &mut shards[s], &e),
                    Ok(()) => {}
                }
            }
            ready.retain(|&s| shards[s].retry_at <= Instant::now());
        }
        if self.index == 0 {
            self.log_summary(chores);
        }
        Ok(())
    }

    /// Every 10 s while there is work, every 5 minutes when idle: a quiet log at rest.
    fn log_summary(&self, chores: &mut Chores) {
        let written = self.stats.events_written.load(Ordering::Relaxed);
        let queue = self.stats.queue();
        let busy = written != chores.written_at_summary || queue.backlog > 0;
        let every = if busy {
            SUMMARY_EVERY
        } else {
            IDLE_SUMMARY_EVERY
        };
        if chores.last_summary.elapsed() < every {
            return;
        }
        let rate = (written - chores.written_at_summary) as f64
            / chores.last_summary.elapsed().as_secs_f64();
        chores.written_at_summary = written;
        chores.last_summary = Instant::now();
        let backlog = if queue.known {
            format!(
                "backlog {}, lag {:.1}s",
                queue.backlog,
                queue.lag.as_secs_f64()
            )
        } else {
            "backlog and lag unknown (no shard answered)".to_string()
        };
        log::info!(
            "flusher {}: {rate:.0} events/s, {backlog}, {}",
            self.consumer.consumer,
            self.stats.summary()
        );
    }

    /// Reads the ready shards in turn and writes the first batch found. One shard: a blocking
    /// read, as ever. Several: no blocking, but a short block on the last when none had
    /// entries. Returns where the next sweep starts, or the fatal error that stops the worker.
    async fn sweep(
        &mut self,
        ready: &[usize],
        shards: &mut [ShardBackoff],
        cursor: usize,
    ) -> Result<usize, FlusherError> {
        let n = shards.len();
        let block = Duration::from_millis(self.config.block_ms);
        let sweep_block = (block / n as u32).max(Duration::from_millis(10));
        let last = ready.len().saturating_sub(1);
        for (k, &s) in ready.iter().enumerate() {
            let wait = match (n, k == last) {
                (1, _) => block,
                (_, true) => sweep_block,
                (_, false) => Duration::ZERO,
            };
            let found = match self
                .consumer
                .read_new(s, self.config.batch_size, wait)
                .await
            {
                Ok(entries) if entries.is_empty() => {
                    shards[s].backoff.reset();
                    false
                }
                Ok(entries) => {
                    shards[s].backoff.reset();
                    let result = match self.top_up(s, entries).await {
                        Ok(entries) => self.write_reading_ahead(s, entries).await,
                        Err(e) => Err(e),
                    };
                    match result {
                        Err(e) if e.is_fatal() => return Err(e),
                        Err(e) => self.shard_trouble(s, &mut shards[s], &e),
                        Ok(()) => {}
                    }
                    true
                }
                Err(e) => {
                    self.shard_trouble(s, &mut shards[s], &e);
                    false
                }
            };
            if found || self.stopping() {
                return Ok((s + 1) % n);
            }
        }
        Ok((cursor + 1) % n)
    }

    /// Under a backlog (a read came back full), more reads of the same shard without blocking,
    /// up to `--max-copy-rows` entries in all, pipelined in one round trip: one COPY for
    /// several reads, as PostgreSQL's cost is per statement and per commit, not per row. Reads
    /// stay `--batch-size` entries, so a light load is written as soon as it is read.
    async fn top_up(
        &self,
        shard: usize,
        mut entries: Vec<Entry>,
    ) -> Result<Vec<Entry>, FlusherError> {
        if entries.len() == self.config.batch_size && self.copy_rows() > entries.len() {
            let more = self
                .read_more(shard, self.copy_rows() - entries.len())
                .await?;
            entries.extend(more);
        }
        Ok(entries)
    }

    /// The entries a full COPY holds: `--max-copy-rows` rounded down to whole reads (at least
    /// one).
    fn copy_rows(&self) -> usize {
        let batch = self.config.batch_size;
        (self.config.max_copy_rows / batch).max(1) * batch
    }

    /// Up to `n` more entries (whole reads of `--batch-size`), pipelined, without blocking.
    async fn read_more(&self, shard: usize, n: usize) -> Result<Vec<Entry>, FlusherError> {
        let batch = self.config.batch_size;
        self.consumer
            .read_new_times(shard, batch, Duration::ZERO, n.div_ceil(batch))
            .await
    }

    /// Writes a batch. When it was a full COPY (a backlog), the next one is read while it is
    /// written, so that PostgreSQL does not wait for Redis, nor Redis for PostgreSQL; and so on
    /// until a read comes back short. The chain ends after [`READ_AHEAD_FOR`] so that the chores
    /// between batches (claiming a dead flusher's entries, the summary) still run under a
    /// backlog that never ends, and at shutdown; the batch in hand, read ahead or not, is
    /// always written first. A read-ahead batch whose predecessor failed (a Redis error) stays
    /// pending with this consumer and is claimed after `--claim-idle-ms`, as any batch of a
    /// flusher that stopped.
    async fn write_reading_ahead(
        &self,
        shard: usize,
        mut entries: Vec<Entry>,
    ) -> Result<(), FlusherError> {
        let until = Instant::now() + READ_AHEAD_FOR;
        loop {
            let full = entries.len() >= self.copy_rows();
            if !full || self.stopping() || Instant::now() >= until {
                return self.process(shard, entries, false).await;
            }
            let (written, next) = tokio::join!(
                self.process(shard, entries, false),
                self.read_more(shard, self.copy_rows())
            );
            written?;
            entries = next?;
            if entries.is_empty() {
                return Ok(());
            }
        }
    }

    /// A Redis call for one shard failed: that shard waits out its own backoff (doubling up
    /// to --backoff-max-ms), the others go on.
    fn shard_trouble(&self, shard: usize, state: &mut ShardBackoff, e: &FlusherError) {
        if e.is_no_group() {
            state.group_ready = false;
        }
        let wait = state.backoff.failed();
        if self.consumer.shards() > 1 {
            log::warn!("redis, shard {shard}: {e}; retrying it in {wait:?}");
        } else {
            log::warn!("redis: {e}; retrying in {wait:?}");
        }
        telemetry::redis_error();
        self.stats.backoff();
        state.retry_at = Instant::now() + wait;
    }

    /// Claims entries a crashed or stuck flusher left pending, and writes them.
    async fn claim_and_write(&mut self, shard: usize) -> Result<(), FlusherError> {
        loop {
            let claimed = self
                .consumer
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
                self.consumer.key(shard),
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
        &self,
        shard: usize,
        entries: Vec<Entry>,
        claimed: bool,
    ) -> Result<(), FlusherError> {
        let good = self.decode_or_dead_letter(shard, &entries).await?;
        let (good, alone) = if claimed {
            self.split_often_delivered(shard, good).await?
        } else {
            (good, Vec::new())
        };
        let mut groups: Vec<Vec<Row<'_>>> = Vec::new();
        if !good.is_empty() {
            groups.push(good);
        }
        groups.extend(alone.into_iter().map(|one| vec![one]));
        self.writer().write(shard, groups).await
    }

    /// The entries that decode; the others go to the dead letters at once.
    async fn decode_or_dead_letter<'e>(
        &self,
        shard: usize,
        entries: &'e [Entry],
    ) -> Result<Vec<Row<'e>>, FlusherError> {
        let mut dead: Vec<(&Entry, String, Option<String>)> = Vec::new();
        let mut good = Vec::with_capacity(entries.len());
        for entry in entries {
            match EventView::decode(entry.field(VERSION_FIELD), entry.field(EVENT_FIELD)) {
                Ok(e) => good.push((entry, e)),
                Err(err) => dead.push((entry, format!("undecodable entry: {err}"), None)),
            }
        }
        if !dead.is_empty() {
            for (entry, reason, _) in &dead {
                log::warn!("dead-lettering entry {}: {reason}", entry.id);
            }
            let moved = self.consumer.dead_letter(shard, &dead).await?;
            self.stats.dead(moved as usize);
        }
        Ok(good)
    }

    /// Entries delivered more than `--max-deliveries` times are retried alone: they may be what
    /// broke earlier batches. Returns (the rest, those).
    async fn split_often_delivered<'e>(
        &self,
        shard: usize,
        good: Vec<Row<'e>>,
    ) -> Result<(Vec<Row<'e>>, Vec<Row<'e>>), FlusherError> {
        if good.is_empty() {
            return Ok((good, Vec::new()));
        }
        let ids: Vec<String> = good.iter().map(|(e, _)| e.id.clone()).collect();
        let counts = self.consumer.delivery_counts(shard, &ids).await?;
        let many: Vec<&String> = counts
            .iter()
            .filter(|(_, n)| *n > self.config.max_deliveries)
            .map(|(id, _)| id)
            .collect();
        if many.is_empty() {
            return Ok((good, Vec::new()));
        }
        log::warn!(
            "retrying {} entries delivered more than {} times one at a time",
            many.len(),
            self.config.max_deliveries
        );
        let (alone, rest): (Vec<_>, Vec<_>) =
            good.into_iter().partition(|(e, _)| many.contains(&&e.id));
        Ok((rest, alone))
    }
}
