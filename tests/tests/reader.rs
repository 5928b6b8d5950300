//! The flusher's lean stream reader (`redis_queue::reader`) against a real Redis: it must read
//! exactly what redis-rs reads — binary values, CRLF inside values, empty values, replies larger
//! than one socket read — through a password and a database index, and report Redis's error
//! codes as redis-rs does (the flusher re-creates its group on `NOGROUP`).
//!
//! And ingest-api's lean appender (`redis_queue::writer`): it must store what redis-rs stores,
//! all of a transaction or none of it, keep Redis's error codes, and never reuse a connection
//! that is out of step.

use std::time::Duration;

use et_tests::RedisServer;
use et_tests::{redis_cli_out, redis_memory};
use event_model::queue::EntryEvent;
use redis::AsyncCommands;
use redis_queue::Connector;
use redis_queue::reader::{ReadGroup, StreamReader};
use redis_queue::writer::{MAX_WRITERS, Writers};

async fn reader(url: &str) -> StreamReader {
    Connector::new(url, false)
        .unwrap()
        .stream_reader()
        .await
        .unwrap()
        .expect("a TCP URL gets the lean reader")
}

fn read<'a>(key: &'a str, count: usize, block: Option<Duration>) -> ReadGroup<'a> {
    ReadGroup {
        key,
        group: "g",
        consumer: "c",
        count,
        block,
    }
}

/// Values the reader must carry unchanged: empty, CRLF and NUL inside, not UTF-8, and one of
/// 200 KiB so a reply spans many socket reads.
fn odd_values() -> Vec<Vec<u8>> {
    vec![
        b"".to_vec(),
        b"line\r\nbreak\r\n".to_vec(),
        vec![0, 255, 13, 10, 36, 42],
        "ünïcödé".as_bytes().to_vec(),
        vec![b'x'; 200 * 1024],
    ]
}

/// Sets password `s3cret`; returns the URL of database 3 with it, and a redis-rs connection
/// to that database.
async fn password_and_db3(server: &RedisServer) -> (String, redis::aio::MultiplexedConnection) {
    assert_eq!(
        redis_cli_out(server.port, &["CONFIG", "SET", "requirepass", "s3cret"]),
        "OK"
    );
    let url = format!("redis://:s3cret@127.0.0.1:{}/3", server.port);
    let db3 = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    (url, db3)
}

/// Sets a password, fills stream `k` of database 3 with odd values and creates group `g`;
/// returns the URL and what XRANGE (redis-rs) reads back.
async fn odd_stream(server: &RedisServer) -> (String, redis::streams::StreamRangeReply) {
    let (url, mut db3) = password_and_db3(server).await;
    let _: () = db3.xgroup_create_mkstream("k", "g", "0").await.unwrap();
    for (i, v) in odd_values().iter().enumerate() {
        let _: String = db3
            .xadd("k", "*", &[("v", b"1".as_slice()), ("e", v.as_slice())])
            .await
            .unwrap();
        let _: String = db3
            .xadd("k", "*", &[("only", i.to_string())])
            .await
            .unwrap();
    }
    let expected = db3.xrange_all("k").await.unwrap();
    (url, expected)
}

