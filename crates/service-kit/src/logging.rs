//! env_logger set up from `RUST_LOG`, as text or one JSON object a line.

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    // Plain comments, not doc comments: clap would turn those into a long multi-line --help.
    // Human-readable lines.
    Text,
    // One JSON object a line, for log shippers.
    Json,
}

/// Installs the logger: `RUST_LOG` (default `info`, see [`filter`]), in `format`.
pub fn init(format: LogFormat) {
    let filter = filter(std::env::var("RUST_LOG").ok());
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&filter);
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            use std::io::Write;
            let ts = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            let line = serde_json::json!({
                "ts": ts,
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    let _ = builder.try_init();
}

/// The log filter for a `RUST_LOG` value (default `info`): the redis crate's cluster client
/// logs a warning for every reconnect attempt while a node is down (hundreds a second), and we
/// log the failures that matter ourselves, so it gets `redis=error` unless `RUST_LOG` sets its
/// level (`redis=…`, `redis::…=…`).
pub fn filter(rust_log: Option<String>) -> String {
    let filter = rust_log.unwrap_or_else(|| "info".into());
    let names_redis = filter
        .split(',')
        .any(|d| d == "redis" || d.starts_with("redis=") || d.starts_with("redis::"));
    if names_redis {
        filter
    } else {
        format!("{filter},redis=error")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_crate_is_quiet_unless_asked() {
        assert_eq!(filter(None), "info,redis=error");
        assert_eq!(
            filter(Some("debug,redis_queue=trace".into())),
            "debug,redis_queue=trace,redis=error"
        );
        assert_eq!(filter(Some("info,redis=debug".into())), "info,redis=debug");
        assert_eq!(
            filter(Some("redis::cluster=info".into())),
            "redis::cluster=info"
        );
    }
}
