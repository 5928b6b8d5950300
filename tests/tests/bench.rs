//! `scripts/bench --quick` in the suite, so the benchmark cannot rot: every row must come out
//! with a figure, positive but for latencies (the script itself fails otherwise; this test checks
//! the JSON too).

use std::process::Command;

use serde_json::Value;

#[test]
fn quick_bench_fills_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/bench");
    let run = Command::new(script)
        .arg("--quick")
        .arg("--out")
        .arg(&out)
        // The suite has built the debug binaries (loadgen included): no cargo inside a test.
        .env("ET_BENCH_PROFILE", "debug")
        .env("ET_BENCH_NO_BUILD", "1")
        .output()
        .expect("scripts/bench runs");
    assert!(
        run.status.success(),
        "scripts/bench --quick failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(json["mode"], "quick");
    let results = json["results"].as_object().expect("results");
    assert!(results.len() >= 20, "{results:?}");
    for (key, row) in results {
        let v = row["value"].as_f64();
        // A latency may be 0 ms (a row seen before its 200 was recorded, in a tiny quick run);
        // every other figure must be positive.
        let ok = match row["unit"].as_str() {
            Some("ms") => v.is_some_and(|v| v >= 0.0),
            _ => v.is_some_and(|v| v > 0.0),
        };
        assert!(ok, "{key} has no figure: {row}");
    }
}
