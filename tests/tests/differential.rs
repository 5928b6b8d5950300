//! Differential test of "whatever ingest accepts, PostgreSQL stores": generated events (edge
//! numbers, unicode, escapes, long strings, deep objects) are posted to the real ingest-api and
//! drained by the real flusher; every accepted event is found in PostgreSQL with `properties`
//! equal, as jsonb, to the text that was sent, and nothing is dead-lettered.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

use et_tests::*;

/// A JSON number as text: ordinary ones, and the edges of f64 and of PostgreSQL's numeric.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<i64>().prop_map(|n| n.to_string()),
        4 => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        1 => (1u32..10, -17_000i32..17_000).prop_map(|(m, e)| format!("{m}e{e}")),
        1 => (0usize..17_500, -3i32..3).prop_map(|(digits, e)| format!("0.{}e{e}", "7".repeat(digits))),
        2 => prop::sample::select(vec![
            "0", "-0", "0.0", "1e308", "-1e308", "1e-308", "5e-324", "1e-16383", "1e-16384",
            "0e-16384", "1e-20000", "1.7976931348623157e308", "123456789012345678901234567890",
            "1E+2", "1e-0", "-0.000000000000000000001",
        ])
        .prop_map(str::to_string),
    ]
}

/// A JSON string as text, with escapes and characters from all planes.
fn string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => "[a-zA-Z0-9 ]{0,8}",
        3 => any::<char>().prop_map(|c| c.to_string()),
        1 => prop::sample::select(vec![
            "\\n", "\\t", "\\\"", "\\\\", "\\/", "\\u00e9", "\\ud83d\\ude00", "\\u0001", "\\u001f",
            "\\u2028", "é", "😀", "\u{7f}", "\u{fffd}", "\\u0000", "\\ud800",
        ])
        .prop_map(str::to_string),
        1 => (0usize..3000).prop_map(|n| "x".repeat(n)),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|parts| {
        let raw: String = parts.concat();
        // Raw characters that JSON requires escaped are escaped; the escape pieces stay as they are.
        let mut out = String::from("\"");
        for c in raw.chars() {
            match c {
                '"' if !out.ends_with('\\') => out.push_str("\\\""),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        if out.ends_with('\\') && !out.ends_with("\\\\") {
            out.push('\\');
        }
        out.push('"');
        out
    })
}

/// Any JSON value as text, nested up to `depth`.
fn value(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        number(),
        string(),
        Just("true".to_string()),
        Just("null".to_string()),
    ];
    leaf.prop_recursive(depth, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((string(), inner), 0..6).prop_map(|kv| {
                let fields: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
    .boxed()
}

/// `properties` as text: an object of generated values, sometimes nested past the limit.
fn properties() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec((string(), value(5)), 0..5).prop_map(|kv| {
            let fields: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", fields.join(","))
        }),
        1 => (25usize..40).prop_map(|d| format!("{}1{}", "{\"a\":".repeat(d), "}".repeat(d))),
    ]
}

#[tokio::test]
async fn whatever_ingest_accepts_postgresql_stores_equal_as_jsonb() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let (ingest, db, key) = (&p.ingest, &p.db, &p.key);
    let mut runner = TestRunner::new(Config::with_cases(300));
    let name = prop_oneof![
        "[a-zA-Z0-9_.]{1,20}".prop_map(|n| format!("\"{n}\"")),
        string(),
    ];
    let strategy = (properties(), name);
    let (mut accepted, mut rejected, mut unparsable) = (Vec::new(), 0usize, 0usize);
    for _ in 0..300 {
        let (props, name) = strategy.new_tree(&mut runner).unwrap().current();
        let id = uuid::Uuid::new_v4().to_string();
        let body = format!(
            r#"[{{"event_id":"{id}","name":{name},"timestamp":"2026-01-01T00:00:00Z","properties":{props}}}]"#
        );
        // A generated text that is no JSON at all tests the parser, not this promise.
        if serde_json::from_str::<serde::de::IgnoredAny>(&body).is_err() {
            unparsable += 1;
            continue;
        }
        let (status, answer) = ingest.post_text(body).await;
        match status {
            200 => accepted.push((id, props)),
            400 => rejected += 1,
            other => panic!("status {other}: {answer}"),
        }
    }
    println!(
        "accepted {}, rejected {rejected}, not JSON {unparsable} (of 300)",
        accepted.len()
    );
    // The generator reaches both sides of the line, and mostly valid JSON.
    assert!(accepted.len() >= 100, "only {} accepted", accepted.len());
    assert!(rejected >= 10, "only {rejected} rejected");
    assert!(
        unparsable <= 60,
        "{unparsable} generated bodies were not JSON"
    );
    db.wait_rows(accepted.len() as i64).await;
    let mut conn = p.redis().await;
    wait_stream_empty(&conn, key).await;
    assert_eq!(xlen(&mut conn, &format!("{key}:dead")).await, 0);
    let client = db.client().await;
    for (id, props) in &accepted {
        let id: uuid::Uuid = id.parse().unwrap();
        let row = client
            .query_one(
                "SELECT properties = $2::text::jsonb FROM events WHERE event_id = $1",
                &[&id, &props],
            )
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}\n{}", &props[..props.len().min(300)]));
        let equal: bool = row.get(0);
        assert!(equal, "{id}: stored properties differ from {props}");
    }
    assert_eq!(db.count().await, accepted.len() as i64);
}
