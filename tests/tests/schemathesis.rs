//! A third-party API tester against the live server: `scripts/schemathesis` runs schemathesis (from
//! PyPI) with `docs/openapi.yaml` and a valid token for a bounded number of examples. It fails on
//! any 5xx, any status, content type, header or body outside the description, and when no
//! `POST /v1/events` was answered 2xx (an all-401 run would prove nothing).

use std::process::Command;
use std::time::Instant;

use et_tests::*;

#[test]
fn schemathesis_finds_no_server_error_and_nothing_outside_the_description() {
    let ingest = Ingest::start(&shared_redis_url(), &unique("events"), &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/schemathesis");
    let start = Instant::now();
    let out = Command::new("bash")
        .arg(script)
        .args(["--url", &ingest.url, "--token", TOKEN])
        .args(["--max-examples", "30"])
        .output()
        .expect("scripts/schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/schemathesis failed ({}) after {:?}:\n{stdout}\n{stderr}",
        out.status,
        start.elapsed()
    );
    let accepted: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("schemathesis: POST /v1/events answered 2xx "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 2xx count in the output:\n{stdout}"));
    assert!(accepted > 0, "no 2xx answers:\n{stdout}");
    assert!(
        ingest
            .proc
            .log_text()
            .lines()
            .all(|l| !l.contains("panicked")),
        "ingest-api panicked:\n{}",
        ingest.proc.log_text()
    );
}
