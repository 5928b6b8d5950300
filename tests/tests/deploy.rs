//! The deployment files: linted offline (no Docker engine here) by `scripts/lint-deploy`, and the
//! Grafana dashboard's queries checked against the metrics the real binaries export.

use std::collections::BTreeSet;
use std::process::Command;

use et_tests::*;
use serde_json::{Value, json};

#[test]
fn deploy_files_pass_the_offline_linters() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/lint-deploy");
    let out = Command::new(script)
        .output()
        .expect("scripts/lint-deploy runs");
    assert!(
        out.status.success(),
        "scripts/lint-deploy failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every metric the Grafana dashboard queries exists in a live /metrics.
#[tokio::test]
async fn dashboard_metrics_exist() {
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/eventtracker.json"
    ))
    .expect("the dashboard");
    let parsed: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 8));
    let mut wanted = BTreeSet::new();
    let mut rest = dashboard.as_str();
    while let Some(i) = rest.find("eventtracker_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_string();
        wanted.insert(base);
    }
    assert!(wanted.len() >= 8, "{wanted:?}");
    let db = TestDb::migrated(&shared_admin_url()).await;
    let key = unique("events");
    let ingest = Ingest::start(&shared_redis_url(), &key, &[]);
    let flusher = Flusher::start(&shared_redis_url(), &db.url, &key, &[], &[]);
    let (status, _) = ingest.post(&json!([event("d", 0), {"name": 1}])).await;
    assert_eq!(status, 200);
    db.wait_rows(1).await;
    let all = format!(
        "{}{}",
        scrape(&ingest.url).await,
        scrape(&flusher.metrics_url()).await
    );
    for name in &wanted {
        assert!(
            all.lines().any(|l| l.starts_with(name.as_str())),
            "the dashboard queries {name}, which /metrics does not have"
        );
    }
}
