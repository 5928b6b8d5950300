//! `loadgen fill`: queues N events straight into the stream, `chunk` XADDs per MULTI/EXEC (as
//! ingest-api does). With shards the events are spread evenly over `K:{0}` … `K:{N-1}`, each
//! MULTI/EXEC going to one shard.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use time::OffsetDateTime;

use crate::Error;
use crate::events::EventGen;
use crate::output::FillOut;
use crate::queue::{Queue, QueueArgs};
use crate::stats::{round1, round3};

#[derive(clap::Args, Debug)]
pub struct FillArgs {
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Events to queue.
    #[arg(long)]
    pub events: usize,
    /// Redis connections sending the pipelines.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// XADDs per MULTI/EXEC.
    #[arg(long, default_value_t = 100)]
    pub chunk: usize,
}

pub async fn fill(args: &FillArgs) -> Result<FillOut, Error> {
    let queue = Queue::new(&args.queue)?;
    // Encode everything first: what is timed is Redis taking the MULTI/EXEC pipelines.
    let pipes = Arc::new(pipelines(&queue.keys, args.events, args.chunk.max(1)));
    let next = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for _ in 0..args.connections {
        conns.push(queue.connect().await?);
    }
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut con| {
            let (pipes, next) = (pipes.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(p) = pipes.get(i) else { break };
                    p.query_async::<()>(&mut con).await?;
                }
                Ok::<_, redis::RedisError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(FillOut {
        events: args.events as u64,
        seconds: round3(secs),
        events_per_sec: round1(args.events as f64 / secs),
        shards: queue.keys.len(),
    })
}

/// Shard n gets events / shards entries (the first events % shards one more), in pipelines of
/// `chunk` XADDs to that shard alone; the pipelines go shard by shard in turn.
fn pipelines(keys: &[String], events: usize, chunk: usize) -> Vec<redis::Pipeline> {
    let events_gen = EventGen::new();
    let now = OffsetDateTime::now_utc();
    let shards = keys.len();
    let mut per_shard: Vec<Vec<redis::Pipeline>> = Vec::with_capacity(shards);
    for (n, key) in keys.iter().enumerate() {
        let mut left = events / shards + usize::from(n < events % shards);
        let mut pipes = Vec::with_capacity(left.div_ceil(chunk));
        while left > 0 {
            let k = left.min(chunk);
            left -= k;
            let encoded = (0..k).map(|_| events_gen.queued(events_gen.ids.next(), now).encode());
            pipes.push(redis_queue::append::events(key, encoded));
        }
        per_shard.push(pipes);
    }
    let rounds = per_shard.iter().map(Vec::len).max().unwrap_or(0);
    let mut pipes = Vec::with_capacity(events.div_ceil(chunk) + shards);
    let mut its: Vec<_> = per_shard.into_iter().map(Vec::into_iter).collect();
    for _ in 0..rounds {
        pipes.extend(its.iter_mut().filter_map(Iterator::next));
    }
    pipes
}
