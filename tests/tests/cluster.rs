//! The sharded queue: `--shards N` on one Redis and on a real local 3-master Redis Cluster
//! (`--redis-cluster`). Shard keys are `<key>:{n}`, the shard count is recorded in `<key>:shards`.

use std::collections::HashSet;
use std::time::Duration;

use et_tests::*;
use serde_json::{Value, json};

/// Both binaries' flags for a cluster with 8 shards and a short Redis timeout.
const CLUSTER_8: [&str; 5] = [
    "--redis-cluster",
    "--shards",
    "8",
    "--redis-timeout-ms",
    "1000",
];

/// A process started with another shard count than the recorded one refuses to run, saying
/// which count to use; nothing is written with the wrong layout.
#[tokio::test]
async fn a_different_shard_count_is_refused() {
    let p = Pipeline::start(PipelineOptions {
        ingest: &["--shards", "4"],
        ..PipelineOptions::without_flushers()
    })
    .await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    assert_eq!(ingest.post(&batch("first", 1)).await.0, 200);
    let mut conn = p.redis().await;
    let stored: String = redis::cmd("GET")
        .arg(format!("{key}:shards"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, "4");

    let mut wrong_ingest = Ingest::start(&p.redis_url, key, &["--shards", "2"]);
    refuses_to_run(&mut wrong_ingest.proc, "2", "4");
    let mut wrong_flusher = p.start_flusher(&["--shards", "8"], &[]);
    refuses_to_run(&mut wrong_flusher.proc, "8", "4");
    // The wrong flusher read nothing: the event is still queued, in one of the 4 shards.
    let mut queued = 0;
    for n in 0..4 {
        queued += xlen(&mut conn, &shard_key(key, n)).await;
    }
    assert_eq!(queued, 1);
    assert_eq!(db.count().await, 0);

    // The right count works.
    let _flusher = p.start_flusher(&["--shards", "4"], &[]);
    db.wait_rows(1).await;
    an_unsharded_queue_is_refused_until_drained(&p, &mut conn).await;
}

/// The process exits non-zero, saying the count it was started with and the recorded one.
fn refuses_to_run(proc: &mut Proc, started_with: &str, recorded: &str) {
    let status = proc.wait_exit(LONG);
    assert!(
        !status.success(),
        "{} with --shards {started_with} kept running",
        proc.name
    );
    let log = proc.log_text();
    assert!(
        log.contains(&format!("started with --shards {started_with}"))
            && log.contains(&format!("with --shards {recorded}")),
        "{log}"
    );
}

/// A queue left by a version without shard counts: entries in the unsharded stream and no count
/// recorded. Switching it to shards straight away would strand them: refused. The way out the
/// message gives works: nothing was recorded by the refused process, a flusher with --shards 1
/// drains the old stream (this entry is no event: dead-lettered), then with the count key
/// deleted the sharded layout starts.
async fn an_unsharded_queue_is_refused_until_drained(
    p: &Pipeline,
    conn: &mut MultiplexedConnection,
) {
    let old = unique("unsharded");
    let _: String = redis::cmd("XADD")
        .arg(&old)
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("e")
        .arg("{}")
        .query_async(conn)
        .await
        .unwrap();
    let mut upgraded = Ingest::start(&p.redis_url, &old, &["--shards", "4"]);
    assert!(!upgraded.proc.wait_exit(LONG).success());
    let log = upgraded.proc.log_text();
    assert!(
        log.contains("unsharded stream") && log.contains("still holds 1 entries"),
        "{log}"
    );
    for k in [format!("{old}:shards"), format!("{old}:{{0}}:shards")] {
        let exists: u64 = redis::cmd("EXISTS")
            .arg(&k)
            .query_async(conn)
            .await
            .unwrap();
        assert_eq!(exists, 0, "the refused process recorded {k}");
    }
    let drain = Flusher::start(&p.redis_url, &p.db.url, &old, &["--shards", "1"], &[]);
    wait_stream_empty(conn, &old).await;
    drop(drain);
    let _: u64 = redis::cmd("DEL")
        .arg(format!("{old}:shards"))
        .query_async(conn)
        .await
        .unwrap();
    let sharded = Ingest::start(&p.redis_url, &old, &["--shards", "4"]);
    assert_eq!(sharded.post(&batch("after-upgrade", 1)).await.0, 200);
}

/// Requests go to the shards in turn; flushers read every shard, and two flushers with two
/// workers each share the 8 shards: everything is stored once, nothing is left pending.
#[tokio::test]
async fn requests_spread_over_shards_and_flushers_drain_them_all() {
    let p = Pipeline::start(PipelineOptions {
        ingest: &["--shards", "8"],
        ..PipelineOptions::without_flushers()
    })
    .await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    for i in 0..40 {
        ingest.post_ok(&batch(&format!("spread-{i}"), 3)).await;
    }
    let mut conn = p.redis().await;
    for n in 0..8 {
        assert_eq!(
            xlen(&mut conn, &shard_key(key, n)).await,
            15,
            "shard {n} should hold 5 requests of 3 events"
        );
    }
    assert_eq!(
        xlen(&mut conn, key).await,
        0,
        "nothing in the unsharded key"
    );

    let flags = ["--shards", "8", "--concurrency", "2"];
    let f1 = p.start_flusher(&flags, &[]);
    let f2 = p.start_flusher(&flags, &[]);
    // The first one may drain the first 120 events before the second is up: the next 120 are
    // sent while both run (each logs `ready` just before its first read).
    for f in [&f1, &f2] {
        wait_for("both flushers reading", LONG, || async {
            f.proc.log_text().contains(": ready in ").then_some(())
        })
        .await;
    }
    for i in 40..80 {
        ingest.post_ok(&batch(&format!("spread-{i}"), 3)).await;
    }
    db.wait_rows(240).await;
    wait_shards_drained(&conn, key, 8).await;
    assert_eq!(db.rows_and_distinct().await, (240, 240));
    // What the pipeline did: both flushers wrote, together exactly what ingest-api accepted.
    let (w1, w2) = (written_by(&[&f1]).await, written_by(&[&f2]).await);
    assert!(w1 > 0.0 && w2 > 0.0, "both flushers wrote: {w1} {w2}");
    assert_eq!((w1 + w2, accepted_by(ingest).await), (240.0, 240.0));
}

/// On a real 3-node cluster: with one node down, ingest-api keeps taking every request (on the
/// shards of the other nodes) and the flusher keeps draining them; the down node's entries
/// survive (AOF) and are stored once it is back. With every node down: 503 with Retry-After.
#[tokio::test]
async fn cluster_keeps_taking_events_with_a_node_down() {
    let mut cluster = RedisCluster::start();
    let urls = cluster.urls();
    let p = Pipeline::start(PipelineOptions {
        redis_url: Some(&urls),
        ingest: &CLUSTER_8,
        ..PipelineOptions::without_flushers()
    })
    .await;
    let (ingest, db, key) = (&p.ingest, &p.db, p.key.as_str());

    // 40 requests while no flusher runs: 5 on each shard, so some on every node.
    let mut sent = post_requests_of_two(ingest, "before", 40).await;
    let (node, on_node) = node_with_most_shards(&cluster, key, 8);
    let stranded = 10 * on_node as i64; // 5 requests × 2 events per shard on that node

    kill_node(&mut cluster, node);

    // Every request is taken while one node of three is down.
    sent += post_requests_of_two(ingest, "during", 40).await;
    wait_unreachable(&ingest.url, on_node, "ingest-api, one node down").await;
    let ready = readyz_answer(&ingest.url).await;
    assert_eq!(ready, 200, "/readyz with two nodes up");

    // The flusher drains the shards it can reach; the down node's entries wait.
    let flusher = p.start_flusher(&CLUSTER_8, &[]);
    db.wait_rows(sent - stranded).await;
    // No more rows come: every shard the flusher can reach is drained (nothing left, nothing
    // pending), and it reports the down node's shards unreachable, so what is stored is final.
    wait_reachable_shards_drained(&cluster, key, node).await;
    let metrics = flusher.metrics_url();
    wait_unreachable(&metrics, on_node, "the flusher, one node down").await;
    assert_eq!(db.count().await, sent - stranded);
    assert!(
        flusher_count(&flusher, "redis_errors").await > 0.0,
        "the flusher did not notice a shard was unreachable"
    );

    every_node_down_answers_503(&mut cluster, ingest, node).await;
    // The flusher sees every shard unreachable (its gauge task reads all shards every 5 s): its
    // cluster client has lost every node, a state it does not leave by itself ("No connections
    // found"): it must make new connections after the restart.
    wait_unreachable(&metrics, 8, "the flusher, every node down").await;

    // Back up: the stranded entries are stored, once; new requests are taken again.
    cluster.restart_down();
    wait_for("a request taken after the restart", LONG, || async {
        (ingest.post(&batch("after", 2)).await.0 == 200).then_some(())
    })
    .await;
    sent += 2;
    db.wait_rows(sent).await;
    let conn = cluster_conn(&urls).await;
    wait_shards_drained(&conn, key, 8).await;
    let stored = db.rows_and_distinct().await;
    assert_eq!(stored, (sent, sent), "stored once each");
}

/// Posts `n` requests of two events named `{prefix}-{i}`, each of which must be taken; the
/// events sent.
async fn post_requests_of_two(ingest: &Ingest, prefix: &str, n: i64) -> i64 {
    for i in 0..n {
        let (status, body) = ingest.post(&batch(&format!("{prefix}-{i}"), 2)).await;
        assert_eq!(status, 200, "request {prefix}-{i}: {body}");
    }
    2 * n
}

/// SIGKILLs a node and checks it is gone: no process, no answer to PING.
fn kill_node(cluster: &mut RedisCluster, node: usize) {
    cluster.kill(node);
    assert!(!cluster.is_up(node));
    let pong = redis_cli_out(cluster.ports()[node], &["ping"]);
    assert!(!pong.contains("PONG"), "the killed node still answers");
}

/// The status of the first answer of `{base}/readyz` (connection errors are retried).
async fn readyz_answer(base: &str) -> u16 {
    wait_for("/readyz to answer", LONG, || async {
        let res = http().get(format!("{base}/readyz")).send().await.ok()?;
        Some(res.status().as_u16())
    })
    .await
}

/// The cluster node holding the most of the `shards` shards, and how many it holds.
fn node_with_most_shards(cluster: &RedisCluster, key: &str, shards: usize) -> (usize, usize) {
    let mut on_node = [0usize; 3];
    for n in 0..shards {
        on_node[cluster.node_for_key(&shard_key(key, n))] += 1;
    }
    let node = (0..3).max_by_key(|&i| on_node[i]).unwrap();
    assert!(on_node[node] >= 1);
    (node, on_node[node])
}

/// Waits until the `/metrics` at `base` shows exactly `n` shards unreachable.
async fn wait_unreachable(base: &str, n: usize, whose: &str) {
    let what = format!("{n} shards unreachable ({whose})");
    wait_for(&what, LONG, || async {
        let seen = metric(base, "eventtracker_queue_shards_unreachable").await;
        (seen == Some(n as f64)).then_some(())
    })
    .await;
}

/// Waits until every shard not on `down` is empty with nothing pending, asking each node.
async fn wait_reachable_shards_drained(cluster: &RedisCluster, key: &str, down: usize) {
    let reachable: Vec<String> = (0..8)
        .map(|n| shard_key(key, n))
        .filter(|k| cluster.node_for_key(k) != down)
        .collect();
    wait_for("the reachable shards to drain", LONG, || async {
        for k in &reachable {
            let mut c = redis_conn(&cluster.node_url(cluster.node_for_key(k))).await;
            if xlen(&mut c, k).await + pending(&mut c, k, "flushers").await > 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// The other nodes killed too: a request gets 503 queue_unavailable with Retry-After, not a
/// hang.
async fn every_node_down_answers_503(cluster: &mut RedisCluster, ingest: &Ingest, down: usize) {
    for i in (0..3).filter(|&i| i != down) {
        cluster.kill(i);
    }
    let res = ingest.send(&batch("all-down", 1)).await;
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(
        res.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "queue_unavailable", "{body}");
}

/// A topology change under load: shard 0's slot (its stream with the consumer group and pending
/// entries, its dead letters, its copy of the shard count) moves to another node while clients
/// send and a flusher drains. Clients see ASK/MOVED through the cluster client, never a loss:
/// every acknowledged event is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_moved_to_another_node_under_load_loses_nothing() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    let p = Pipeline::start(PipelineOptions {
        redis_url: Some(&urls),
        ingest: &CLUSTER_8,
        flusher: &[&CLUSTER_8[..], &["--claim-idle-ms", "2000"]].concat(),
        ..Default::default()
    })
    .await;
    let (ingest, db, key) = (&p.ingest, &p.db, p.key.as_str());

    // Clients: each batch retried with the same ids until it is acknowledged.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| tokio::spawn(client_until(ingest.url.clone(), c, stop.clone())))
        .collect();
    // Under load when the slot moves: shard 0 has taken writes and the flusher has stored some.
    wait_for(
        "shard 0 to take writes and rows to be stored",
        LONG,
        || async { (shard0_events(ingest).await > 0.0 && db.count().await > 0).then_some(()) },
    )
    .await;
    let shard = shard_key(key, 0);
    let (to, moved) = move_to_the_next_node(&cluster, &shard);
    let at_move = shard0_events(ingest).await;
    // Writes reach shard 0 on its new node: ingest-api follows the move, not just avoids it.
    wait_for(
        "a write to reach shard 0 after its slot moved",
        LONG,
        || async { (shard0_events(ingest).await > at_move).then_some(()) },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = HashSet::new();
    for c in clients {
        acked.extend(c.await.unwrap());
    }

    // The group came along: the stream on its new node still has it.
    let groups = redis_cli_out(cluster.ports()[to], &["XINFO", "GROUPS", &shard]);
    assert!(
        groups.contains("flushers"),
        "XINFO GROUPS on the new node: {groups:?}"
    );

    db.wait_rows(acked.len() as i64).await;
    let conn = cluster_conn(&urls).await;
    wait_shards_drained(&conn, key, 8).await;
    acked_stored_once(db, &acked).await;
    // What the move looked like from the processes (shown with --no-capture).
    print_warnings(&[&ingest.proc, &p.flushers[0].proc]);
    println!(
        "{} events acknowledged and stored once; {moved} keys moved",
        acked.len()
    );
}

/// Moves the slot of `shard` to the next node, checking it moved with its keys; the node and
/// how many keys moved.
fn move_to_the_next_node(cluster: &RedisCluster, shard: &str) -> (usize, usize) {
    let to = (cluster.node_for_key(shard) + 1) % 3;
    let moved = tokio::task::block_in_place(|| cluster.move_slot_of(shard, to));
    assert_eq!(cluster.node_for_key(shard), to, "the slot did not move");
    assert!(moved >= 2, "the shard's keys did not move ({moved})");
    (to, moved)
}

/// Prints the WARN and ERROR lines of each process's log.
fn print_warnings(procs: &[&Proc]) {
    for proc in procs {
        let log = proc.log_text();
        for line in log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        {
            println!("{}: {line}", proc.name);
        }
    }
}

/// Client `c`: batches of 10 every 20 ms until `stop`, each retried on 503 with the same ids
/// until acknowledged (any other answer fails the test); the acknowledged event_ids.
async fn client_until(
    url: String,
    c: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<String> {
    let mut acked = Vec::new();
    let mut i = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let body = batch(&format!("move-{c}-{i}"), 10);
        let ids: Vec<String> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .collect();
        loop {
            let (status, _) = post_json(&format!("{url}/v1/events"), Some(TOKEN), &body).await;
            if status == 200 {
                break;
            }
            assert_eq!(status, 503);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        acked.extend(ids);
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acked
}

/// `eventtracker_ingest_shard_events_total{shard="0"}` of ingest-api (required).
async fn shard0_events(ingest: &Ingest) -> f64 {
    labelled_in(
        &scrape(&ingest.url).await,
        "eventtracker_ingest_shard_events_total",
        "shard=\"0\"",
    )
    .expect("ingest-api exports shard 0's event count")
}

/// Every acknowledged event stored, none twice, and no row that was never acknowledged.
async fn acked_stored_once(db: &TestDb, acked: &HashSet<String>) {
    let client = db.client().await;
    let rows = client
        .query("SELECT event_id::text FROM events", &[])
        .await
        .unwrap();
    let stored: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let distinct: HashSet<&String> = stored.iter().collect();
    assert_eq!(distinct.len(), stored.len(), "an event was stored twice");
    let lost: Vec<_> = acked.iter().filter(|id| !distinct.contains(id)).collect();
    assert!(lost.is_empty(), "{} acknowledged events lost", lost.len());
    assert_eq!(
        stored.len(),
        acked.len(),
        "rows that were never acknowledged"
    );
}

/// On a cluster, a row PostgreSQL refuses goes to its own shard's dead-letter stream (one
/// MULTI/EXEC with its removal from the shard: both keys share the shard's slot); the CLI lists
/// it as `<shard>/<id>` and requeues it to that shard.
#[tokio::test]
async fn dead_letters_stay_with_their_shard_on_a_cluster() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    let flags = ["--redis-cluster", "--shards", "4"];
    let p = Pipeline::start(PipelineOptions {
        redis_url: Some(&urls),
        ingest: &flags,
        ..PipelineOptions::without_flushers()
    })
    .await;
    let (ingest, db, key) = (&p.ingest, &p.db, p.key.as_str());
    db.set_poison_check(true).await;
    // Requests go to shards 0, 1, 2, 3, 0, … : the poison is in the 6th, so on shard 1.
    for i in 0..8 {
        let mut events = batch(&format!("good-{i}"), 5);
        if i == 5 {
            events.as_array_mut().unwrap().push(event("poison", 0));
        }
        assert_eq!(ingest.post(&events).await.0, 200);
    }
    let flusher = p.start_flusher(&flags, &[]);
    db.wait_rows(40).await;
    let conn = cluster_conn(&urls).await;
    let dead_of = |n: usize| {
        let mut c = conn.clone();
        async move { xlen(&mut c, &format!("{}:dead", shard_key(key, n))).await }
    };
    wait_for("the dead letter", LONG, || async {
        (dead_of(1).await == 1).then_some(())
    })
    .await;
    for n in [0, 2, 3] {
        assert_eq!(dead_of(n).await, 0, "shard {n} has dead letters");
    }
    drop(flusher);

    let id = the_one_dead_letter_listed(&urls, key);
    let bare = id.trim_start_matches("1/");
    let (ok, _, err) = cluster_dead_letters(&urls, key, &["requeue", bare]);
    assert!(
        !ok && err.contains("<shard>/"),
        "an ID without its shard: {err}"
    );

    db.set_poison_check(false).await;
    let (ok, out, err) = cluster_dead_letters(&urls, key, &["requeue", &id]);
    assert!(ok, "{err}");
    assert!(out.contains("requeued 1"), "{out}");
    assert_eq!(dead_of(1).await, 0);
    let mut c = conn.clone();
    assert_eq!(xlen(&mut c, &shard_key(key, 1)).await, 1, "back on shard 1");
    let _flusher = p.start_flusher(&flags, &[]);
    db.wait_rows(41).await;
}

/// `dead-letters list` shows one dead letter, the refused row on shard 1 with its SQLSTATE; its
/// ID (`<shard>/<id>`).
fn the_one_dead_letter_listed(urls: &str, key: &str) -> String {
    let (ok, listed, err) = cluster_dead_letters(urls, key, &["list"]);
    assert!(ok, "{err}");
    let listed: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("1/"), "{id}");
    assert_eq!(listed[0]["sqlstate"], json!("23514"));
    id
}

/// Runs `flusher dead-letters ARGS…` on the cluster's 4-shard queue `key`: whether it
/// succeeded, its standard output and its standard error.
fn cluster_dead_letters(urls: &str, key: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin("flusher"))
        .args(["--redis-url", urls, "--redis-cluster", "--shards", "4"])
        .args(["--stream-key", key])
        .arg("dead-letters")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A frozen node (SIGSTOP: connections stay open, nothing answers) costs at most one failed
/// write per shard it holds: those shards are skipped until a length read finds them answering
/// again, not tried by every request. After the first moments every request is taken, and after
/// the thaw everything is stored once.
#[tokio::test]
async fn a_frozen_node_is_skipped_until_it_answers() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    let flags = [
        "--redis-cluster",
        "--shards",
        "8",
        "--redis-timeout-ms",
        "500",
    ];
    let p = Pipeline::start(PipelineOptions {
        redis_url: Some(&urls),
        ingest: &flags,
        ..PipelineOptions::without_flushers()
    })
    .await;
    let (ingest, db, key) = (&p.ingest, &p.db, p.key.as_str());
    assert_eq!(ingest.post(&batch("warm-up", 1)).await.0, 200);
    let (node, on_node) = node_with_most_shards(&cluster, key, 8);

    cluster.freeze(node);
    // Until the length refresh has found the frozen shards (within one Redis timeout), a request
    // can meet two of them in a row and get 503 with Retry-After; then every request is taken.
    let mut sent: i64 = 1;
    let mut statuses = Vec::new();
    for i in 0..40 {
        sent += post_until_taken(ingest, i, &mut statuses).await;
    }
    let refused = statuses.iter().filter(|s| **s == 503).count();
    assert!(
        refused <= on_node && statuses[statuses.len() - 20..].iter().all(|s| *s == 200),
        "frozen shards kept failing requests: {statuses:?}"
    );
    // The fault is real: ingest-api counts exactly the frozen node's shards unreachable.
    wait_unreachable(&ingest.url, on_node, "ingest-api, one node frozen").await;
    let failovers = metric(&ingest.url, "eventtracker_ingest_shard_failovers_total")
        .await
        .expect("ingest-api exports eventtracker_ingest_shard_failovers_total");
    assert!(
        failovers <= on_node as f64,
        "{failovers} failovers for {on_node} frozen shards: frozen shards were tried again"
    );
    cluster.thaw(node);

    let _flusher = p.start_flusher(&flags, &[]);
    db.wait_rows(sent).await;
    assert_eq!(db.rows_and_distinct().await, (sent, sent));
}

/// Request `i` of two events, retried with the same events (and event_ids) on 503 with
/// Retry-After as an SDK does, until taken; every status seen goes to `statuses`. The events
/// sent.
async fn post_until_taken(ingest: &Ingest, i: usize, statuses: &mut Vec<u16>) -> i64 {
    let body = batch(&format!("frozen-{i}"), 2);
    loop {
        let res = ingest.send(&body).await;
        let status = res.status().as_u16();
        statuses.push(status);
        if status == 200 {
            return 2;
        }
        assert_eq!(status, 503, "request {i}: {}", res.text().await.unwrap());
        assert!(res.headers().contains_key("retry-after"));
    }
}

/// Backpressure counts the whole queue: with 4 shards holding 5 entries each, no shard is over
/// `--max-queue-len 10`, but the sum (20) is, and requests get 503 queue_full with Retry-After.
#[tokio::test]
async fn backpressure_uses_the_sum_of_the_shards() {
    let redis = shared_redis_url();
    let key = unique("full");
    let ingest = Ingest::start(&redis, &key, &["--shards", "4", "--max-queue-len", "10"]);
    for i in 0..4 {
        assert_eq!(ingest.post(&batch(&format!("fill-{i}"), 5)).await.0, 200);
    }
    let mut conn = redis_conn(&redis).await;
    for n in 0..4 {
        assert_eq!(xlen(&mut conn, &shard_key(&key, n)).await, 5);
    }
    // The lengths are read every 250 ms, not per request: wait until ingest-api has seen them.
    wait_for(
        "the backlog gauge to show the sum of the shards",
        LONG,
        || async {
            scrape(&ingest.url)
                .await
                .lines()
                .any(|l| l == "eventtracker_queue_backlog 20")
                .then_some(())
        },
    )
    .await;
    let (status, body) = ingest.post(&batch("one-more", 1)).await;
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("queue_full")),
        "{body}"
    );
}

