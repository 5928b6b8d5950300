//! The deployment files: linted offline (no Docker engine here) by `scripts/lint-deploy` (which also
//! runs `promtool check rules` and `promtool test rules` on the Prometheus alerts), and the metrics the
//! Grafana dashboard and the alerting rules query checked against what the real binaries export.

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

/// The `eventtracker_…` metric names in `text`, histograms by their base name.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
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
        names.insert(base);
    }
    names
}

fn deploy_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../deploy/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// Every metric the Grafana dashboard and the alerting rules query exists in a live /metrics.
#[tokio::test]
async fn dashboard_metrics_exist() {
    let dashboard = deploy_file("grafana/eventtracker.json");
    let parsed: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 8));
    let from_dashboard = metric_names(&dashboard);
    assert!(from_dashboard.len() >= 8, "{from_dashboard:?}");
    // The rules' expressions: comment lines only talk about metrics (and patterns of them).
    let alerts: String = deploy_file("prometheus/alerts.yaml")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let from_alerts = metric_names(&alerts);
    assert!(from_alerts.len() >= 8, "{from_alerts:?}");

    let p = Pipeline::start(PipelineOptions::default()).await;
    let (ingest, db, flusher) = (&p.ingest, &p.db, &p.flushers[0]);
    let (status, _) = ingest.post(&json!([event("d", 0), {"name": 1}])).await;
    assert_eq!(status, 200);
    db.wait_rows(1).await;
    let all = format!(
        "{}{}",
        scrape(&ingest.url).await,
        scrape(&flusher.metrics_url()).await
    );
    for (what, names) in [
        ("dashboard", &from_dashboard),
        ("alerts.yaml", &from_alerts),
    ] {
        for name in names {
            assert!(
                all.lines().any(|l| l.starts_with(name.as_str())),
                "the {what} queries {name}, which /metrics does not have"
            );
        }
    }
}

/// The Dockerfile cannot be built here (no engine), so what it needs is checked by reading it:
/// every workspace member's manifest is copied before `cargo fetch` (a member it lacks makes the
/// workspace unresolvable), and every folder a build reads is copied (docs/openapi.yaml is
/// compiled into ingest-api). Both were broken once: redis-queue was missing for a whole release.
#[test]
fn the_dockerfile_copies_every_member_and_input() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let dockerfile = std::fs::read_to_string(format!("{root}/deploy/Dockerfile")).unwrap();
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
    let members_line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("a members line");
    let members: Vec<&str> = members_line.split('"').skip(1).step_by(2).collect();
    assert!(members.len() >= 5, "{members:?}");
    for m in &members {
        assert!(
            dockerfile.contains(&format!("COPY {m}/Cargo.toml {m}/")),
            "deploy/Dockerfile does not copy {m}/Cargo.toml"
        );
        let stub_loop = dockerfile
            .lines()
            .find(|l| l.contains("for d in"))
            .expect("the stub loop");
        assert!(stub_loop.contains(m), "the stub loop lacks {m}");
    }
    for input in ["crates", "tests", "migrations", "docs"] {
        assert!(
            dockerfile.contains(&format!("COPY {input} {input}")),
            "deploy/Dockerfile does not copy {input}/"
        );
    }
    let ignored = std::fs::read_to_string(format!("{root}/.dockerignore")).unwrap();
    assert!(
        !ignored.lines().any(|l| l.trim() == "docs"),
        "docs/ is ignored"
    );
}
