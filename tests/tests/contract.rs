//! `docs/contract.md` is the contract, and it agrees with the code: every error code of
//! `ApiError` with its status, in the contract and in `docs/openapi.yaml`; every limit with the
//! binaries' `--help` defaults and `event_model`'s values. And nothing in the repository names
//! documentation outside it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use et_tests::bin;
use event_model::{BatchError, Limits, parse_batch};

/// The repository's root (the workspace, one above this package).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The text of `fn name` in Rust source, up to the end of its body (a method: `\n    }\n`).
fn method<'a>(src: &'a str, name: &str) -> &'a str {
    let start = src
        .find(&format!("fn {name}("))
        .unwrap_or_else(|| panic!("no fn {name}"));
    let len = src[start..]
        .find("\n    }\n")
        .expect("the end of the method");
    &src[start..start + len]
}

/// The identifier right after each `prefix` in `text`, with its position.
fn idents_after(text: &str, prefix: &str) -> Vec<(usize, String)> {
    text.match_indices(prefix)
        .map(|(at, _)| {
            let rest = &text[at + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (at, rest[..end].to_string())
        })
        .collect()
}

/// Every code of `ApiError::code` with the status `ResponseError::status_code` gives it, read from
/// `crates/ingest-api/src/error.rs`.
fn codes_in_the_code() -> BTreeMap<String, u16> {
    let src = read("crates/ingest-api/src/error.rs");
    let mut code_of = BTreeMap::new();
    for line in method(&src, "code").lines().filter(|l| l.contains("=> \"")) {
        let variant = idents_after(line, "ApiError::")[0].1.clone();
        let code = line.split('"').nth(1).expect("a quoted code").to_string();
        code_of.insert(variant, code);
    }
    // Arms are `ApiError::A | ApiError::B … => StatusCode::NAME`: variants gather until a status.
    let body = method(&src, "status_code");
    let mut marks: Vec<(usize, String, bool)> = idents_after(body, "ApiError::")
        .into_iter()
        .map(|(at, v)| (at, v, false))
        .chain(
            idents_after(body, "StatusCode::")
                .into_iter()
                .map(|(at, s)| (at, s, true)),
        )
        .collect();
    marks.sort();
    let mut out = BTreeMap::new();
    let mut pending = Vec::new();
    for (_, name, is_status) in marks {
        if !is_status {
            pending.push(name);
            continue;
        }
        let status = match name.as_str() {
            "BAD_REQUEST" => 400,
            "UNAUTHORIZED" => 401,
            "NOT_FOUND" => 404,
            "METHOD_NOT_ALLOWED" => 405,
            "REQUEST_TIMEOUT" => 408,
            "PAYLOAD_TOO_LARGE" => 413,
            "UNSUPPORTED_MEDIA_TYPE" => 415,
            "TOO_MANY_REQUESTS" => 429,
            "SERVICE_UNAVAILABLE" => 503,
            other => panic!("add StatusCode::{other} to this test"),
        };
        for variant in pending.drain(..) {
            let code = code_of
                .get(&variant)
                .unwrap_or_else(|| panic!("ApiError::{variant} has a status but no code"));
            out.insert(code.clone(), status);
        }
    }
    assert_eq!(
        out.len(),
        code_of.len(),
        "every variant with a code has a status: {code_of:?} vs {out:?}"
    );
    assert!(out.len() >= 15, "parsed error.rs: {out:?}");
    out
}

/// The lines of the YAML block that starts with the line `header` (its indented children).
fn yaml_block<'a>(yaml: &'a str, header: &str) -> Vec<&'a str> {
    let indent = header.len() - header.trim_start().len();
    let mut lines = yaml.lines().skip_while(|l| *l != header);
    assert!(lines.next().is_some(), "docs/openapi.yaml has {header:?}");
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .collect()
}

/// The values of an `enum:` in a block, as a block list or as a flow list `[a, b]`.
fn yaml_enum(block: &[&str]) -> BTreeSet<String> {
    let at = block
        .iter()
        .position(|l| l.trim_start().starts_with("enum:"))
        .expect("an enum");
    let flow = block[at].trim_start().trim_start_matches("enum:").trim();
    if !flow.is_empty() {
        return flow
            .trim_matches(['[', ']'])
            .split(',')
            .map(|v| v.trim().to_string())
            .collect();
    }
    block[at + 1..]
        .iter()
        .map_while(|l| l.trim_start().strip_prefix("- "))
        .map(|v| v.trim().to_string())
        .collect()
}

