//! Network faults that refuse nothing: packets dropped in silence. What they must not leave
//! behind: PostgreSQL backends and Redis clients whose client is gone (a backend holds a
//! `max_connections` slot until the kernel's default keepalive, two hours; Redis keeps a client
//! for its `tcp-keepalive`, ten minutes by default), and connections nobody probes. The
//! partitions need root (a network namespace, `tc`): without it these tests fail and say so.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use et_tests::*;

/// The processes of a partition test, all in a network namespace of the test's own, on its
/// 127.0.0.1: PostgreSQL, Redis and the flusher. The test and ingest-api reach PostgreSQL and
/// Redis through their Unix sockets, which no packet filter touches. Fields drop in order:
/// processes first, the namespace last.
struct Rig {
    flusher: Flusher,
    ingest: Ingest,
    admin: tokio_postgres::Client,
    db: TestDb,
    redis: RedisServer,
    pg: PgServer,
    netns: Netns,
}

/// Which server a partition cuts the flusher off from.
#[derive(Clone, Copy, Debug)]
enum Server {
    Postgres,
    Redis,
}

impl Rig {
    async fn start(flusher_flags: &[&str]) -> Rig {
        let netns = Netns::create();
        // A client's kernel gives up on a connection it closed after 8 retransmissions (about
        // 100 s on a loopback); 2 here (about 1.4 s): what a partition longer than 100 s does,
        // in 45 s. (The services' own TCP user timeout ends them after 30 s anyway.)
        netns.sysctl("net.ipv4.tcp_orphan_retries", "2");
        let pg = PgServer::start_in(&netns);
        let redis = RedisServer::start_in(&netns);
        let db = TestDb::migrated(&pg.socket_url()).await;
        let admin = connect(&pg.socket_url()).await;
        let key = unique("events");
        let ingest = Ingest::start(&redis.unix_url(), &key, &[]);
        let inside_url = format!("postgres://postgres@127.0.0.1:{}/{}", pg.port, db.name);
        let flusher = Flusher::start_in(&netns, &redis.url(), &inside_url, &key, flusher_flags);
        Rig {
            flusher,
            ingest,
            admin,
            db,
            redis,
            pg,
            netns,
        }
    }

    fn port(&self, server: Server) -> u16 {
        match server {
            Server::Postgres => self.pg.port,
            Server::Redis => self.redis.port,
        }
    }

    /// The server's connections from the flusher (by backend pid or Redis client id), with
    /// their client ports.
    async fn server_connections(&self, server: Server) -> BTreeMap<String, u16> {
        match server {
            Server::Postgres => self
                .admin
                .query(
                    "SELECT pid, client_port FROM pg_stat_activity \
                     WHERE application_name = 'eventtracker-flusher' AND client_port IS NOT NULL",
                    &[],
                )
                .await
                .expect("pg_stat_activity")
                .iter()
                .map(|r| {
                    let (pid, port): (i32, i32) = (r.get(0), r.get(1));
                    (pid.to_string(), u16::try_from(port).expect("a port"))
                })
                .collect(),
            // Every TCP client is the flusher's (ingest-api and the test use the Unix socket).
            Server::Redis => {
                let mut conn = redis_conn(&self.redis.unix_url()).await;
                let list: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .query_async(&mut conn)
                    .await
                    .expect("CLIENT LIST");
                list.lines()
                    .filter_map(|line| {
                        let field = |name: &str| {
                            line.split_whitespace()
                                .find_map(|f| f.strip_prefix(name))
                                .map(str::to_string)
                        };
                        let addr = field("addr=")?;
                        let port = addr.strip_prefix("127.0.0.1:")?.parse().ok()?;
                        Some((field("id=")?, port))
                    })
                    .collect()
            }
        }
    }

    /// Of the server's connections from the flusher, those whose client side holds no
    /// established connection any more: left behind by a client that gave up on them.
    async fn abandoned(&self, server: Server) -> BTreeSet<String> {
        let on_server = self.server_connections(server).await;
        let live: BTreeSet<u16> = tcp_connections(Some(&self.netns), &[self.port(server)])
            .iter()
            .map(|c| c.local_port)
            .collect();
        on_server
            .into_iter()
            .filter(|(_, port)| !live.contains(port))
            .map(|(id, _)| id)
            .collect()
    }
}

