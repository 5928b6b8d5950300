//! flusher: Redis in, PostgreSQL out. Drains the `event_queue` stream through the consumer group
//! in batches, writes each batch with binary COPY in one transaction, and acknowledges and
//! deletes its entries only after COMMIT. Stateless apart from its consumer name: run as many as
//! PostgreSQL can take.

pub mod config;
pub mod deadletters;
pub mod flush;
pub mod migrate;
pub mod retention;
pub mod sink;
pub mod stream;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

pub use config::{Cli, Command, Common, DeadLetterCommand, RunConfig};
use tokio::sync::watch;

/// The one error type of the flusher.
#[derive(Debug, thiserror::Error)]
pub enum FlusherError {
    #[error("{0}")]
    Config(String),
    #[error("redis: {0}")]
    Redis(#[from] redis_queue::redis::RedisError),
    /// The queue's layout in Redis does not match the settings: fatal.
    #[error("{0}")]
    Layout(String),
    #[error("a worker panicked: {0}")]
    Panic(String),
    #[error("redis unavailable: {0}")]
    RedisUnavailable(String),
    #[error("unexpected redis reply: {0}")]
    Protocol(String),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    PostgresPool(String),
    #[error("metrics endpoint")]
    Io(#[from] std::io::Error),
    #[error(
        "cannot listen on {addr} for /metrics, /healthz and /readyz (another flusher on this \
         host? give each its own --metrics-bind or FLUSHER_METRICS_BIND)"
    )]
    MetricsBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// Flags that are fine alone but not together: exit code 2, as clap's own refusals.
    #[error("{0}")]
    Usage(String),
    #[error("migration {name}: {source}")]
    Migration {
        name: &'static str,
        source: tokio_postgres::Error,
    },
}

impl From<redis_queue::QueueError> for FlusherError {
    fn from(e: redis_queue::QueueError) -> Self {
        use redis_queue::QueueError as Q;
        match e {
            Q::Redis(e) => FlusherError::Redis(e),
            Q::Timeout(d) => FlusherError::RedisUnavailable(format!("no answer within {d:?}")),
            Q::Config(s) => FlusherError::Config(s),
            e @ Q::Full => FlusherError::RedisUnavailable(e.to_string()),
            e @ (Q::ShardMismatch { .. } | Q::UnshardedBacklog { .. }) => {
                FlusherError::Layout(e.to_string())
            }
        }
    }
}

/// The shared Redis connection and the check of the queue layout the settings describe
/// (`record`: write the shard count where none is recorded yet).
fn redis_and_layout(
    common: &Common,
    timeout: Duration,
    record: bool,
) -> Result<(redis_queue::Shared, Arc<redis_queue::LayoutCheck>), FlusherError> {
    let connector = redis_queue::Connector::new(&common.redis_url, common.redis_cluster)?;
    let layout = redis_queue::Layout::new(&common.stream_key, common.shards, common.redis_cluster)?;
    Ok((
        redis_queue::Shared::new(connector, timeout),
        Arc::new(redis_queue::LayoutCheck::new(layout, record)),
    ))
}

impl FlusherError {
    /// The consumer group (or the stream) is gone, e.g. after Redis lost its data: re-create it.
    pub fn is_no_group(&self) -> bool {
        matches!(self, FlusherError::Redis(e) if e.code() == Some("NOGROUP"))
    }
}

/// `<hostname>-<pid>`: unique per process, readable in `XINFO CONSUMERS`.
pub fn default_consumer_name() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "flusher".into());
    format!("{host}-{}", std::process::id())
}

/// `flusher migrate`.
pub async fn migrate(common: &Common) -> Result<(), FlusherError> {
    let (mut client, connection) =
        tokio_postgres::connect(&common.database_url, tokio_postgres::NoTls).await?;
    let conn_task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::warn!("postgres connection: {e}");
        }
    });
    let applied = migrate::migrate(&mut client).await?;
    if applied.is_empty() {
        log::info!("schema is up to date");
    }
    if !migrate::events_is_hypertable(&client).await? {
        log::warn!("events is a plain table: TimescaleDB is not installed in this database");
    }
    drop(client);
    let _ = conn_task.await;
    Ok(())
}

