//! A device whose clock is wrong loses nothing: ingest-api derives the clock's skew from the
//! batch's `sent_at` and, past `--clock-skew-threshold-secs`, stores each event at its corrected
//! time (`timestamp + received_at − sent_at`) with the device's own time kept in `device_time`;
//! a retried batch is stored once although each attempt's correction differs by its latency.

use et_tests::*;
use event_model::timestamp::format_timestamp;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// `n` events with fresh ids, `spacing` apart on the device's clock, the last at `last`.
fn events_at(name: &str, n: usize, last: OffsetDateTime, spacing: Duration) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut e = event(name, i);
            e["timestamp"] = json!(format_timestamp(last - spacing * (n - 1 - i) as i32));
            e
        })
        .collect()
}

/// A row's (time, device_time, sent_at, received_at).
type Times = (
    OffsetDateTime,
    Option<OffsetDateTime>,
    Option<OffsetDateTime>,
    OffsetDateTime,
);

async fn times_of(db: &TestDb, id: &str) -> Vec<Times> {
    let id = Uuid::parse_str(id).unwrap();
    db.client()
        .await
        .query(
            "SELECT time, device_time, sent_at, received_at FROM events WHERE event_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Every event of a batch sent by a device whose clock is `offset` off is stored at
/// `timestamp + received_at − sent_at` (close to the true time), with `device_time` its own
/// timestamp.
async fn stored_corrected(offset: Duration) {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let device_now = OffsetDateTime::now_utc() + offset;
    // Ten events over the last ten minutes of the device's clock, sent now.
    let events = events_at("skewed", 10, device_now, Duration::minutes(1));
    let sent_at = format_timestamp(device_now);
    let answer = p
        .ingest
        .post_ok(&json!({"sent_at": sent_at, "events": events}))
        .await;
    assert_eq!(answer, json!({"accepted": 10, "rejected": []}));
    p.db.wait_rows(10).await;
    for e in &events {
        let rows = times_of(&p.db, e["event_id"].as_str().unwrap()).await;
        assert_eq!(rows.len(), 1, "{e}");
        let (time, device_time, sent, received) = rows[0];
        let device =
            event_model::timestamp::parse_timestamp(e["timestamp"].as_str().unwrap()).unwrap();
        assert_eq!(device_time, Some(device), "the device's own time is kept");
        let sent = sent.expect("sent_at stored");
        assert_eq!(time, device + (received - sent), "corrected by the skew");
        // The corrected time is the true one, within the request's latency.
        let truth = device - offset;
        assert!(
            (time - truth).abs() < Duration::seconds(30),
            "{time} is not close to {truth}"
        );
    }
}

/// A device three days ahead: every event is past `--max-future-secs` by its own clock, but
/// stored at the corrected time.
#[tokio::test]
async fn a_device_three_days_ahead_is_stored_at_the_corrected_time() {
    stored_corrected(Duration::days(3)).await;
}

/// A device a year behind: stored at the corrected time, not a year in the past.
#[tokio::test]
async fn a_device_a_year_behind_is_stored_at_the_corrected_time() {
    stored_corrected(-Duration::days(365)).await;
}

/// Within the threshold nothing changes: the device's timestamp is stored as it is and
/// `device_time` stays NULL. Without `sent_at` nothing is corrected: an event three days
/// ahead is still rejected by the future window.
#[tokio::test]
async fn within_the_threshold_or_without_sent_at_nothing_changes() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let device_now = OffsetDateTime::now_utc() + Duration::minutes(4);
    let events = events_at("close", 3, device_now, Duration::seconds(10));
    p.ingest
        .post_ok(&json!({"sent_at": format_timestamp(device_now), "events": events}))
        .await;
    p.db.wait_rows(3).await;
    for e in &events {
        let rows = times_of(&p.db, e["event_id"].as_str().unwrap()).await;
        let device =
            event_model::timestamp::parse_timestamp(e["timestamp"].as_str().unwrap()).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].0, rows[0].1), (device, None), "{e}");
    }

    let ahead = OffsetDateTime::now_utc() + Duration::days(3);
    for body in [
        json!(events_at("bare", 1, ahead, Duration::ZERO)),
        json!({"sent_at": null, "events": events_at("null", 1, ahead, Duration::ZERO)}),
    ] {
        let (status, answer) = p.ingest.post(&body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"], "invalid_events");
    }
    // A skew past the threshold with a window that still refuses: judged on the corrected
    // time (here 30 days in the past, before a --min-timestamp ten days ago).
    let p = Pipeline::start(PipelineOptions {
        ingest: &[
            "--min-timestamp",
            &format_timestamp(OffsetDateTime::now_utc() - Duration::days(10)),
        ],
        ..PipelineOptions::without_flushers()
    })
    .await;
    let device_now = OffsetDateTime::now_utc() + Duration::days(3);
    let (status, answer) = p
        .ingest
        .post(&json!({
            "sent_at": format_timestamp(device_now),
            "events": events_at("old", 1, device_now - Duration::days(30), Duration::ZERO),
        }))
        .await;
    assert_eq!(status, 400, "{answer}");
    let error = answer["rejected"][0]["error"].as_str().unwrap();
    assert!(error.starts_with("timestamp: is before"), "{error}");
}

