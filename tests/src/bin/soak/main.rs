//! `scripts/soak`: a long run that looks for slow leaks and for loss under routine faults.
//!
//! A private Redis (AOF `always`) and PostgreSQL + TimescaleDB, one ingest-api and two flushers.
//! First the pipeline's drain rate is measured (a burst of events, ingest to rows); then a load
//! paced at half of it runs for the given time while flusher B is SIGKILLed and restarted every
//! minute (a run under 3 minutes: three times) and flusher A never is. Every 30 s it prints the RSS and open file descriptors of
//! ingest-api and flusher A; at the end `acked=… stored=… lost=… duplicated=…`. Fails on any
//! loss or duplicate, and (runs of 3 minutes or more) if the RSS or the descriptors of either
//! grew more than 20 % between minute 2 and the end.
//!
//! The run reads as its steps: [`Rig::start`] starts the processes, [`load`] measures the drain
//! rate and then paces the load, [`watch`] samples footprints and kills flusher B while it runs,
//! [`verify`] drains the pipeline and checks the promise and the growth.

mod load;
mod verify;
mod watch;

use std::time::Duration;

use et_tests::*;

#[tokio::main]
async fn main() {
    let total = parse_args();
    let mut rig = Rig::start().await;
    let load = load::Load::new(&rig.ingest);
    let drain_rate = load.calibrate(&rig.db).await;
    let rate = drain_rate / 2.0;
    println!(
        "soak: {:.0} s; drain rate {drain_rate:.0} events/s, load paced at {rate:.0} events/s; ingest-api pid {}, flusher A pid {} (never killed), flusher B killed every minute",
        total.as_secs_f64(),
        rig.ingest.proc.pid(),
        rig.flusher_a.proc.pid()
    );

    let paced = load.paced(rate);
    let mut watched = watch::watch(&mut rig, &load, total).await;
    let sent = load.stop(paced).await;
    watched.last_sample(&rig);

    let outcome = verify::check(&rig, &sent).await;
    verify::report(total, &watched, &sent, &outcome);
}

/// Everything a run starts: Redis, PostgreSQL with a migrated database, one ingest-api and
/// flushers A and B. Fields drop the processes first, servers last.
pub(crate) struct Rig {
    pub flusher_a: Flusher,
    pub flusher_b: Flusher,
    pub ingest: Ingest,
    pub db: TestDb,
    /// Kept running for `db`.
    _pg: PgServer,
    pub redis: RedisServer,
}

/// The queue's stream key.
pub(crate) const KEY: &str = "event_queue";

impl Rig {
    async fn start() -> Rig {
        let redis = RedisServer::start();
        let pg = PgServer::start();
        let db = TestDb::migrated(&pg.admin_url()).await;
        let ingest = Ingest::start(&redis.url(), KEY, &[]);
        let flusher_a = Rig::flusher(&redis, &db);
        let flusher_b = Rig::flusher(&redis, &db);
        Rig {
            flusher_a,
            flusher_b,
            ingest,
            db,
            _pg: pg,
            redis,
        }
    }

    fn flusher(redis: &RedisServer, db: &TestDb) -> Flusher {
        Flusher::start(
            &redis.url(),
            &db.url,
            KEY,
            &["--claim-idle-ms", "5000"],
            &[],
        )
    }

    /// Flusher B SIGKILLed and a new one started in its place.
    pub fn kill_flusher_b(&mut self) {
        self.flusher_b.proc.signal("KILL");
        self.flusher_b.proc.wait_exit(Duration::from_secs(10));
        self.flusher_b = Rig::flusher(&self.redis, &self.db);
    }
}

/// A long run at half the measured drain rate, a flusher SIGKILLed every minute; fails on any
/// loss, duplicate, or growth of memory or descriptors.
#[derive(clap::Parser)]
#[command(name = "soak")]
struct Opts {
    /// How long, in minutes.
    #[arg(long, default_value_t = 10, conflicts_with = "seconds")]
    minutes: u64,
    /// How long, in seconds (instead of --minutes).
    #[arg(long)]
    seconds: Option<u64>,
}

fn parse_args() -> Duration {
    let o = <Opts as clap::Parser>::parse();
    Duration::from_secs(o.seconds.unwrap_or(60 * o.minutes))
}
