//! Network faults that refuse nothing: packets dropped in silence. What they must not leave
//! behind: PostgreSQL backends whose client is gone (they hold `max_connections` slots until the
//! kernel's default keepalive, two hours), and connections nobody probes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use et_tests::*;

/// The flusher's backends the server holds, by pid, with their client ports.
async fn flusher_backends(admin: &tokio_postgres::Client) -> BTreeMap<i32, i32> {
    admin
        .query(
            "SELECT pid, client_port FROM pg_stat_activity \
             WHERE application_name = 'eventtracker-flusher' AND client_port IS NOT NULL",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Of `backends`, those whose client side holds no established connection any more: left
/// behind by a client that gave up on them.
fn abandoned(backends: &BTreeMap<i32, i32>, netns: &Netns, pg_port: u16) -> BTreeSet<i32> {
    let live: BTreeSet<i32> = tcp_connections(Some(netns), &[pg_port])
        .iter()
        .map(|c| i32::from(c.local_port))
        .collect();
    backends
        .iter()
        .filter(|(_, port)| !live.contains(port))
        .map(|(pid, _)| *pid)
        .collect()
}

/// A flusher is cut off from PostgreSQL by a partition that drops packets and refuses nothing,
/// for longer than its writes wait: it gives up on the connections it was writing on. The
/// server never hears of it. Once the partition heals, keepalive probes must find those
/// backends and end them within the server's keepalive window (not the kernel's two hours), and
/// every event sent across it is stored once.
///
/// Everything runs in a network namespace of the test's own, on its 127.0.0.1: PostgreSQL, Redis
/// and the flusher; the test and ingest-api reach PostgreSQL and Redis through their Unix
/// sockets, which no packet filter touches. `tc` drops every packet to or from PostgreSQL's port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_from_postgres_leaves_no_backend_behind() {
    const PARTITION: Duration = Duration::from_secs(45);
    const PG_TIMEOUT_MS: &str = "2000";
    let netns = Netns::create();
    // A client's kernel gives up on a connection it closed after 8 retransmissions (about 100 s
    // on a loopback); 2 here (about 1.4 s): what a partition longer than 100 s does, in 45 s.
    netns.sysctl("net.ipv4.tcp_orphan_retries", "2");
    let pg = PgServer::start_in(&netns);
    let redis = RedisServer::start_in(&netns);
    let db = TestDb::migrated(&pg.socket_url()).await;
    let admin = connect(&pg.socket_url()).await;
    let key = unique("events");
    let ingest = Ingest::start(&redis.unix_url(), &key, &[]);
    let inside_url = format!("postgres://postgres@127.0.0.1:{}/{}", pg.port, db.name);
    let flusher = Flusher::start_in(
        &netns,
        &redis.url(),
        &inside_url,
        &key,
        &["--pg-timeout-ms", PG_TIMEOUT_MS],
    );

    // Events flow the whole time, as an SDK sends them: retried until acknowledged.
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (sent, stop, url) = (sent.clone(), stop.clone(), ingest.url.clone());
        tokio::spawn(async move {
            let (client, retries) = (http(), AtomicU64::new(0));
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let ids: Vec<uuid::Uuid> = (0..20).map(|_| uuid::Uuid::new_v4()).collect();
                post_until_acked(&client, &url, &batch_with_ids("net", n, &ids), &retries).await;
                n += ids.len();
                sent.store(n as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    db.wait_rows(100).await;

    netns.partition_port(pg.port);
    let cut = Instant::now();
    // The fault took hold: a write (or taking a connection) timed out.
    wait_for("the flusher to log a PostgreSQL timeout", LONG, || async {
        flusher
            .proc
            .log_text()
            .contains("(--pg-timeout-ms)")
            .then_some(())
    })
    .await;
    tokio::time::sleep(PARTITION.saturating_sub(cut.elapsed())).await;
    // Just before the heal: the backends whose client has given up on them.
    let left = abandoned(&flusher_backends(&admin).await, &netns, pg.port);
    assert!(
        !left.is_empty(),
        "after {PARTITION:?} of partition the server should still hold the backends the \
         flusher gave up on; it holds {:?}",
        flusher_backends(&admin).await
    );
    // The server's side of them, its keepalive timer and unanswered probes (for the figures).
    let server_side: Vec<String> = tcp_connections_where(Some(&netns), |c| c.local_port == pg.port)
        .into_iter()
        .map(|c| c.line)
        .collect();
    netns.heal();
    let healed = Instant::now();

    // The server's keepalive window counts from the start of the partition (the last packet
    // the backend heard); from the heal it is shorter still. A generous margin on top.
    let deadline = pg_keepalive_window() + Duration::from_secs(30);
    let gone = wait_for(
        &format!(
            "the {} backends left behind ({left:?}) to end within {deadline:?} of the heal",
            left.len()
        ),
        deadline,
        || async {
            let now = flusher_backends(&admin).await;
            left.iter()
                .all(|pid| !now.contains_key(pid))
                .then(|| (healed.elapsed(), cut.elapsed()))
        },
    )
    .await;
    eprintln!(
        "{} backends left behind by a {PARTITION:?} partition ended {:?} after the heal, {:?} \
         after the partition began (keepalive window {:?}); at the heal the server's side was:\n{}",
        left.len(),
        gone.0,
        gone.1,
        pg_keepalive_window(),
        server_side.join("\n")
    );

    stop.store(true, Ordering::Relaxed);
    sender.await.expect("sender");
    let total = sent.load(Ordering::Relaxed) as i64;
    db.wait_rows(total).await;
    assert_eq!(
        db.rows_and_distinct().await,
        (total, total),
        "every event acknowledged across the partition is stored once"
    );
    // And nothing else is left: every backend of the flusher has its client.
    let now = flusher_backends(&admin).await;
    assert!(
        abandoned(&now, &netns, pg.port).is_empty(),
        "backends without a client: {now:?}"
    );
    drop(flusher);
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
