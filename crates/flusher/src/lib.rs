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
    Redis(#[from] deadpool_redis::redis::RedisError),
    #[error("redis unavailable: {0}")]
    RedisUnavailable(String),
    #[error("unexpected redis reply: {0}")]
    Protocol(String),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    PostgresPool(String),
    #[error("metrics endpoint: {0}")]
    Io(#[from] std::io::Error),
    #[error("migration {name}: {source}")]
    Migration {
        name: &'static str,
        source: tokio_postgres::Error,
    },
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
    let stream = stream::Stream::new(
        &common.redis_url,
        &common.stream_key,
        &common.group,
        "dead-letters-cli",
        Duration::from_secs(10),
        Duration::from_secs(1),
    )?;
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
            log::info!("{n} dead letters listed from {}", stream.dead_key);
        }
        DeadLetterCommand::Requeue { ids, all } => {
            let n = deadletters::requeue(&stream, pick(ids, all)?).await?;
            println!("requeued {n} dead letters to {}", stream.key);
        }
        DeadLetterCommand::Purge { ids, all } => {
            let n = deadletters::purge(&stream, pick(ids, all)?).await?;
            println!("purged {n} dead letters from {}", stream.dead_key);
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
    if config.batch_size == 0 {
        return Err(FlusherError::Config(
            "--batch-size must be at least 1".into(),
        ));
    }
    let consumer = config
        .consumer
        .clone()
        .unwrap_or_else(default_consumer_name);
    if config.concurrency == 0 {
        return Err(FlusherError::Config(
            "--concurrency must be at least 1".into(),
        ));
    }
    let streams = (0..config.concurrency)
        .map(|n| {
            let name = if config.concurrency == 1 {
                consumer.clone()
            } else {
                format!("{consumer}-{n}")
            };
            stream::Stream::new(
                &common.redis_url,
                &common.stream_key,
                &common.group,
                &name,
                Duration::from_millis(config.redis_timeout_ms),
                Duration::from_millis(config.block_ms),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pool = sink::pool(
        &common.database_url,
        config.pg_pool_size.max(config.concurrency),
    )?;
    let listener = std::net::TcpListener::bind(config.metrics_bind)?;
    // Tests and scripts read this line to learn the port when --metrics-bind ends in :0.
    println!("flusher metrics on http://{}", listener.local_addr()?);
    let probes = telemetry::Probes {
        redis: deadpool_redis::redis::Client::open(common.redis_url.as_str())?,
        pool: pool.clone(),
        timeout: Duration::from_millis(config.redis_timeout_ms),
        metrics: telemetry::install_metrics(),
    };
    let server = telemetry::serve(listener, probes)?;
    let server_handle = server.handle();
    tokio::spawn(server);
    log::info!(
        "flusher {consumer}: stream {:?}, group {:?}, batch size {}, concurrency {}",
        common.stream_key,
        common.group,
        config.batch_size,
        config.concurrency
    );
    let (tx, rx) = watch::channel(false);
    let grace = Duration::from_secs(config.shutdown_timeout_secs);
    let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        log::info!("shutting down: finishing the batch in hand");
        let _ = tx.send(true);
        tokio::time::sleep(grace).await;
        let _ = deadline_tx.send(());
    });
    if let Some(keep) = common.retention {
        tokio::spawn(retention_loop(pool.clone(), keep, rx.clone()));
    }
    let stats = Arc::new(flush::Stats::default());
    let workers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(n, stream)| {
            let mut worker = flush::Flusher::new(
                stream,
                pool.clone(),
                config.clone(),
                stats.clone(),
                n == 0,
                rx.clone(),
            );
            tokio::spawn(async move { worker.run().await })
        })
        .collect();
    let all = async {
        let mut result = Ok(());
        for w in workers {
            match w.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(e) => result = Err(FlusherError::Config(format!("a worker panicked: {e}"))),
            }
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
