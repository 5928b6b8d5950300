//! The README's configuration tables match `--help` of the real binaries, both ways.

use std::collections::BTreeSet;
use std::process::Command;

use et_tests::bin;

/// (flag, env, default) of every option in a `--help` text.
fn options(help: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    let lines: Vec<&str> = help.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        let Some(rest) = line.strip_prefix("--") else {
            i += 1;
            continue;
        };
        let flag = format!("--{}", rest.split_whitespace().next().unwrap_or_default());
        let mut text = line.to_string();
        i += 1;
        // The text runs on, blank lines included, until the next option or an unindented line.
        while i < lines.len()
            && !lines[i].trim_start().starts_with('-')
            && (lines[i].starts_with(' ') || lines[i].is_empty())
        {
            text.push(' ');
            text.push_str(lines[i].trim());
            i += 1;
        }
        if flag == "--help" || flag == "--version" {
            continue;
        }
        let between = |open: &str, close: char| {
            text.split_once(open)
                .map(|(_, r)| {
                    r.split(close)
                        .next()
                        .unwrap_or_default()
                        .trim_end_matches('=')
                        .to_string()
                })
                .unwrap_or_default()
        };
        let env = between("[env: ", ']');
        let default = between("[default: ", ']');
        out.insert((flag, env, default));
    }
    out
}

/// (flag, env, default) of every row of the README table under `heading`.
fn readme_rows(readme: &str, heading: &str) -> BTreeSet<(String, String, String)> {
    let section = readme
        .split(heading)
        .nth(1)
        .expect("the README has the heading");
    let section = section.split("\n#").next().unwrap();
    section
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cells: Vec<&str> = l
                .split(" | ")
                .map(|c| c.trim_matches(|c| c == '|' || c == ' '))
                .collect();
            let strip = |c: &str| c.trim_matches('`').to_string();
            let default = if cells[2] == "—" {
                String::new()
            } else {
                strip(cells[2])
            };
            (strip(cells[0]), strip(cells[1]), default)
        })
        .collect()
}

/// `BINARY --help` with extra environment variables: its stdout, after checking that it exited 0
/// and printed a usage text (an empty or failed help must not pass as "nothing secret shown").
fn help_with_env(binary: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(bin(binary));
    cmd.arg("--help");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{binary} --help exited with {}:\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Usage:") && text.contains("--help"),
        "{binary} --help printed no usage text:\n{text}"
    );
    text
}

fn help(binary: &str) -> String {
    help_with_env(binary, &[])
}

#[test]
fn readme_tables_match_help() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for binary in ["ingest-api", "flusher"] {
        let from_help = options(&help(binary));
        assert!(from_help.len() >= 10, "{binary}: parsed {from_help:?}");
        for (flag, env, _) in &from_help {
            assert!(
                !env.is_empty(),
                "{binary} {flag} has no environment variable"
            );
        }
        let from_readme = readme_rows(&readme, &format!("#### {binary}\n"));
        assert_eq!(
            from_readme, from_help,
            "README table of {binary} vs its --help"
        );
    }
}

#[test]
fn secrets_never_show_in_help() {
    let text = help_with_env(
        "ingest-api",
        &[
            ("INGEST_TOKENS", "web=super-secret-token"),
            ("INGEST_REDIS_URL", "redis://:hunter2@127.0.0.1:1/"),
        ],
    );
    assert!(
        !text.contains("super-secret-token") && !text.contains("hunter2"),
        "{text}"
    );
    let text = help_with_env(
        "flusher",
        &[("FLUSHER_DATABASE_URL", "postgres://u:hunter3@127.0.0.1/db")],
    );
    assert!(!text.contains("hunter3"), "{text}");
}