#[tokio::test]
async fn reads_what_redis_rs_reads_through_a_password_and_a_database() {
    let server = RedisServer::start();
    let (url, expected) = odd_stream(&server).await;
    let mut lean = reader(&url).await;
    let got = lean.read_group(&read("k", 1000, None)).await.unwrap();

    assert_eq!(got.len(), expected.ids.len());
    for (g, e) in got.iter().zip(&expected.ids) {
        assert_eq!(g.id, e.id);
        let want = sorted_fields(e);
        let mut have: Vec<(String, Vec<u8>)> = g
            .fields
            .iter()
            .map(|(k, v)| (String::from_utf8(k.to_vec()).unwrap(), v.to_vec()))
            .collect();
        have.sort();
        assert_eq!(have, want, "entry {}", g.id);
    }
    assert_eq!(got[0].field("e"), Some(&b""[..]));
    assert_eq!(got[8].field("e").map(<[u8]>::len), Some(200 * 1024));

    // Everything was delivered: a blocking read runs out and says so with no entries.
    let none = lean
        .read_group(&read("k", 10, Some(Duration::from_millis(50))))
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn error_replies_keep_their_codes() {
    let server = RedisServer::start();
    let mut lean = reader(&server.url()).await;
    let e = lean
        .read_group(&read("no-such-stream", 10, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("NOGROUP"), "{e}");
    // The connection is still usable after an error reply.
    let e = lean
        .read_group(&read("still-none", 1, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("NOGROUP"), "{e}");

    let wrong = format!("redis://:wrong@127.0.0.1:{}/", server.port);
    let refused = Connector::new(&wrong, false).unwrap().stream_reader().await;
    let e = refused
        .err()
        .expect("AUTH with a password Redis does not have fails");
    assert!(
        e.code().is_some(),
        "an error reply, not a broken connection: {e}"
    );
}

/// Pipelined reads: `times` reads in one round trip return the entries in stream order, the
/// reads after the stream ran dry return nothing, and after a pipeline of error replies the
/// connection is still in step.
#[tokio::test]
async fn pipelined_reads_return_the_entries_in_order() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut lean = reader(&server.url()).await;
    let e = lean.read_groups(&read("k", 2, None), 3).await.unwrap_err();
    assert_eq!(e.code(), Some("NOGROUP"), "{e}");

    let _: () = c.xgroup_create_mkstream("k", "g", "0").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let id: String = c.xadd("k", "*", &[("n", i)]).await.unwrap();
        ids.push(id);
    }
    let got = lean.read_groups(&read("k", 2, None), 4).await.unwrap();
    let got_ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(got_ids, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(got[4].field("n"), Some(&b"4"[..]));
    assert!(
        lean.read_group(&read("k", 2, None))
            .await
            .unwrap()
            .is_empty()
    );
}

fn writers(url: &str) -> Writers {
    writers_within(url, Duration::from_secs(2))
}

fn writers_within(url: &str, timeout: Duration) -> Writers {
    Connector::new(url, false)
        .unwrap()
        .writers(timeout)
        .expect("a TCP URL gets the lean writer")
}

/// An append that times out because Redis is frozen; Redis answers again after it.
async fn append_times_out(server: &RedisServer, w: &Writers, batch: &[EntryEvent<'_>]) {
    server.freeze();
    let e = w.append("k", batch).await.unwrap_err();
    assert!(matches!(e, redis_queue::QueueError::Timeout(_)), "{e}");
    server.thaw();
}

/// Events `0..n` whose names and properties need escaping, one of them 100 KiB.
fn events(n: usize) -> Vec<EntryEvent<'static>> {
    let at = time::OffsetDateTime::now_utc();
    (0..n)
        .map(|k| EntryEvent {
            time: at,
            event_id: uuid::Uuid::now_v7(),
            name: Box::leak(format!("ev\"{k}\n").into_boxed_str()),
            source: "src",
            device_id: Some("dev"),
            session_id: None,
            user_id: None,
            device_time: None,
            properties: if k == 1 {
                Box::leak(format!("{{\"big\":\"{}\"}}", "x".repeat(100 * 1024)).into_boxed_str())
            } else {
                "{\"k\":[1,\"\\r\\n\"]}"
            },
            sent_at: None,
            received_at: at,
        })
        .collect()
}

/// Each event's entry as redis-rs reads it back: `v` and `e`, in order.
async fn stored(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Vec<Vec<(String, Vec<u8>)>> {
    let reply: redis::streams::StreamRangeReply = c.xrange_all(key).await.unwrap();
    reply.ids.iter().map(sorted_fields).collect()
}

/// An entry's fields and values as redis-rs read them, sorted by name.
fn sorted_fields(entry: &redis::streams::StreamId) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(String, Vec<u8>)> = entry
        .map
        .iter()
        .map(|(k, v)| (k.clone(), redis::from_redis_value(v.clone()).unwrap()))
        .collect();
    fields.sort();
    fields
}

fn expected(events: &[EntryEvent<'_>]) -> Vec<Vec<(String, Vec<u8>)>> {
    events
        .iter()
        .map(|e| {
            let mut encoded = Vec::new();
            e.encode_into(&mut encoded);
            vec![
                ("e".to_string(), encoded),
                (
                    "v".to_string(),
                    event_model::queue::ENTRY_VERSION.as_bytes().to_vec(),
                ),
            ]
        })
        .collect()
}

/// Through a password and a database index, concurrent appends each store all their events,
/// exactly as encoded, on connections that are reused.
#[tokio::test]
async fn the_writer_stores_what_it_was_given_through_a_password_and_a_database() {
    let server = RedisServer::start();
    let (url, mut db3) = password_and_db3(&server).await;
    let w = writers(&url);
    let opened_before = connections_opened(server.port, Some("s3cret"));
    let batches: Vec<Vec<EntryEvent<'static>>> = (0..8).map(|_| events(3)).collect();
    for _ in 0..3 {
        let _: () = db3.del(&["k0", "k1"]).await.unwrap();
        let appends = batches
            .iter()
            .enumerate()
            .map(|(i, b)| w.append(if i % 2 == 0 { "k0" } else { "k1" }, b));
        for r in futures_util::future::join_all(appends).await {
            r.unwrap();
        }
        let mut got = stored(&mut db3, "k0").await;
        got.extend(stored(&mut db3, "k1").await);
        let mut want = Vec::new();
        for b in batches
            .iter()
            .step_by(2)
            .chain(batches.iter().skip(1).step_by(2))
        {
            want.extend(expected(b));
        }
        got.sort();
        want.sort();
        assert_eq!(got.len(), 24);
        assert_eq!(got, want);
    }
    // Reused: the 24 appends opened at most one connection each of the 8 at once (and
    // redis-cli one to ask).
    let opened = connections_opened(server.port, Some("s3cret")) - opened_before;
    assert!(
        opened <= 8 + 1,
        "connections were not reused: {opened} opened"
    );
}

/// Connections Redis accepted so far (this query's own included), with the password if any.
fn connections_opened(port: u16, password: Option<&str>) -> u64 {
    info_field(port, password, "stats", "total_connections_received")
}

fn info_field(port: u16, password: Option<&str>, section: &str, field: &str) -> u64 {
    let mut args = vec![];
    if let Some(p) = password {
        args.extend(["-a", p, "--no-auth-warning"]);
    }
    args.extend(["INFO", section]);
    redis_cli_out(port, &args)
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A refused XADD (OOM) aborts the whole transaction: nothing stored, the refusal's code
/// returned, and the connection still in step for the next append. A command that fails as it
/// runs (WRONGTYPE) keeps its code too.
#[tokio::test]
async fn refusals_keep_their_codes_and_store_nothing() {
    let server = RedisServer::start();
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let w = writers(&server.url());
    let batch = events(5);
    w.append("k", &batch[..1]).await.unwrap();
    let used = redis_memory(server.port, "used_memory");
    let max = (used * 95 / 100).to_string();
    assert_eq!(
        redis_cli_out(server.port, &["CONFIG", "SET", "maxmemory", &max]),
        "OK"
    );
    let e = w.append("k", &batch).await.unwrap_err();
    assert_eq!(e.code(), Some("OOM"), "{e}");
    assert_eq!(
        stored(&mut c, "k").await.len(),
        1,
        "none of the refused transaction"
    );
    assert_eq!(
        redis_cli_out(server.port, &["CONFIG", "SET", "maxmemory", "0"]),
        "OK"
    );
    w.append("k", &batch).await.unwrap();
    let mut want = expected(&batch[..1]);
    want.extend(expected(&batch));
    assert_eq!(stored(&mut c, "k").await, want);

    let _: () = c.set("s", "a string").await.unwrap();
    let e = w.append("s", &batch).await.unwrap_err();
    assert_eq!(e.code(), Some("WRONGTYPE"), "{e}");
    w.append("k", &batch[..1]).await.unwrap();
    assert_eq!(
        stored(&mut c, "k").await.len(),
        7,
        "in step after WRONGTYPE"
    );
}

/// A connection Redis closed while it was idle (Redis restarted, or dropped the client) is not
/// used again: the next append opens a new one and succeeds, so a restart costs no request its
/// write. The check needs no help from the runtime (no await between the kill and the append).
#[tokio::test]
async fn an_idle_connection_redis_closed_is_not_used() {
    let server = RedisServer::start();
    let w = writers(&server.url());
    let batch = events(2);
    w.append("k", &batch).await.unwrap();
    let killed = redis_cli_out(server.port, &["CLIENT", "KILL", "TYPE", "normal"]);
    assert_eq!(killed, "1", "the writer's connection was closed");
    std::thread::sleep(Duration::from_millis(50)); // the FIN arrives
    w.append("k", &batch).await.unwrap();
    assert_eq!(redis_cli_out(server.port, &["XLEN", "k"]), "4");
}

/// A connection that fails mid-append (Redis frozen past the timeout) is dropped, never put
/// back out of step: after Redis answers again, appends succeed and store each batch once.
#[tokio::test]
async fn a_connection_that_timed_out_is_dropped() {
    let server = RedisServer::start();
    let w = writers_within(&server.url(), Duration::from_millis(300));
    // Small events: the whole transaction fits in the socket buffers while Redis is frozen.
    let three = events(3);
    let batch = [three[0], three[2]];
    w.append("k", &batch).await.unwrap();
    append_times_out(&server, &w, &batch).await;
    // On the timed-out connection this would read that append's replies and fail.
    w.append("k", &batch[..1]).await.unwrap();
    // The timed-out transaction was sent whole, so it ran when Redis woke: 2 + 2 + 1.
    for _ in 0..50 {
        if redis_cli_out(server.port, &["XLEN", "k"]) == "5" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(redis_cli_out(server.port, &["XLEN", "k"]), "5");
}

/// ingest-api runs one runtime per worker thread, and a connection works only on the runtime
/// that opened it (its socket is registered with that runtime's I/O driver). Here the first
/// runtime stops, as a worker does at shutdown, and the second must not get its connection.
#[test]
fn a_connection_is_used_only_on_the_runtime_that_opened_it() {
    let server = RedisServer::start();
    let w = writers(&server.url());
    let batch = events(2);
    let first = runtime();
    first.block_on(w.append("k", &batch)).unwrap();
    drop(first);
    runtime().block_on(w.append("k", &batch)).unwrap();
    assert_eq!(redis_cli_out(server.port, &["XLEN", "k"]), "4");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// At most `MAX_WRITERS` connections are open in all, whatever the runtimes: a burst on a
/// second runtime closes the first one's idle connections rather than adding its own. Counted
/// mid-burst, with Redis frozen so that every append of the burst holds its connection.
#[test]
fn connections_stay_within_the_cap_across_runtimes() {
    let server = RedisServer::start();
    let w = writers(&server.url());
    let batch = events(1);
    let burst = |rt: &tokio::runtime::Runtime| {
        let appends = (0..MAX_WRITERS).map(|_| w.append("k", &batch));
        let during = async {
            server.freeze();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let open = w.open_connections();
            server.thaw();
            open
        };
        let (results, open) =
            rt.block_on(async { tokio::join!(futures_util::future::join_all(appends), during) });
        for r in results {
            r.unwrap();
        }
        open
    };
    let (a, b) = (runtime(), runtime());
    assert_eq!(burst(&a), MAX_WRITERS, "the burst used them all");
    assert_eq!(burst(&b), MAX_WRITERS, "not one more on the second runtime");
    assert_eq!(burst(&a), MAX_WRITERS);
    let stored = 3 * MAX_WRITERS;
    assert_eq!(
        redis_cli_out(server.port, &["XLEN", "k"]),
        stored.to_string()
    );
}

/// A failure without an error reply (here a timeout while Redis is frozen) retires every idle
/// connection, not only the one that failed: the next append opens a new connection instead
/// of trying one that whatever broke the first may have broken too.
#[tokio::test]
async fn a_failure_retires_every_idle_connection() {
    let server = RedisServer::start();
    let w = writers_within(&server.url(), Duration::from_millis(300));
    let batch = events(2);
    let two = [w.append("k", &batch), w.append("k", &batch)];
    for r in futures_util::future::join_all(two).await {
        r.unwrap();
    }
    assert_eq!(w.open_connections(), 2);
    append_times_out(&server, &w, &batch).await;
    let before = connections_opened(server.port, None);
    w.append("k", &batch).await.unwrap();
    let opened = connections_opened(server.port, None) - before - 1; // less the query's own
    assert_eq!(
        opened, 1,
        "the idle connection left from before the failure was not used"
    );
    assert_eq!(w.open_connections(), 1);
}
