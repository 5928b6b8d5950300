//! `scripts/bench --quick` in the suite, so the benchmark cannot rot: every row must come out
//! with a figure, positive but for latencies and backlogs (the bench itself fails otherwise;
//! this test checks the JSON too), every target row with its verdict, and the SVG picture
//! written beside the JSON.

use std::process::Command;

use serde_json::Value;

/// The rows that carry a target (bench/README.md lists them).
const TARGET_ROWS: [&str; 9] = [
    "ratio_flush_1",
    "cpu_flusher",
    "e2e_35_achieved",
    "e2e_35_p99",
    "e2e_35_backlog",
    "e2e_light_p99",
    "ratio_ingest",
    "rss_ingest",
    "rss_flusher",
];

#[test]
fn quick_bench_fills_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let stdout = run_quick(&out);
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(json["mode"], "quick");
    let results = json["results"].as_object().expect("results");
    assert!(results.len() >= 40, "{results:?}");
    every_row_has_a_figure(results);
    every_target_has_its_verdict(results, &stdout);
    for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
        assert_eq!(json["settings"]["postgres"][setting], "on", "{setting}");
    }
    assert_eq!(json["settings"]["redis_appendfsync"], "everysec");
    assert_eq!(
        json["facts"]["raw_copy_loads_rows_per_sec"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    the_picture_is_a_chart(&dir.path().join("bench.svg"));
}

/// `scripts/bench --quick` with the debug binaries the suite built; its table.
fn run_quick(out: &std::path::Path) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/bench");
    let run = Command::new(script)
        .arg("--quick")
        .arg("--out")
        .arg(out)
        // The suite has built the debug binaries (loadgen and bench included): no cargo inside
        // a test.
        .env("ET_BENCH_PROFILE", "debug")
        .env("ET_BENCH_NO_BUILD", "1")
        .output()
        .expect("scripts/bench runs");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "scripts/bench --quick failed:\n{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    stdout
}

fn every_row_has_a_figure(results: &serde_json::Map<String, Value>) {
    for (key, row) in results {
        let v = row["value"].as_f64();
        // A latency may be 0 ms (a row seen before its 200 was recorded, in a tiny quick run),
        // a backlog 0 entries; every other figure must be positive.
        let ok = match row["unit"].as_str() {
            Some("ms" | "entries") => v.is_some_and(|v| v >= 0.0),
            _ => v.is_some_and(|v| v > 0.0),
        };
        assert!(ok, "{key} has no figure: {row}");
        if row.get("target").is_some() {
            assert!(
                row["met"].is_boolean(),
                "{key} has a target but no verdict: {row}"
            );
        }
    }
}

/// Each target row has a verdict in the JSON, and its table line ends with the same one.
fn every_target_has_its_verdict(results: &serde_json::Map<String, Value>, stdout: &str) {
    for key in TARGET_ROWS {
        let row = &results[key];
        assert!(row["target"].is_string(), "{key} has no target: {row}");
        assert!(row["met"].is_boolean(), "{key} has no met: {row}");
        let label = row["label"].as_str().unwrap();
        let line = stdout.lines().find(|l| l.starts_with(label));
        let line = line.unwrap_or_else(|| panic!("{key}: no table line for {label:?}"));
        let verdict = if row["met"] == true { "met" } else { "MISSED" };
        assert!(line.trim_end().ends_with(verdict), "{key}: {line:?}");
    }
}

fn the_picture_is_a_chart(path: &std::path::Path) {
    let svg = std::fs::read_to_string(path).expect("bench.svg written");
    let svg = svg.trim();
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "{}",
        &svg[..svg.len().min(200)]
    );
    assert!(svg.ends_with("</svg>"), "the SVG is cut short");
    assert!(
        svg.contains("<text") && svg.contains("<polyline"),
        "the SVG holds no chart"
    );
}
