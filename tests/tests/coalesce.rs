//! Under a backlog one COPY carries several reads (`--max-copy-rows`), and what a COPY of
//! several reads meets — a row PostgreSQL refuses, a row stored already — is handled as in a
//! single read: the rest stored, one dead letter, no duplicate row.

use et_tests::*;
use serde_json::{Value, json};

/// 500 events queued before the flusher starts (5 reads of 100).
async fn backlog(ingest: &Ingest, name: &str) {
    for _ in 0..5 {
        let events: Vec<Value> = (0..100).map(|i| event(name, i)).collect();
        assert_eq!(ingest.post(&json!(events)).await.0, 200);
    }
}

async fn copy_batches(flusher: &Flusher) -> f64 {
    let page = scrape(&flusher.metrics_url()).await;
    labelled_in(
        &page,
        "eventtracker_flusher_batches_written_total",
        "path=\"copy\"",
    )
    .expect("the batches counter")
}

#[tokio::test]
async fn a_backlog_of_five_reads_is_one_copy() {
    for (flags, copies) in [(&[][..], 1.0), (&["--max-copy-rows", "100"][..], 5.0)] {
        let p = Pipeline::start(PipelineOptions::without_flushers()).await;
        let db = &p.db;
        backlog(&p.ingest, "backlog").await;
        let flusher = p.start_flusher(flags, &[]);
        db.wait_rows(500).await;
        wait_stream_empty(&p.redis().await, &p.key).await;
        assert_eq!(copy_batches(&flusher).await, copies, "{flags:?}");
        assert_eq!(db.rows_and_distinct().await, (500, 500));
    }
}

#[tokio::test]
async fn a_bad_row_and_a_duplicate_in_a_copy_of_several_reads() {
    let p = Pipeline::start(PipelineOptions::without_flushers()).await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.name = 'bad' THEN RAISE EXCEPTION 'bad row' USING ERRCODE = '22023'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_bad BEFORE INSERT ON events
               FOR EACH ROW EXECUTE FUNCTION refuse_bad();",
        )
        .await
        .unwrap();
    backlog(ingest, "many").await;
    // A sixth read's worth, with a bad row and a row stored already.
    let mut tail: Vec<Value> = (0..100).map(|i| event("many", i)).collect();
    tail[42]["name"] = json!("bad");
    let dup = tail[77].clone();
    assert_eq!(ingest.post(&json!(tail)).await.0, 200);
    // The duplicate is stored already, as a retried batch's event would be.
    let id: uuid::Uuid = dup["event_id"].as_str().unwrap().parse().unwrap();
    let time = event_model::timestamp::parse_timestamp(dup["timestamp"].as_str().unwrap()).unwrap();
    client
        .execute(
            "INSERT INTO events (time, event_id, name, source, received_at) VALUES ($1, $2, 'many', 's', now())",
            &[&time, &id],
        )
        .await
        .unwrap();
    let flusher = p.start_flusher(&[], &[]);
    let mut conn = p.redis().await;
    wait_stream_empty(&conn, key).await;
    // 600 queued, one refused, one stored before: 599 rows, each once.
    assert_eq!(db.rows_and_distinct().await, (599, 599));
    assert_eq!(xlen(&mut conn, &format!("{key}:dead")).await, 1);
    assert_eq!(pending(&mut conn, key, "flushers").await, 0);
    let page = scrape(&flusher.metrics_url()).await;
    let dedup = labelled_in(
        &page,
        "eventtracker_flusher_batches_written_total",
        "path=\"dedup\"",
    )
    .expect("the batches counter");
    assert!(dedup >= 1.0, "the duplicate took the de-duplication path");
    let written = metric_in(&page, "eventtracker_flusher_events_written_total").unwrap();
    assert_eq!(written, 599.0);
}