/// `flusher retention`: drops old chunks once.
pub async fn retention(common: &Common) -> Result<(), FlusherError> {
    let keep = common
        .retention
        .ok_or_else(|| FlusherError::Config("give --retention (e.g. 30d)".into()))?;
    let (client, connection) =
        tokio_postgres::connect(&common.database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::warn!("postgres connection: {e}");
        }
    });
    let dropped = retention::drop_old_chunks(&client, keep).await?;
    println!("dropped {} chunks", dropped.unwrap_or(0));
    Ok(())
}

/// Runs retention now and then every hour, until shutdown.
async fn retention_loop(
    pool: deadpool_postgres::Pool,
    keep: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match pool.get().await {
            Ok(client) => {
                if let Err(e) = retention::drop_old_chunks(&client, keep).await {
                    log::warn!("retention: {e}");
                }
            }
            Err(e) => log::warn!("retention: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// `flusher dead-letters …`; prints what it did.
pub async fn dead_letters(common: &Common, command: DeadLetterCommand) -> Result<(), FlusherError> {
    use deadletters::Selection;
    // The CLI verifies the shard count but records none: listing must not create a layout.
    let (redis, check) = redis_and_layout(common, Duration::from_secs(10), false)?;
    let stream = stream::Stream::new(
        redis,
        check,
        &common.group,
        "dead-letters-cli",
        Duration::from_secs(1),
    );
    stream.check_layout().await?;
    let pick = |ids: Vec<String>, all: bool| -> Result<Selection, FlusherError> {
        match (all, ids.is_empty()) {
            (true, _) => Ok(Selection::All),
            (false, false) => Ok(Selection::Ids(ids)),
            (false, true) => Err(FlusherError::Config("give dead-letter IDs or --all".into())),
        }
    };
    match command {
        DeadLetterCommand::List { count } => {
            let n = deadletters::list(&stream, count).await?;
            log::info!("{n} dead letters listed");
        }
        DeadLetterCommand::Requeue { ids, all } => {
            let n = deadletters::requeue(&stream, pick(ids, all)?).await?;
            println!("requeued {n} dead letters to {}", common.stream_key);
        }
        DeadLetterCommand::Purge { ids, all } => {
            let n = deadletters::purge(&stream, pick(ids, all)?).await?;
            println!("purged {n} dead letters of {}", common.stream_key);
        }
    }
    Ok(())
}

/// Drains the stream until `shutdown` resolves, then finishes the batch in hand and returns.
pub async fn run(
    common: Common,
    config: RunConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), FlusherError> {
    config.check().map_err(FlusherError::Usage)?;
    let consumer = config
        .consumer
        .clone()
        .unwrap_or_else(default_consumer_name);
    let (redis, check) = redis_and_layout(
        &common,
        Duration::from_millis(config.redis_timeout_ms),
        true,
    )?;
    let layout = check.layout().clone();
    let streams: Vec<_> = (0..config.concurrency)
        .map(|n| {
            let name = if config.concurrency == 1 {
                consumer.clone()
            } else {
                format!("{consumer}-{n}")
            };
            stream::Stream::new(
                redis.clone(),
                check.clone(),
                &common.group,
                &name,
                Duration::from_millis(config.block_ms),
            )
        })
        .collect();
    let pool = sink::pool(
        &common.database_url,
        config.pg_pool_size.max(config.concurrency),
    )?;
    let listener = std::net::TcpListener::bind(config.metrics_bind).map_err(|source| {
        FlusherError::MetricsBind {
            addr: config.metrics_bind,
            source,
        }
    })?;
    // Tests and scripts read this line to learn the port when --metrics-bind ends in :0.
    println!("flusher metrics on http://{}", listener.local_addr()?);
    let probes = telemetry::Probes {
        redis: redis.clone(),
        layout: layout.clone(),
        pool: pool.clone(),
        timeout: Duration::from_millis(config.redis_timeout_ms),
        metrics: telemetry::install_metrics(),
    };
    let server = telemetry::serve(listener, probes)?;
    let server_handle = server.handle();
    tokio::spawn(server);
    log::info!(
        "flusher {consumer}: stream {:?}, {} shard(s){}, group {:?}, batch size {}, concurrency {}",
        common.stream_key,
        common.shards,
        if common.redis_cluster {
            " on a Redis Cluster"
        } else {
            ""
        },
        common.group,
        config.batch_size,
        config.concurrency
    );
    let (tx, rx) = watch::channel(false);
    let tx = Arc::new(tx);
    let grace = Duration::from_secs(config.shutdown_timeout_secs);
    let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_all = tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        log::info!("shutting down: finishing the batch in hand");
        let _ = stop_all.send(true);
        tokio::time::sleep(grace).await;
        let _ = deadline_tx.send(());
    });
    if let Some(keep) = common.retention {
        tokio::spawn(retention_loop(pool.clone(), keep, rx.clone()));
    }
    // No entry is read before the shard count is known to match the recorded one: a mismatch
    // is fatal, Redis being down is waited out.
    let mut wait = Duration::from_millis(config.backoff_initial_ms);
    let mut stop = rx.clone();
    loop {
        match streams[0].check_layout().await {
            Ok(()) => break,
            Err(e @ FlusherError::Layout(_)) => {
                server_handle.stop(true).await;
                return Err(e);
            }
            Err(e) => {
                log::warn!("cannot check the queue's shard count yet: {e}; retrying in {wait:?}");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => {
                        server_handle.stop(true).await;
                        return Ok(());
                    }
                }
                wait = (wait * 2).min(Duration::from_millis(config.backoff_max_ms));
            }
        }
    }
    let stats = Arc::new(flush::Stats::default());
    tokio::spawn(queue_gauges(
        streams[0].query_handle(),
        stats.clone(),
        rx.clone(),
    ));
    let workers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(n, stream)| {
            let mut worker = flush::Flusher::new(
                stream,
                pool.clone(),
                config.clone(),
                stats.clone(),
                n,
                rx.clone(),
            );
            tokio::spawn(async move { worker.run().await })
        })
        .collect();
    // The first worker to fail (a shard-count mismatch found late, a panic) stops the others.
    let all = async {
        let mut result = Ok(());
        let mut workers: futures_util::stream::FuturesUnordered<_> = workers.into_iter().collect();
        while let Some(done) = futures_util::StreamExt::next(&mut workers).await {
            let failed = match done {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(e) => FlusherError::Panic(e.to_string()),
            };
            log::error!("stopping: {failed}");
            let _ = tx.send(true);
            result = Err(failed);
        }
        result
    };
    let result = tokio::select! {
        result = all => result,
        Ok(()) = deadline_rx => {
            log::warn!("shutdown timeout reached; unfinished entries stay pending for another flusher");
            Ok(())
        }
    };
    // After every worker is done, so the totals include each one's last batch.
    log::info!("flusher {consumer} stopped: {}", stats.summary());
    server_handle.stop(true).await;
    result
}

/// Reads the queue's state (all shards at once) every 5 s for the gauges and the summary line,
/// apart from the workers, so a shard that does not answer never delays a batch.
async fn queue_gauges(
    stream: stream::Stream,
    stats: Arc<flush::Stats>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match stream.queue_state().await {
            Ok(q) => {
                q.publish();
                if let Ok(mut last) = stats.queue.lock() {
                    *last = q;
                }
            }
            Err(e) => log::debug!("reading the queue state: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