/// Events sent the whole time, as an SDK sends them: retried until acknowledged.
struct Sender {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sender {
    fn start(ingest: &Ingest) -> Sender {
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (sent, stop, url) = (sent.clone(), stop.clone(), ingest.url.clone());
            tokio::spawn(async move {
                let (client, retries) = (http(), AtomicU64::new(0));
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let ids: Vec<uuid::Uuid> = (0..20).map(|_| uuid::Uuid::new_v4()).collect();
                    let body = batch_with_ids("net", n, &ids);
                    post_until_acked(&client, &url, &body, &retries).await;
                    n += ids.len();
                    sent.store(n as u64, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Sender { sent, stop, task }
    }

    /// Stops sending; how many events were acknowledged.
    async fn stop(self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("sender");
        self.sent.load(Ordering::Relaxed) as i64
    }
}

/// Cuts the flusher off from `server` for `partition` (every packet to or from its port
/// dropped in silence) while events flow, once `fault` shows in the flusher's log; checks that
/// the server still held connections the flusher had given up on just before the heal, and
/// that they end within `window` (the server's keepalive) plus a margin after it; then that
/// every event sent is stored once and no connection is left without its client.
async fn partition_leaves_nothing_behind(server: Server, fault: &str, window: Duration) {
    const PARTITION: Duration = Duration::from_secs(45);
    let rig = Rig::start(&["--pg-timeout-ms", "2000", "--redis-timeout-ms", "2000"]).await;
    let sender = Sender::start(&rig.ingest);
    rig.db.wait_rows(100).await;

    let port = rig.port(server);
    rig.netns.partition_port(port);
    let cut = Instant::now();
    // The fault took hold: a call timed out.
    wait_for(&format!("the flusher to log {fault:?}"), LONG, || async {
        rig.flusher.proc.log_text().contains(fault).then_some(())
    })
    .await;
    tokio::time::sleep(PARTITION.saturating_sub(cut.elapsed())).await;
    // Just before the heal: the connections whose client has given up on them.
    let left = rig.abandoned(server).await;
    assert!(
        !left.is_empty(),
        "after {PARTITION:?} of partition {server:?} should still hold connections the flusher \
         gave up on; it holds {:?}",
        rig.server_connections(server).await
    );
    // The server's side of them: its keepalive timer and unanswered probes (for the figures).
    let server_side: Vec<String> =
        tcp_connections_where(Some(&rig.netns), |c| c.local_port == port)
            .into_iter()
            .map(|c| c.line)
            .collect();
    rig.netns.heal();
    let healed = Instant::now();

    // The keepalive window counts from the last packet the server heard, before the partition
    // began: from the heal it is shorter still. A generous margin on top.
    let deadline = window + Duration::from_secs(30);
    let gone = wait_for(
        &format!(
            "the {} connections left behind on {server:?} ({left:?}) to end within {deadline:?} \
             of the heal",
            left.len()
        ),
        deadline,
        || async {
            let now = rig.server_connections(server).await;
            left.iter()
                .all(|id| !now.contains_key(id))
                .then(|| (healed.elapsed(), cut.elapsed()))
        },
    )
    .await;
    eprintln!(
        "{} connections left behind on {server:?} by a {PARTITION:?} partition ended {:?} after \
         the heal, {:?} after the partition began (keepalive window {window:?}); at the heal the \
         server's side was:\n{}",
        left.len(),
        gone.0,
        gone.1,
        server_side.join("\n")
    );

    let total = sender.stop().await;
    rig.db.wait_rows(total).await;
    assert_eq!(
        rig.db.rows_and_distinct().await,
        (total, total),
        "every event acknowledged across the partition is stored once"
    );
    assert!(
        rig.abandoned(server).await.is_empty(),
        "connections without a client on {server:?}: {:?}",
        rig.server_connections(server).await
    );
}

/// A flusher is cut off from PostgreSQL by a partition that drops packets and refuses nothing,
/// for longer than its writes wait: it gives up on the connections it was writing on, and the
/// server never hears of it. Once the partition heals, keepalive probes must find those
/// backends and end them within the server's keepalive window (not the kernel's two hours,
/// each holding a `max_connections` slot), and every event sent across it is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_from_postgres_leaves_no_backend_behind() {
    partition_leaves_nothing_behind(Server::Postgres, "(--pg-timeout-ms)", pg_keepalive_window())
        .await;
}

/// The same between the flusher and Redis: the Redis client connections the flusher gave up on
/// end within Redis's `tcp-keepalive` window (not its default's ten minutes), and every event
/// sent across it is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_from_redis_leaves_no_client_behind() {
    partition_leaves_nothing_behind(
        Server::Redis,
        "redis did not answer within",
        redis_keepalive_window(),
    )
    .await;
}

/// The port of a `scheme://host:port/…` URL.
fn port_of(url: &str) -> u16 {
    let authority = url.split("://").nth(1).and_then(|r| r.split('/').next());
    let port = authority.and_then(|a| a.rsplit_once(':')).map(|(_, p)| p);
    port.and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// Every connection ingest-api and the flusher hold to Redis (redis-rs's and the lean ones) and
/// to PostgreSQL probes a silent peer after 10 s (`service_kit::tcp`), not after the kernel's
/// two hours: `ss` shows each one's keepalive timer armed and due within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_to_redis_and_postgres_probes_a_silent_peer() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    p.ingest.post_ok(&batch("keepalive", 50)).await;
    p.db.wait_rows(50).await;
    let ports = [port_of(&p.redis_url), port_of(&shared_admin_url())];
    let ingest = p.ingest.proc.pid();
    let flusher = p.flushers[0].proc.pid();
    // Per connection (pid, local port, peer port): samples seen, and the latest keepalive due
    // time seen (a connection with data in flight shows its retransmission timer instead).
    let mut seen: BTreeMap<(u32, u16, u16), (u32, Option<Duration>)> = BTreeMap::new();
    for _ in 0..30 {
        for c in tcp_connections(None, &ports) {
            let Some(pid) = c.pid.filter(|pid| [ingest, flusher].contains(pid)) else {
                continue;
            };
            let entry = seen.entry((pid, c.local_port, c.peer_port)).or_default();
            entry.0 += 1;
            entry.1 = c.keepalive_due().max(entry.1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = |pid: u32, port: u16| {
        seen.keys()
            .filter(|(p, _, peer)| *p == pid && *peer == port)
            .count()
    };
    assert!(
        held(ingest, ports[0]) >= 1,
        "ingest-api holds no Redis connection: {seen:?}"
    );
    assert!(
        held(flusher, ports[0]) >= 2,
        "the flusher's shared and read connections: {seen:?}"
    );
    assert!(
        held(flusher, ports[1]) >= 1,
        "the flusher holds no PostgreSQL connection: {seen:?}"
    );
    for (conn, (samples, due)) in &seen {
        if *samples < 5 {
            continue; // made or closed while sampling
        }
        let due = due.unwrap_or_else(|| panic!("no keepalive armed on {conn:?}: {seen:?}"));
        assert!(
            due <= Duration::from_secs(10),
            "{conn:?}: the next keepalive probe is due in {due:?}, after more than 10 s: {seen:?}"
        );
    }
}
