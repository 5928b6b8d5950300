//! The flusher's lean stream reader (`redis_queue::reader`) against a real Redis: it must read
//! exactly what redis-rs reads — binary values, CRLF inside values, empty values, replies larger
//! than one socket read — through a password and a database index, and report Redis's error
//! codes as redis-rs does (the flusher re-creates its group on `NOGROUP`).

use std::time::Duration;

use et_tests::RedisServer;
use redis::AsyncCommands;
use redis_queue::Connector;
use redis_queue::reader::{ReadGroup, StreamReader};

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

/// Sets a password, fills stream `k` of database 3 with odd values and creates group `g`;
/// returns the URL and what XRANGE (redis-rs) reads back.
async fn odd_stream(server: &RedisServer) -> (String, redis::streams::StreamRangeReply) {
    let admin = redis::Client::open(server.url()).unwrap();
    let mut c = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query_async(&mut c)
        .await
        .unwrap();
    let url = format!("redis://:s3cret@127.0.0.1:{}/3", server.port);
    let mut db3 = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
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
        let mut want: Vec<(String, Vec<u8>)> = e
            .map
            .iter()
            .map(|(k, v)| (k.clone(), redis::from_redis_value(v.clone()).unwrap()))
            .collect();
        want.sort();
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
