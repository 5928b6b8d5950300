//! `flusher run`: the long-running service. Its steps, in order: check the settings, connect,
//! serve the probes, check the `events` columns (refusing to run when they differ), wait until
//! the queue's shard count is verified, then run the workers (one per `--concurrency`, each a
//! consumer of the group) with the gauge and retention tasks beside them, until shutdown or the
//! first fatal error. On the way out each worker's consumer leaves the group.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use redis_queue::QueueState;
use service_kit::shutdown::Shutdown;

use crate::backoff::Backoff;
use crate::config::{GlobalArgs, RunConfig};
use crate::consumer::Consumer;
use crate::error::FlusherError;
use crate::flush::Worker;
use crate::stats::Stats;
use crate::{retention, sink, telemetry};

/// The longest the start waits for PostgreSQL to show the `events` columns (less when
/// `--pg-timeout-ms` is).
const START_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Drains the queue until `shutdown` resolves, then finishes the batches in hand (within
/// `--shutdown-timeout-secs`) and returns.
pub async fn run(
    common: GlobalArgs,
    config: RunConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), FlusherError> {
    let started = std::time::Instant::now();
    config.check().map_err(FlusherError::Usage)?;
    let name = config
        .consumer
        .clone()
        .unwrap_or_else(default_consumer_name);
    let (redis, check) = crate::consumer::connect(
        &common,
        Duration::from_millis(config.redis_timeout_ms),
        true,
    )?;
    let consumers: Vec<Consumer> = (0..config.concurrency)
        .map(|n| {
            let reader = if config.concurrency == 1 {
                name.clone()
            } else {
                format!("{name}-{n}")
            };
            Consumer::new(
                redis.clone(),
                check.clone(),
                &common.group,
                &reader,
                Duration::from_millis(config.block_ms),
            )
        })
        .collect();
    let pool = sink::pool(
        common.database_url.expose(),
        config.pg_pool_size.max(config.concurrency),
        config.pg_timeout(),
    )?;
    let stats = Arc::new(Stats::default());
    let probes = serve_probes(&config, &consumers[0], &pool, stats.writes.clone())?;
    log_start(&name, &common, &config);
    let stop = Shutdown::new(Duration::from_secs(config.shutdown_timeout_secs));
    stop.trigger_on(async move {
        shutdown.await;
        log::info!("shutting down: finishing the batch in hand");
    });
    let (redis, layout) = (consumers[0].redis().clone(), consumers[0].layout().clone());
    match common.retention {
        Some(keep) => {
            let every = Duration::from_secs(config.retention_every_secs);
            let pass = retention::Pass {
                pool: pool.clone(),
                redis,
                layout,
                keep,
            };
            stop.spawn(retention_loop(pass, every, stop.clone()));
        }
        None => {
            stop.spawn(async move { retention::warn_if_recorded(&redis, &layout).await });
        }
    }
    let schema = Arc::new(sink::SchemaCheck::default());
    // A table that does not fit is refused before any entry is read. PostgreSQL not answering
    // (soon) is no reason to wait: the columns are then checked before the first write.
    let check = sink::check_columns_pooled(&pool, config.pg_timeout().min(START_CHECK_TIMEOUT));
    let checked = tokio::select! {
        checked = check => checked,
        () = stop.triggered() => Ok(()),
    };
    match checked {
        Ok(()) if stop.is_triggered() => {}
        Ok(()) => schema.set_verified(),
        Err(e) if e.is_fatal() => {
            probes.stop(true).await;
            stop.trigger();
            return Err(e);
        }
        Err(e) => log::warn!(
            "cannot check the events columns yet ({e}); they are checked before the first write"
        ),
    }
    let result = match wait_for_layout(&consumers[0], &config, &stop).await {
        Ok(true) => {
            // Benchmarks subtract this from their drain clock (see bench/README.md).
            log::info!(
                "flusher {name}: ready in {} ms",
                started.elapsed().as_millis()
            );
            run_workers(consumers, pool, &config, &name, &stop, stats, schema).await
        }
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    probes.stop(true).await;
    // Whatever ended the run (a worker's fatal error too), the tasks beside it end now.
    stop.trigger();
    if !stop.tasks_done().await {
        log::warn!("background tasks still running at the shutdown deadline: abandoned");
    }
    result
}

/// `<hostname>-<pid>`: unique per process, readable in `XINFO CONSUMERS`.
pub fn default_consumer_name() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "flusher".into());
    format!("{host}-{}", std::process::id())
}