/// How the two attempts of a retried batch reach the flusher.
#[derive(Debug, Clone, Copy)]
enum Arrival {
    /// The first attempt is stored before the retry arrives.
    OneAfterTheOther,
    /// Both wait in the queue and reach one flusher in one read.
    InOneRead,
    /// Each goes to its own shard, read by its own flusher at the same time.
    TwoFlushersAtOnce,
}

/// An SDK retries a batch whose answer was lost: the same events, a new `sent_at` two seconds
/// later, and a latency two seconds shorter, so each attempt's correction differs. Each event
/// is stored once, however the attempts reach the flushers.
#[tokio::test]
async fn a_retried_skewed_batch_is_stored_once() {
    for arrival in [
        Arrival::OneAfterTheOther,
        Arrival::InOneRead,
        Arrival::TwoFlushersAtOnce,
    ] {
        let sharded: &[&str] = match arrival {
            Arrival::TwoFlushersAtOnce => &["--shards", "2"],
            _ => &[],
        };
        let p = Pipeline::start(PipelineOptions {
            ingest: sharded,
            flusher: sharded,
            flushers: match arrival {
                Arrival::OneAfterTheOther => 1,
                Arrival::InOneRead => 0,
                Arrival::TwoFlushersAtOnce => 2,
            },
            ..Default::default()
        })
        .await;
        let device_now = OffsetDateTime::now_utc() + Duration::days(3);
        let events = events_at("retried", 20, device_now, Duration::seconds(5));
        let first = json!({"sent_at": format_timestamp(device_now), "events": events});
        let retry = json!({
            "sent_at": format_timestamp(device_now + Duration::seconds(2)),
            "events": events,
        });
        p.ingest.post_ok(&first).await;
        if let Arrival::OneAfterTheOther = arrival {
            p.db.wait_rows(20).await;
        }
        p.ingest.post_ok(&retry).await;
        let _late = matches!(arrival, Arrival::InOneRead).then(|| p.start_flusher(&[], &[]));
        p.db.wait_rows(20).await;
        let mut r = p.redis().await;
        let keys = match arrival {
            Arrival::TwoFlushersAtOnce => vec![shard_key(&p.key, 0), shard_key(&p.key, 1)],
            _ => vec![p.key.clone()],
        };
        for key in &keys {
            wait_stream_empty(&r, key).await;
            assert_eq!(pending(&mut r, key, "flushers").await, 0);
        }
        assert_eq!(p.db.rows_and_distinct().await, (20, 20), "{arrival:?}");
        for e in &events {
            let rows = times_of(&p.db, e["event_id"].as_str().unwrap()).await;
            assert_eq!(rows.len(), 1, "{e}");
            assert!(rows[0].1.is_some(), "stored corrected");
        }
    }
}

/// A device whose skew is just under the threshold on one attempt and just over it on the
/// retry: the first is stored uncorrected, the retry (corrected) finds it at its device time
/// and is dropped.
#[tokio::test]
async fn a_corrected_retry_of_an_uncorrected_attempt_is_dropped() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let now = OffsetDateTime::now_utc();
    let events = events_at(
        "crossing",
        5,
        now - Duration::minutes(5),
        Duration::seconds(1),
    );
    let attempt = |skew: i64| json!({"sent_at": format_timestamp(now - Duration::seconds(skew)), "events": events});
    p.ingest.post_ok(&attempt(290)).await;
    p.db.wait_rows(5).await;
    p.ingest.post_ok(&attempt(310)).await;
    let r = p.redis().await;
    wait_stream_empty(&r, &p.key).await;
    assert_eq!(p.db.rows_and_distinct().await, (5, 5));
    for e in &events {
        let rows = times_of(&p.db, e["event_id"].as_str().unwrap()).await;
        assert_eq!(rows[0].1, None, "the uncorrected copy stays");
    }
}