/// The error schema each status of `docs/openapi.yaml`'s paths refers to, through its response.
fn openapi_error_schemas(yaml: &str) -> BTreeMap<u16, String> {
    let target = |line: &str, kind: &str| {
        line.split(&format!("#/components/{kind}/"))
            .nth(1)
            .map(|r| r.trim_end_matches('"').to_string())
    };
    let responses = yaml_block(yaml, "  responses:").join("\n");
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = yaml.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(status) = line
            .trim()
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix("\":"))
            .and_then(|s| s.parse::<u16>().ok())
        else {
            continue;
        };
        let Some(response) = lines.get(i + 1).and_then(|l| target(l, "responses")) else {
            continue;
        };
        let block = yaml_block(&responses, &format!("    {response}:"));
        // Only error bodies (a 200's `Accepted` is no error).
        if let Some(schema) = block.iter().find_map(|l| target(l, "schemas"))
            && schema.ends_with("Error")
        {
            out.insert(status, schema);
        }
    }
    out
}

/// The rows of the first Markdown table in the section `heading` of `text`, as trimmed cells.
fn table(text: &str, heading: &str) -> Vec<Vec<String>> {
    let section = text
        .split(&format!("\n{heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("docs/contract.md has {heading:?}"));
    let section = section.split("\n## ").next().unwrap_or_default();
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// The first `` `quoted` `` text of a cell.
fn first_quoted(cell: &str) -> Option<&str> {
    cell.split('`').nth(1)
}

/// `--flag` → default (empty when none) of a binary's `--help`.
fn help_defaults(binary: &str) -> BTreeMap<String, String> {
    let out = Command::new(bin(binary)).arg("--help").output().unwrap();
    assert!(out.status.success(), "{binary} --help");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut defaults = BTreeMap::new();
    let mut flag = None;
    for line in text.lines() {
        if let Some(f) = line
            .split_whitespace()
            .find(|w| w.starts_with("--") && line.trim_start().starts_with('-'))
        {
            let f = f.trim_end_matches(',').to_string();
            defaults.insert(f.clone(), String::new());
            flag = Some(f);
        }
        if let (Some(f), Some((_, d))) = (&flag, line.split_once("[default: ")) {
            defaults.insert(
                f.clone(),
                d.split(']').next().unwrap_or_default().to_string(),
            );
        }
    }
    assert!(defaults.len() >= 10, "{binary}: parsed {defaults:?}");
    defaults
}

/// (a) The error codes and the limits of `docs/contract.md` are the code's, and
/// `docs/openapi.yaml` has the same codes.
#[test]
fn codes_and_limits_agree_in_the_code_the_contract_and_openapi() {
    error_codes_agree();
    limits_agree();
}

/// Every code of `ApiError`, with its status, in the contract's table, in the `Error` enum of
/// `docs/openapi.yaml` and in the enum of each status the paths answer with.
fn error_codes_agree() {
    let code = codes_in_the_code();
    let contract = read("docs/contract.md");
    let yaml = read("docs/openapi.yaml");

    let in_contract: BTreeMap<String, u16> = table(&contract, "## Error codes")
        .iter()
        .map(|row| {
            let code = first_quoted(&row[0]).expect("a `code` in the first column");
            let status = row[1].parse().expect("a status in the second column");
            (code.to_string(), status)
        })
        .collect();
    assert_eq!(
        in_contract, code,
        "docs/contract.md's error table vs ApiError (crates/ingest-api/src/error.rs)"
    );

    let codes: BTreeSet<String> = code.keys().cloned().collect();
    let in_openapi = yaml_enum(&yaml_block(&yaml, "    Error:"));
    assert_eq!(
        in_openapi, codes,
        "docs/openapi.yaml's Error.error enum vs ApiError"
    );

    // Each status of the paths allows exactly the codes the code answers with that status.
    let schemas = openapi_error_schemas(&yaml);
    assert!(schemas.len() >= 7, "{schemas:?}");
    for (status, schema) in &schemas {
        let allowed = yaml_enum(&yaml_block(&yaml, &format!("    {schema}:")));
        let want: BTreeSet<String> = code
            .iter()
            .filter(|(_, s)| *s == status)
            .map(|(c, _)| c.clone())
            .collect();
        assert_eq!(allowed, want, "docs/openapi.yaml: {status} ({schema})");
    }
}

/// `depth` nested arrays: `[[…]]`.
fn arrays(depth: usize) -> String {
    "[".repeat(depth) + &"]".repeat(depth)
}

/// The value of a limit the contract calls fixed, from the code; `stated` is the contract's.
fn fixed_limit(constant: &str, stated: usize) -> usize {
    let limits = Limits::default();
    match constant {
        "Limits::max_properties_depth" => limits.max_properties_depth,
        "Limits::max_string_chars" => limits.max_string_chars,
        "PG_NUMERIC_MAX_SCALE" => event_model::event::PG_NUMERIC_MAX_SCALE as usize,
        "PG_NUMERIC_MAX_INT_DIGITS" => event_model::event::PG_NUMERIC_MAX_INT_DIGITS as usize,
        // Private to event-model: found by what parse_batch does at the stated depth and past it.
        "MAX_NESTING" => {
            let at = parse_batch(arrays(stated).as_bytes(), 1).map(|b| b.events.len());
            let past = parse_batch(arrays(stated + 1).as_bytes(), 1).map(|b| b.events.len());
            match (at, past) {
                (Ok(1), Err(BatchError::InvalidJson(_))) => stated,
                other => panic!("MAX_NESTING is not {stated}: {other:?}"),
            }
        }
        other => panic!("docs/contract.md: teach this test the constant {other}"),
    }
}

/// Every row of the contract's limits table against `ingest-api --help` or `event_model`.
fn limits_agree() {
    let contract = read("docs/contract.md");
    let ingest = help_defaults("ingest-api");
    let flusher = help_defaults("flusher");
    let mut seen = BTreeSet::new();
    for row in table(&contract, "## Limits") {
        let (what, stated) = (&row[1], first_quoted(&row[2]));
        if what.starts_with("`--") {
            let flag = first_quoted(what).unwrap();
            let default = ingest
                .get(flag)
                .unwrap_or_else(|| panic!("docs/contract.md: ingest-api has no {flag}"));
            let stated = stated.unwrap_or_default();
            assert_eq!(stated, default, "docs/contract.md: {flag}'s default");
            seen.insert(flag.to_string());
        } else if let Some(rest) = what.strip_prefix("the flushers' ") {
            // A flusher's setting that ingest-api follows: a flag without a default ("off").
            let flag = first_quoted(rest).unwrap();
            let default = flusher
                .get(flag)
                .unwrap_or_else(|| panic!("docs/contract.md: the flusher has no {flag}"));
            assert_eq!(stated, None, "docs/contract.md: {flag} is stated off");
            assert_eq!(default, "", "docs/contract.md: {flag} has a default");
            seen.insert(flag.to_string());
        } else if let Some(constant) = what.strip_prefix("fixed: ") {
            let constant = constant.trim_matches('`');
            let stated: usize = stated
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("docs/contract.md: {constant} has a number"));
            let actual = fixed_limit(constant, stated);
            assert_eq!(stated, actual, "docs/contract.md: {constant}");
            seen.insert(constant.to_string());
        } else {
            panic!("docs/contract.md: a limit without a flag or a fixed constant: {row:?}");
        }
    }
    for required in [
        "--max-body-bytes",
        "--max-decompressed-bytes",
        "--max-events",
        "--max-properties-bytes",
        "--min-timestamp",
        "--max-future-secs",
        "--clock-skew-threshold-secs",
        "--retention",
        "--max-inflight-bytes",
        "Limits::max_properties_depth",
        "Limits::max_string_chars",
        "MAX_NESTING",
    ] {
        assert!(
            seen.contains(required),
            "docs/contract.md's limits lack {required}"
        );
    }
    // ingest-api's flags and event-model's defaults are the same limits.
    let limits = Limits::default();
    assert_eq!(
        ingest["--max-properties-bytes"],
        limits.max_properties_bytes.to_string()
    );
    assert_eq!(
        ingest["--max-future-secs"],
        limits.max_future.whole_seconds().to_string()
    );
    assert_eq!(
        event_model::timestamp::parse_timestamp(&ingest["--min-timestamp"]),
        Ok(limits.min_timestamp)
    );
    flags_named_exist(&contract, &ingest, &help_defaults("flusher"));
}

/// Every `--flag` the contract names is a flag of ingest-api or of the flusher.
fn flags_named_exist(
    contract: &str,
    ingest: &BTreeMap<String, String>,
    flusher: &BTreeMap<String, String>,
) {
    let named: BTreeSet<&str> = contract
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| {
            w.strip_prefix("--")
                .is_some_and(|f| f.starts_with(|c: char| c.is_ascii_lowercase()))
        })
        .collect();
    assert!(named.len() >= 10, "{named:?}");
    for flag in named {
        assert!(
            ingest.contains_key(flag) || flusher.contains_key(flag),
            "docs/contract.md names {flag}, which neither binary has"
        );
    }
}

/// This file: it holds the patterns it looks for, so it alone is not searched. Matched by its
/// whole path, so no other file can be skipped.
const THIS_FILE: &str = "tests/tests/contract.rs";

/// Documentation that lived outside the repository (a clone does not have it).
const OUTSIDE: [&str; 5] = [
    "../shared",
    "shared/spec",
    "shared/design",
    "shared/style",
    "shared/hooks",
];

/// Relative paths in `text` (of the file at `path`) that climb above the repository's root: a
/// run of `../` resolved from the file's folder, or, for `"/../…"` in Rust (appended to
/// `CARGO_MANIFEST_DIR`), from its package's folder.
fn escaping_paths(path: &str, text: &str) -> Vec<String> {
    let dir = Path::new(path).parent().unwrap_or(Path::new(""));
    let mut package = dir;
    while !package.as_os_str().is_empty() && !root().join(package).join("Cargo.toml").exists() {
        package = package.parent().unwrap_or(Path::new(""));
    }
    let mut out = Vec::new();
    for (at, _) in text.match_indices("../") {
        let before = &text[..at];
        if before.ends_with('.') || before.ends_with("../") {
            continue;
        }
        let appended = path.ends_with(".rs") && before.ends_with("\"/");
        let base = if appended { package } else { dir };
        let ups = text.as_bytes()[at..]
            .chunks(3)
            .take_while(|c| *c == b"../")
            .count();
        if ups > base.components().count() {
            let line = before.matches('\n').count() + 1;
            let shown: String = text[at..].chars().take(60).collect();
            out.push(format!(
                "{path}:{line}: {}",
                shown.lines().next().unwrap_or("")
            ));
        }
    }
    out
}

/// The repository's files: tracked, or new and not ignored (`git ls-files`).
fn repository_files() -> BTreeSet<String> {
    let out = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root())
        .output()
        .expect("git");
    assert!(out.status.success(), "git ls-files");
    String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect()
}