/// Binds `--metrics-bind`, says where (tests and scripts read the line to learn the port when
/// it ends in `:0`), and serves `/healthz`, `/readyz` and `/metrics` on a task of their own.
fn serve_probes(
    config: &RunConfig,
    consumer: &Consumer,
    pool: &Pool,
    writes: Arc<telemetry::WriteHealth>,
) -> Result<actix_web::dev::ServerHandle, FlusherError> {
    let listener = std::net::TcpListener::bind(config.metrics_bind).map_err(|source| {
        FlusherError::MetricsBind {
            addr: config.metrics_bind,
            source,
        }
    })?;
    println!("flusher metrics on http://{}", listener.local_addr()?);
    let probes = telemetry::Probes {
        redis: consumer.redis().clone(),
        layout: consumer.layout().clone(),
        pool: pool.clone(),
        timeout: Duration::from_millis(config.redis_timeout_ms),
        metrics: telemetry::install_metrics(),
        writes,
    };
    let server = telemetry::serve(listener, probes)?;
    let handle = server.handle();
    tokio::spawn(server);
    Ok(handle)
}

fn log_start(name: &str, common: &GlobalArgs, config: &RunConfig) {
    log::info!(
        "flusher {name}: stream {:?}, {} shard(s){}, group {:?}, batch size {}, concurrency {}",
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
}

/// No entry is read before the shard count is known to match the recorded one: a mismatch is
/// fatal, Redis being down is waited out. `Ok(false)`: shutdown came first.
async fn wait_for_layout(
    consumer: &Consumer,
    config: &RunConfig,
    stop: &Shutdown,
) -> Result<bool, FlusherError> {
    let mut backoff = Backoff::of(config);
    loop {
        match consumer.check_layout().await {
            Ok(()) => return Ok(true),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                let wait = backoff.failed();
                log::warn!("cannot check the queue's shard count yet: {e}; retrying in {wait:?}");
                if stop.sleep(wait).await {
                    return Ok(false);
                }
            }
        }
    }
}

/// Runs one worker per consumer until shutdown (bounded by the grace deadline) or the first
/// worker that fails, which stops the others.
async fn run_workers(
    consumers: Vec<Consumer>,
    pool: Pool,
    config: &RunConfig,
    name: &str,
    stop: &Shutdown,
    stats: Arc<Stats>,
    schema: Arc<sink::SchemaCheck>,
) -> Result<(), FlusherError> {
    stop.spawn(queue_gauges(
        consumers[0].query_handle(),
        stats.clone(),
        stop.clone(),
    ));
    let mut workers: futures_util::stream::FuturesUnordered<_> = consumers
        .into_iter()
        .enumerate()
        .map(|(n, consumer)| {
            let mut worker = Worker::new(
                consumer,
                pool.clone(),
                config.clone(),
                stats.clone(),
                n,
                stop.clone(),
                schema.clone(),
            );
            stop.spawn(async move { worker.run().await })
        })
        .collect();
    let all = async {
        let mut result = Ok(());
        while let Some(done) = workers.next().await {
            let failed = match done {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(e) => FlusherError::Panic(e),
            };
            log::error!("stopping: {failed}");
            stop.trigger();
            result = Err(failed);
        }
        result
    };
    let result = tokio::select! {
        result = all => result,
        () = stop.deadline() => {
            log::warn!("shutdown timeout reached; unfinished entries stay pending for another flusher");
            Ok(())
        }
    };
    // After every worker is done, so the totals include each one's last batch.
    log::info!("flusher {name} stopped: {}", stats.summary());
    result
}

/// Reads the queue's state (all shards at once) every 5 s for the gauges and the summary line,
/// apart from the workers, so a shard that does not answer never delays a batch.
async fn queue_gauges(consumer: Consumer, stats: Arc<Stats>, stop: Shutdown) {
    loop {
        match consumer.queue_state().await {
            Ok(q) => {
                q.publish(true);
                if let Ok(mut last) = stats.queue.lock() {
                    *last = q;
                }
            }
            // No shard answered: say so, rather than leave the last reading standing.
            Err(e) => {
                log::debug!("reading the queue state: {e}");
                QueueState::publish_unknown(consumer.shards(), true);
                if let Ok(mut last) = stats.queue.lock() {
                    *last = QueueState::default();
                }
            }
        }
        if stop.sleep(Duration::from_secs(5)).await {
            return;
        }
    }
}

/// Records the retention for ingest-api and drops old chunks, now and then every `every`, until
/// shutdown (one flusher at a time drops: the advisory lock in [`retention::drop_old_chunks`]).
async fn retention_loop(pass: retention::Pass, every: Duration, stop: Shutdown) {
    loop {
        pass.run().await;
        if stop.sleep(every).await {
            return;
        }
    }
}
