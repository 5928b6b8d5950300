//! Runs `scripts/chaos` as CI does: flushers SIGKILLed, Redis crashed, PostgreSQL stopped, under
//! a load of 50,000 events; the script itself checks the outcome and every fault.

use std::process::Command;

#[test]
fn chaos_run_loses_nothing_and_doubles_nothing() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/chaos");
    let out = Command::new(script)
        .args(["--events", "50000"])
        .env("ET_CHAOS_NO_BUILD", "1")
        .output()
        .expect("scripts/chaos runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("acked="))
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "scripts/chaos failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        summary.starts_with("acked=50000 stored=50000 lost=0 duplicated=0 unexpected=0 dead=0"),
        "{summary}"
    );
    println!("{stdout}");
}

/// The same on a real 3-master Redis Cluster with 8 shards and two ingest-api processes: three
/// flushers SIGKILLed, the cluster node holding the most shards SIGKILLed and restarted,
/// PostgreSQL stopped, under 50,000 events with client-chosen ids.
#[test]
fn chaos_on_a_redis_cluster_loses_nothing_and_doubles_nothing() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/chaos");
    let out = Command::new(script)
        .args(["--events", "50000", "--cluster"])
        .env("ET_CHAOS_NO_BUILD", "1")
        .output()
        .expect("scripts/chaos runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("acked="))
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "scripts/chaos --cluster failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        summary.starts_with("acked=50000 stored=50000 lost=0 duplicated=0 unexpected=0 dead=0"),
        "{summary}"
    );
    assert!(stdout.contains("cluster node :"), "{stdout}");
    println!("{stdout}");
}
