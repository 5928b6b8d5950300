//! The end of a run: the table on stdout, the JSON and the SVG, and the check that every
//! figure is a number (positive but for latencies and backlogs).

use std::collections::BTreeMap;
use std::process::Command;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{Config, Profile};
use crate::report::{Facts, Loadgen, Report, Row};
use crate::services::Settings;
use crate::{Context, Result, bail, svg};

#[derive(Serialize)]
struct Json<'a> {
    mode: &'static str,
    date: String,
    commit: String,
    machine: String,
    profile: &'static str,
    run_seconds: u64,
    build_seconds: u64,
    settings: &'a Settings,
    facts: &'a Facts,
    results: BTreeMap<&'a str, &'a Row>,
    loadgen: &'a Loadgen,
}

impl Report {
    pub fn finish(mut self, cfg: &Config) -> Result<()> {
        self.add_flusher_rss();
        let machine = machine();
        self.print_table(cfg, &machine);
        let json = Json {
            mode: if cfg.quick { "quick" } else { "full" },
            date: OffsetDateTime::now_utc().format(&Rfc3339)?,
            commit: commit(cfg),
            machine,
            profile: if cfg.profile == Profile::Release {
                "release"
            } else {
                "debug"
            },
            run_seconds: cfg.started.elapsed().as_secs(),
            build_seconds: cfg.build_seconds,
            settings: &self.settings,
            facts: &self.facts,
            results: self.rows.iter().map(|(k, r)| (k.as_str(), r)).collect(),
            loadgen: &self.loadgen,
        };
        if let Some(dir) = cfg.out.parent() {
            std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = cfg.out.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&json)? + "\n")
            .context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &cfg.out)?;
        let svg_path = cfg.out.with_extension("svg");
        svg::draw(&self.plot, &svg_path, cfg.quick)?;
        println!(
            "results: {}\npicture: {}",
            cfg.out.display(),
            svg_path.display()
        );
        self.check_figures()
    }

    fn print_table(&self, cfg: &Config, machine: &str) {
        println!();
        println!(
            "{:<68} {:>12} {:<9} {:<14} ",
            "measurement", "value", "unit", "target"
        );
        println!(
            "{} {} {} {} ------",
            "-".repeat(68),
            "-".repeat(12),
            "-".repeat(9),
            "-".repeat(14)
        );
        for (_, r) in &self.rows {
            let verdict = match r.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            };
            let target = r.target.as_deref().unwrap_or("");
            println!(
                "{:<68} {:>12} {:<9} {:<14} {verdict}",
                r.label, r.value, r.unit, target
            );
        }
        let quick = if cfg.quick {
            "QUICK smoke run (figures mean nothing); "
        } else {
            ""
        };
        let profile = if cfg.profile == Profile::Release {
            "release"
        } else {
            "debug"
        };
        let secs = cfg.started.elapsed().as_secs();
        println!(
            "machine: {machine}; {quick}{profile} binaries, run {secs}s (+ build {}s)",
            cfg.build_seconds
        );
    }

    /// Every figure a finite number: > 0, but ≥ 0 for latencies and backlogs.
    fn check_figures(&self) -> Result<()> {
        let bad: Vec<String> = self
            .rows
            .iter()
            .filter(|(_, r)| {
                let zero_ok = r.unit == "ms" || r.unit == "entries";
                !r.value.is_finite() || r.value < 0.0 || (!zero_ok && r.value == 0.0)
            })
            .map(|(k, r)| format!("{k}={}", r.value))
            .collect();
        if !bad.is_empty() {
            bail!(
                "figures that are not numbers (or not positive): {}",
                bad.join(" ")
            );
        }
        Ok(())
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: f64 = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores, {cpu}, {:.0} GiB, Linux {}",
        mem_kb / 1048576.0,
        kernel.trim()
    )
}

/// The short commit, `-dirty` when the work tree differs.
fn commit(cfg: &Config) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&cfg.root)
            .args(args)
            .output()
            .ok()
    };
    let short = git(&["rev-parse", "--short", "HEAD"])
        .filter(|o| o.status.success())
        .map_or("unknown".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        });
    let dirty = git(&["diff", "--quiet", "HEAD"]).is_some_and(|o| !o.status.success());
    format!("{short}{}", if dirty { "-dirty" } else { "" })
}
