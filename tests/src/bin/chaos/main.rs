//! `scripts/chaos`: a Jepsen-style total-queue check of EventTracker's delivery promise.
//!
//! Starts a private Redis (AOF, `appendfsync always`), a private PostgreSQL + TimescaleDB, one
//! ingest-api and three flushers. Concurrent clients send events with client-chosen `event_id`s,
//! retrying each batch on 503 or a connection error until it is acknowledged. Meanwhile a random
//! flusher is SIGKILLed and restarted every few seconds, Redis is SIGKILLed and restarted once (the
//! flushers paused around it, so the AOF reload is checked to bring back every entry),
//! PostgreSQL is stopped for 10 s once, Redis runs out of memory once (maxmemory lowered under
//! load, then lifted) and PostgreSQL is frozen (SIGSTOP) past the flushers' write timeout once. Then the pipeline drains and the check runs: every
//! acknowledged event stored exactly once, no row that was never sent, nothing pending.
//! Exits non-zero on any loss, duplicate, unexpected row, or fault that did not happen.
//!
//! With `--cluster` the queue is a local 3-master Redis Cluster with 8 shards and two ingest-api
//! processes share the clients; instead of the whole Redis, the cluster node holding the most
//! shards is SIGKILLed and restarted while the load goes on.
//!
//! The run reads as its steps: [`Rig::start`] starts the processes, [`load`] sends the events,
//! [`faults`] injects every fault while the load goes on, [`verify`] drains the pipeline and
//! checks the promise.

mod faults;
mod load;
mod verify;

use std::time::Instant;

use et_tests::*;

/// Faults injected into a running pipeline under load; fails on any loss or duplicate.
#[derive(clap::Parser)]
#[command(name = "chaos")]
pub(crate) struct Opts {
    /// Events sent in all.
    #[arg(long, default_value_t = 50_000)]
    pub events: usize,
    /// The load is spread over this long, so that every fault lands while events flow.
    #[arg(long, default_value_t = 25)]
    pub seconds: u64,
    /// Clients sending at once.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Events per request.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// On a Redis Cluster of its own (8 shards) instead of one node.
    #[arg(long)]
    pub cluster: bool,
}

/// Shards of the queue in `--cluster` mode.
pub(crate) const CLUSTER_SHARDS: usize = 8;

#[tokio::main]
async fn main() {
    let opts = <Opts as clap::Parser>::parse();
    let started = Instant::now();
    let mut rig = Rig::start(&opts).await;
    rig.announce(&opts);

    let load = load::Load::start(&opts, &rig.ingests);
    let mut faults = faults::inject_while_loading(&mut rig, &load).await;
    let sent = load.finish().await;
    let load_time = started.elapsed();

    let drained = verify::drain(&rig.queue, &rig.key).await;
    faults.pg_errors += verify::pg_errors_of(&rig.flushers).await;
    for f in &mut rig.flushers {
        let _ = f.proc.terminate();
    }
    let outcome = verify::check(&rig.db, &sent).await;
    verify::report(&opts, &faults, &sent, load_time, &drained, &outcome);
}

/// Everything a run starts: the queue, PostgreSQL with a migrated database, the ingest-api
/// processes and three flushers. Fields drop flushers first, servers last.
pub(crate) struct Rig {
    pub flushers: Vec<Flusher>,
    pub ingests: Vec<Ingest>,
    pub db: TestDb,
    pub key: String,
    pub pg: PgServer,
    pub queue: Queue,
}

impl Rig {
    async fn start(opts: &Opts) -> Rig {
        let queue = if opts.cluster {
            Queue::Cluster(Box::new(RedisCluster::start()))
        } else {
            Queue::Single(RedisServer::start())
        };
        let pg = PgServer::start();
        let db = TestDb::migrated(&pg.admin_url()).await;
        let key = "event_queue".to_string();
        let mut ingest_flags = vec!["--redis-timeout-ms".to_string(), "1000".to_string()];
        ingest_flags.extend(queue.flags());
        let ingest_flags: Vec<&str> = ingest_flags.iter().map(String::as_str).collect();
        let ingests: Vec<Ingest> = (0..if opts.cluster { 2 } else { 1 })
            .map(|_| Ingest::start(&queue.url(), &key, &ingest_flags))
            .collect();
        let mut rig = Rig {
            flushers: Vec::new(),
            ingests,
            db,
            key,
            pg,
            queue,
        };
        rig.flushers = (0..3).map(|_| rig.flusher()).collect();
        rig
    }

    /// A new flusher on the run's queue and database.
    pub fn flusher(&self) -> Flusher {
        let mut flags = vec!["--claim-idle-ms", "2000", "--redis-timeout-ms", "1000"];
        let extra = self.queue.flags();
        flags.extend(extra.iter().map(String::as_str));
        Flusher::start(&self.queue.url(), &self.db.url, &self.key, &flags, &[])
    }

    fn announce(&self, opts: &Opts) {
        println!(
            "chaos: {} events, {} clients, batches of {}, {} ingest-api, 3 flushers, {}, PostgreSQL on :{}",
            opts.events,
            opts.clients,
            opts.batch,
            self.ingests.len(),
            match &self.queue {
                Queue::Single(r) => format!("Redis on :{}", r.port),
                Queue::Cluster(c) => format!(
                    "Redis Cluster on :{:?} with {CLUSTER_SHARDS} shards",
                    c.ports()
                ),
            },
            self.pg.port
        );
    }
}

/// The queue's Redis: one server, or a cluster.
pub(crate) enum Queue {
    Single(RedisServer),
    Cluster(Box<RedisCluster>),
}

impl Queue {
    pub fn url(&self) -> String {
        match self {
            Queue::Single(r) => r.url(),
            Queue::Cluster(c) => c.urls(),
        }
    }

    /// Flags both binaries need for this queue.
    pub fn flags(&self) -> Vec<String> {
        match self {
            Queue::Single(_) => Vec::new(),
            Queue::Cluster(_) => vec![
                "--redis-cluster".into(),
                "--shards".into(),
                CLUSTER_SHARDS.to_string(),
            ],
        }
    }

    /// Entries, pending entries and dead letters, all shards together.
    pub async fn totals(&self, key: &str) -> (u64, u64, u64) {
        match self {
            Queue::Single(r) => {
                let mut c = redis_conn(&r.url()).await;
                (
                    xlen(&mut c, key).await,
                    pending(&mut c, key, "flushers").await,
                    xlen(&mut c, &format!("{key}:dead")).await,
                )
            }
            Queue::Cluster(cl) => {
                let mut c = cluster_conn(&cl.urls()).await;
                shard_totals(&mut c, key, CLUSTER_SHARDS, "flushers").await
            }
        }
    }
}
