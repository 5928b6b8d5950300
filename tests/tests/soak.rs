//! A 60-second `scripts/soak` (the full run is 10 minutes, not part of the suite): a paced load
//! while one flusher is SIGKILLed and restarted; only the final line is checked.

use std::process::Command;

#[test]
fn a_short_soak_loses_nothing() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/soak");
    let out = Command::new(script)
        .args(["--seconds", "60"])
        .env("ET_SOAK_NO_BUILD", "1")
        .output()
        .expect("scripts/soak runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "scripts/soak failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout
        .lines()
        .find(|l| l.starts_with("acked="))
        .expect("a final line");
    let field = |name: &str| -> u64 {
        last.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {last}"))
    };
    assert!(field("acked") > 20_000, "{last}");
    assert_eq!(field("acked"), field("stored"), "{last}");
    assert_eq!((field("lost"), field("duplicated")), (0, 0), "{last}");
    assert!(stdout.contains("flusher B killed 3 times"), "{stdout}");
    println!("{stdout}");
}