/// The blocking-read rule on a cluster: a flusher blocked in XREADGROUP (here for up to 20 s on
/// an empty queue) keeps answering /readyz, which goes through the shared connection with a 1 s
/// timeout: it would time out if the blocking read held that connection. Then new events are
/// still written while the reader is blocked on another shard.
#[tokio::test]
async fn a_blocking_read_never_holds_the_shared_connection() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    let key = "event_queue";
    let db = TestDb::migrated(&shared_admin_url()).await;
    let flags = [
        "--redis-cluster",
        "--shards",
        "2",
        "--redis-timeout-ms",
        "1000",
    ];
    let mut flusher_flags = flags.to_vec();
    flusher_flags.extend(["--block-ms", "40000"]);
    let flusher = Flusher::start(&urls, &db.url, key, &flusher_flags, &[]);
    let base = flusher.metrics_url();
    wait_for("the flusher to be ready", LONG, || async {
        let res = http().get(format!("{base}/readyz")).send().await.ok()?;
        (res.status().as_u16() == 200).then_some(())
    })
    .await;
    // Blocked on an empty shard for 20 s (40 s / 2 shards) from here on.
    for _ in 0..5 {
        let res = http().get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{}", res.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let ingest = Ingest::start(&urls, key, &flags);
    for i in 0..4 {
        assert_eq!(ingest.post(&batch(&format!("blocked-{i}"), 5)).await.0, 200);
    }
    db.wait_rows(20).await;
}
