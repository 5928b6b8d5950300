//! Runs `scripts/chaos` as CI does, on one Redis and on a Redis Cluster; the script itself checks
//! the outcome and that every fault happened.

use std::process::Command;

/// Runs `scripts/chaos` with `args`; fails unless it passed with every event stored once.
fn chaos(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/chaos");
    let out = Command::new(script)
        .args(["--events", "50000"])
        .args(args)
        .env("ET_CHAOS_NO_BUILD", "1")
        .output()
        .expect("scripts/chaos runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("acked="))
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "scripts/chaos {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        summary.starts_with("acked=50000 stored=50000 lost=0 duplicated=0 unexpected=0 dead=0"),
        "{summary}"
    );
    println!("{stdout}");
    stdout
}

/// Flushers SIGKILLed, Redis crashed, PostgreSQL stopped, under a load of 50,000 events.
#[test]
fn chaos_run_loses_nothing_and_doubles_nothing() {
    chaos(&[]);
}

/// The same on a real 3-master Redis Cluster with 8 shards and two ingest-api processes: three
/// flushers SIGKILLed, the cluster node holding the most shards SIGKILLed and restarted,
/// PostgreSQL stopped, under 50,000 events with client-chosen ids.
#[test]
fn chaos_on_a_redis_cluster_loses_nothing_and_doubles_nothing() {
    let stdout = chaos(&["--cluster"]);
    assert!(stdout.contains("cluster node :"), "{stdout}");
}
