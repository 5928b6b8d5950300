//! Hostile input: size limits while streaming, gzip bombs (one and many at once, with the
//! process's peak memory measured), deep nesting, slow clients. After the catalogue the server
//! is still up and a valid batch lands.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use et_tests::*;
use serde_json::{Value, json};

const MIB: u64 = 1024 * 1024;

/// `size` bytes of spaces after `[`, gzipped: one member for the `[`, then the same 16 MiB
/// member of spaces repeated (a multi-member gzip stream, as `cat a.gz b.gz` makes; ~1000:1).
fn gzip_bomb(size: u64) -> Vec<u8> {
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let spaces = gz(&vec![b' '; 16 * MIB as usize]);
    let mut bomb = gz(b"[");
    for _ in 0..size / (16 * MIB) {
        bomb.extend_from_slice(&spaces);
    }
    bomb
}

async fn send(url: &str, body: Vec<u8>, encoding: Option<&str>) -> (u16, Value) {
    let mut req = http()
        .post(format!("{url}/v1/events"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(e) = encoding {
        req = req.header("Content-Encoding", e);
    }
    let res = req.send().await.expect("a response");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Warms the server up with a normal request, so its baseline peak includes ordinary work.
async fn warm_up(ingest: &Ingest) {
    for _ in 0..3 {
        let (status, _) = ingest
            .post(&json!(
                (0..100).map(|i| event("warm", i)).collect::<Vec<_>>()
            ))
            .await;
        assert_eq!(status, 200);
    }
}

#[tokio::test]
async fn size_limits_hold_while_streaming() {
    let ingest = Ingest::start(&shared_redis_url(), &unique("events"), &[]);
    let url = ingest.url.clone();
    // Exactly at the wire limit is read (and fails later as JSON); one byte over is 413.
    let at_limit = vec![b' '; MIB as usize];
    assert_eq!(send(&url, at_limit, None).await.1["error"], "invalid_json");
    let (status, body) = send(&url, vec![b' '; MIB as usize + 1], None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    // A 10 MB string sent plain.
    let big = json!([{"name": "x".repeat(10_000_000), "timestamp": "2026-01-01T00:00:00Z"}]);
    let (status, body) = send(&url, big.to_string().into_bytes(), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    // 1,001 events.
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"name": "n", "timestamp": format!("2026-01-01T00:00:{:02}Z", i % 60)}))
        .collect();
    let (status, body) = send(&url, json!(many).to_string().into_bytes(), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    // Nesting far deeper than the parser allows: invalid_json, and the server is unharmed.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, body) = send(&url, deep.into_bytes(), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_json"))
    );
    let deep_props = format!(
        r#"[{{"name":"n","timestamp":"2026-01-01T00:00:00Z","properties":{}1{}}}]"#,
        r#"{"a":"#.repeat(50_000),
        "}".repeat(50_000)
    );
    let (status, body) = send(&url, deep_props.into_bytes(), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_json"))
    );
    let (status, _) = ingest.post(&json!([event("still-up", 0)])).await;
    assert_eq!(status, 200);
}

/// A gzip bomb (1 GiB of spaces, under the wire limit compressed) is refused with 413 once it
/// inflates past 10 MiB, and the server's peak memory grows by no more than that limit (plus
/// the decoder's and allocator's own small change).
#[tokio::test]
async fn a_gzip_bomb_costs_no_more_than_the_limit() {
    let bomb = gzip_bomb(1024 * MIB);
    assert!(
        (bomb.len() as u64) < MIB,
        "the bomb fits the wire limit: {} bytes",
        bomb.len()
    );
    let ingest = Ingest::start(&shared_redis_url(), &unique("events"), &[]);
    warm_up(&ingest).await;
    let before = peak_rss(ingest.proc.pid());
    let (status, body) = send(&ingest.url, bomb, Some("gzip")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    let grew = peak_rss(ingest.proc.pid()).saturating_sub(before);
    println!(
        "peak RSS grew by {:.1} MiB for one bomb",
        grew as f64 / MIB as f64
    );
    assert!(grew < 10 * MIB + MIB, "peak RSS grew by {grew} bytes");
    let (status, _) = ingest.post(&json!([event("after-bomb", 0)])).await;
    assert_eq!(status, 200);
}

/// Eight bombs at once: each is refused (413, or 503 server_busy once the shared budget is
/// spent), and the peak grows by less than the all-requests budget, whatever that budget is.
/// A budget smaller than one request's limit refuses even a single bomb with 503 server_busy.
#[tokio::test]
async fn concurrent_bombs_are_bounded_by_the_shared_budget() {
    let bomb = gzip_bomb(1024 * MIB);
    for (budget, bombs) in [(128 * MIB, 8), (16 * MIB, 8), (4 * MIB, 1)] {
        let ingest = Ingest::start(
            &shared_redis_url(),
            &unique("events"),
            &["--max-inflight-bytes", &budget.to_string()],
        );
        warm_up(&ingest).await;
        let before = peak_rss(ingest.proc.pid());
        let results = futures_util::future::join_all(
            (0..bombs).map(|_| send(&ingest.url, bomb.clone(), Some("gzip"))),
        )
        .await;
        let grew = peak_rss(ingest.proc.pid()).saturating_sub(before);
        let codes: Vec<&str> = results
            .iter()
            .map(|(_, b)| b["error"].as_str().unwrap_or("?"))
            .collect();
        println!(
            "budget {} MiB: {codes:?}, peak RSS grew by {:.1} MiB",
            budget / MIB,
            grew as f64 / MIB as f64
        );
        for (status, body) in &results {
            match body["error"].as_str() {
                Some("payload_too_large") if budget >= 10 * MIB => assert_eq!(*status, 413),
                Some("server_busy") if budget < 128 * MIB => assert_eq!(*status, 503),
                other => panic!("budget {budget}: unexpected answer {status} {other:?}"),
            }
        }
        if budget < 10 * MIB {
            assert_eq!(
                codes,
                ["server_busy"],
                "the budget bites before the per-request limit"
            );
        }
        if budget == 128 * MIB {
            assert!(codes.iter().all(|c| *c == "payload_too_large"), "{codes:?}");
        }
        // The budget bounds the bytes all requests hold at once. Peak RSS also counts memory
        // the allocator keeps after a free (glibc keeps an arena per worker thread), so with a
        // budget close to one request's limit, two workers' arenas can together stay above it;
        // `docs/contract.md`'s case (the default budget) and the one-bomb case are asserted on RSS.
        // One bomb also costs its decoder's state and I/O buffers (~0.2 MiB): hence the slack.
        match budget / MIB {
            128 => assert!(grew < budget, "peak grew by {grew} bytes, budget {budget}"),
            4 => assert!(
                grew < budget + MIB,
                "peak grew by {grew} bytes, budget {budget}"
            ),
            _ => {}
        }
        let (status, _) = ingest.post(&json!([event("after-bombs", 0)])).await;
        assert_eq!(status, 200);
    }
}

/// A request header trickled one byte at a time is cut off by the header timeout, long before
/// the client is done; a body that does not arrive in time gets 408.
#[tokio::test]
async fn slow_clients_cannot_hold_a_connection() {
    let ingest = Ingest::start(
        &shared_redis_url(),
        &unique("events"),
        &["--header-timeout-ms", "1000", "--body-timeout-ms", "1000"],
    );
    let addr = ingest.url.trim_start_matches("http://").to_string();
    let header = format!(
        "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nX-Padding: {}\r\n",
        "p".repeat(40)
    );
    let (closed, sent) = trickle(&addr, &header);
    assert!(
        closed && sent < header.len(),
        "the server cut the trickle off after {sent} of {} bytes",
        header.len()
    );

    // Headers complete, body promised but never sent: 408 request_timeout.
    let mut conn = TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[{{"
    )
    .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("request_timeout"), "{answer:?}");
    let (status, _) = ingest.post(&json!([event("after-slow", 0)])).await;
    assert_eq!(status, 200);
}

/// Sends `header` one byte at a time, each followed by a 200 ms wait for an answer, until the
/// server answers or closes: whether it did, and how many bytes went before.
fn trickle(addr: &str, header: &str) -> (bool, usize) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut sent = 0;
    for b in header.bytes() {
        if conn.write_all(&[b]).is_err() {
            return (true, sent);
        }
        sent += 1;
        let mut buf = [0u8; 512];
        match conn.read(&mut buf) {
            // The close, or a 408 answer and then the close.
            Ok(_) => return (true, sent),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (true, sent),
        }
    }
    (false, sent)
}

/// After the whole catalogue a valid batch still lands in the database.
#[tokio::test]
async fn a_valid_batch_lands_after_abuse() {
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let (ingest, db) = (&p.ingest, &p.db);
    for body in ["{", "[]", "{\"events\":{}}", "null"] {
        let (status, _) = send(&ingest.url, body.as_bytes().to_vec(), None).await;
        assert_eq!(status, 400, "{body}");
    }
    let (status, _) = send(&ingest.url, b"\x1f\x8b\x08garbage".to_vec(), Some("gzip")).await;
    assert_eq!(status, 400);
    let _flusher = p.start_flusher(&[], &[]);
    let (status, _) = ingest.post(&json!([event("landed", 0)])).await;
    assert_eq!(status, 200);
    wait_for("the row", Duration::from_secs(60), || async {
        (db.count().await == 1).then_some(())
    })
    .await;
}