/// (b) No file of the repository (tracked, or new and not ignored) names documentation outside it.
#[test]
fn no_file_names_a_path_outside_the_repository() {
    let files = repository_files();
    assert!(files.len() > 50, "{files:?}");
    // The one file skipped is this test itself, by its whole path.
    assert!(
        files.contains(THIS_FILE),
        "{THIS_FILE} is where it should be"
    );
    assert_eq!(
        root().join(THIS_FILE).canonicalize().unwrap(),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/contract.rs")
            .canonicalize()
            .unwrap()
    );

    let mut found = Vec::new();
    let mut searched = 0;
    for path in files.iter().filter(|f| *f != THIS_FILE) {
        // Files listed but deleted in the work tree, and binary files, hold no references.
        let Ok(bytes) = std::fs::read(root().join(path)) else {
            continue;
        };
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        searched += 1;
        for (n, line) in text.lines().enumerate() {
            for pattern in OUTSIDE {
                if line.contains(pattern) {
                    found.push(format!("{path}:{}: {}", n + 1, line.trim()));
                }
            }
        }
        found.extend(escaping_paths(path, &text));
    }
    assert!(searched > 50, "searched {searched} files");
    assert!(
        found.is_empty(),
        "paths outside the repository (the contract is docs/contract.md, the API \
         docs/openapi.yaml):\n{}",
        found.join("\n")
    );
}
