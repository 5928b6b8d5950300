//! The results: one row a figure (with its target, met or MISSED), the table on stdout, the
//! JSON (serde) and the SVG beside it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::cpu::PerRow;
use crate::flush::Outcome;
use crate::output::{CopyOut, DrainOut, E2eOut, FillOut, IngestOut};
use crate::services::Settings;
use crate::svg::Plot;

#[derive(Serialize, Debug, Clone)]
pub struct Row {
    pub label: String,
    pub value: f64,
    pub unit: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

/// What loadgen printed, kept whole in the JSON.
#[derive(Serialize, Default)]
pub struct Loadgen {
    pub ingest: Option<IngestOut>,
    pub ingest_https: Option<IngestOut>,
    pub fill: Option<FillOut>,
    pub drains: BTreeMap<String, DrainOut>,
    pub copy: BTreeMap<String, CopyOut>,
    pub e2e: BTreeMap<String, E2eOut>,
    pub cluster_ingest: Option<IngestOut>,
    pub cluster_fill: Option<FillOut>,
    pub cluster_drains: BTreeMap<String, DrainOut>,
}

/// Run facts beside the rows.
#[derive(Serialize, Default)]
pub struct Facts {
    pub raw_xadd_entries: u64,
    pub raw_xadd_entry_bytes: usize,
    pub flush_events: u64,
    pub raw_copy_loads_rows_per_sec: Vec<f64>,
    pub cpu_per_row_1_flusher_defaults: PerRow,
    pub ingest_seconds: f64,
    pub e2e_seconds: f64,
    pub e2e_flushers: usize,
    pub reference_concurrency: usize,
    pub cluster_masters: usize,
    pub cluster_shards: usize,
    pub cluster_shards_per_master: String,
    pub cluster_entries_per_shard: Vec<u64>,
    pub cluster_ingest_rss_mib: f64,
}

pub struct Report {
    pub rows: Vec<(String, Row)>,
    pub settings: Settings,
    pub facts: Facts,
    pub loadgen: Loadgen,
    pub plot: Plot,
    pub flusher_peak_mib: f64,
    pub raw_copy_median: f64,
    pub raw_xadd: f64,
    pub ingest_rate: f64,
    pub flush_2: f64,
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

impl Report {
    pub fn new(cfg: &Config, settings: Settings) -> Report {
        let facts = Facts {
            raw_xadd_entries: cfg.redis_n,
            flush_events: cfg.flush_n,
            ingest_seconds: cfg.ingest_secs,
            e2e_seconds: cfg.e2e_secs,
            e2e_flushers: cfg.e2e_flushers,
            reference_concurrency: cfg.conc,
            cluster_masters: 3,
            cluster_shards: crate::cluster::SHARDS,
            ..Facts::default()
        };
        Report {
            rows: Vec::new(),
            settings,
            facts,
            loadgen: Loadgen::default(),
            plot: Plot::default(),
            flusher_peak_mib: 0.0,
            raw_copy_median: 0.0,
            raw_xadd: 0.0,
            ingest_rate: 0.0,
            flush_2: 0.0,
        }
    }

    pub fn row(&mut self, key: &str, label: &str, value: f64, unit: &str) {
        let row = Row {
            label: label.into(),
            value,
            unit: unit.into(),
            target: None,
            met: None,
        };
        self.rows.push((key.into(), row));
    }

    /// A row with a target: `met` is whether the figure reaches it.
    pub fn target(
        &mut self,
        key: &str,
        label: &str,
        value: f64,
        unit: &str,
        target: &str,
        met: bool,
    ) {
        let row = Row {
            label: label.into(),
            value,
            unit: unit.into(),
            target: Some(target.into()),
            met: Some(met),
        };
        self.rows.push((key.into(), row));
    }

    pub fn raw_xadd(&mut self, rate: f64, bytes: usize) {
        self.raw_xadd = rate;
        self.facts.raw_xadd_entry_bytes = bytes;
        let label =
            format!("raw Redis: XADD pipelined -P 16, 50 clients (redis-benchmark, {bytes} B)");
        self.row("raw_redis_xadd", &label, rate, "events/s");
    }

    /// The flush rows (1, 2 flushers on defaults; 1, 2 with cN; 1 with batch 1000), the raw
    /// one-COPY loads and the raw COPY in 100/1000-row transactions.
    pub fn add_flush(
        &mut self,
        cfg: &Config,
        runs: [&Outcome; 5],
        loads: &[f64],
        copies: [CopyOut; 2],
    ) {
        self.add_raw_copy(cfg, runs[0], loads, &copies);
        let n = cfg.flush_n;
        let c = cfg.conc;
        let rows = [
            (
                "flush_1",
                format!("flush: 1 flusher, defaults ({n} queued)"),
                "1 def",
            ),
            (
                "flush_2",
                "flush: 2 flushers, defaults".to_string(),
                "2 def",
            ),
            (
                "flush_1_c",
                format!("ref: flush, 1 flusher, --concurrency {c}"),
                "1 c",
            ),
            (
                "flush_2_c",
                format!("ref: flush, 2 flushers, --concurrency {c}"),
                "2 c",
            ),
            (
                "flush_1_b1000",
                "ref: flush, 1 flusher, --batch-size 1000".to_string(),
                "1 b1000",
            ),
        ];
        for ((key, label, short), run) in rows.into_iter().zip(runs) {
            self.row(key, &label, run.drain.rows_per_sec, "rows/s");
            self.loadgen.drains.insert(key.into(), run.drain.clone());
            let short = if short.ends_with(" c") {
                format!("{short}{c}")
            } else {
                short.to_string()
            };
            self.plot.flush.push((short, run.drain.rows_per_sec));
        }
        self.flush_2 = runs[1].drain.rows_per_sec;
        self.plot.raw_copy = [
            self.raw_copy_median,
            copies[0].rows_per_sec,
            copies[1].rows_per_sec,
        ];
        self.loadgen.copy.insert("100".into(), copies[0].clone());
        self.loadgen.copy.insert("1000".into(), copies[1].clone());
        self.add_cpu(&runs[0].cpu);
    }

    /// The raw COPY rows: the three one-COPY loads and their median, 100/1000-row transactions.
    fn add_raw_copy(
        &mut self,
        cfg: &Config,
        first: &Outcome,
        loads: &[f64],
        copies: &[CopyOut; 2],
    ) {
        let runs = [first];
        let n = cfg.flush_n;
        self.raw_copy_median = median(loads);
        self.facts.raw_copy_loads_rows_per_sec = loads.to_vec();
        self.facts.cpu_per_row_1_flusher_defaults = runs[0].cpu.clone();
        self.loadgen.fill = Some(runs[0].fill.clone());
        self.row(
            "raw_redis_multi",
            "ref: Redis MULTI/EXEC of 100 XADDs, 8 conns (loadgen fill)",
            runs[0].fill.events_per_sec,
            "events/s",
        );
        let label = format!("raw PostgreSQL: one binary COPY of {n} rows (psql), median of 3");
        self.row("raw_pg_copy", &label, self.raw_copy_median, "rows/s");
        for (i, l) in loads.iter().enumerate() {
            self.row(
                &format!("raw_pg_copy_{}", i + 1),
                &format!("  raw one-COPY load {} of 3", i + 1),
                *l,
                "rows/s",
            );
        }
        self.row(
            "raw_pg_copy_100",
            "ref: binary COPY, 100 rows/txn, 1 conn",
            copies[0].rows_per_sec,
            "rows/s",
        );
        self.row(
            "raw_pg_copy_1000",
            "ref: binary COPY, 1000 rows/txn, 1 conn",
            copies[1].rows_per_sec,
            "rows/s",
        );
    }

    fn add_cpu(&mut self, cpu: &PerRow) {
        let f = round(cpu.flusher_us, 3);
        self.target(
            "cpu_flusher",
            "CPU per row: flusher (1 flusher, defaults)",
            f,
            "us/row",
            "<= 2 us",
            f <= 2.0,
        );
        let p = round(cpu.postgres_us, 3);
        self.row(
            "cpu_postgres",
            "CPU per row: PostgreSQL, same drain",
            p,
            "us/row",
        );
        let r = round(cpu.redis_us, 3);
        self.row("cpu_redis", "CPU per row: Redis, same drain", r, "us/row");
    }

    pub fn add_ingest(&mut self, out: IngestOut) {
        self.ingest_rate = out.events_per_sec;
        let label = format!(
            "ingest: 32 conns x 100-event batches ({} B/event)",
            out.event_bytes
        );
        self.row("ingest", &label, out.events_per_sec, "events/s");
        self.row(
            "ingest_p50",
            "ingest: request latency p50",
            out.p50_ms,
            "ms",
        );
        self.row(
            "ingest_p99",
            "ingest: request latency p99",
            out.p99_ms,
            "ms",
        );
        self.loadgen.ingest = Some(out);
    }

    /// The ingest row over HTTPS, and its ratio to the plain row of the same run.
    pub fn add_ingest_https(&mut self, out: IngestOut) {
        self.row(
            "ingest_https",
            "ingest over HTTPS (ingest-api's TLS, kept-alive), 32 conns x 100",
            out.events_per_sec,
            "events/s",
        );
        self.row(
            "ingest_https_p99",
            "ingest over HTTPS: request latency p99",
            out.p99_ms,
            "ms",
        );
        let ratio = round(100.0 * out.events_per_sec / self.ingest_rate, 1);
        self.row(
            "ratio_ingest_https",
            "ratio: ingest over HTTPS / plain ingest",
            ratio,
            "%",
        );
        self.loadgen.ingest_https = Some(out);
    }
}

impl Report {
    /// The light row and the paced rows; (c) and (d) are the targets at 35 % and light.
    pub fn add_e2e(
        &mut self,
        cfg: &Config,
        light: E2eOut,
        paced: Vec<(u32, E2eOut)>,
        ingest_peak: f64,
    ) {
        let f = cfg.e2e_flushers;
        let label = format!("end to end, light: asked 1000/s ({f} flushers, defaults)");
        self.row(
            "e2e_light_rate",
            &label,
            light.ingest.events_per_sec,
            "events/s",
        );
        self.row(
            "e2e_light_p50",
            "end to end, light: 200 -> row visible, p50",
            light.e2e_p50_ms,
            "ms",
        );
        let p99 = light.e2e_p99_ms;
        self.target(
            "e2e_light_p99",
            "end to end, light: 200 -> row visible, p99",
            p99,
            "ms",
            "< 100 ms",
            p99 < 100.0,
        );
        self.plot
            .e2e
            .push(("light".into(), light.rate, light.e2e_p50_ms, p99));
        self.loadgen.e2e.insert("light".into(), light);
        for (share, out) in paced {
            self.add_paced(share, &out);
            self.plot.e2e.push((
                format!("{share} %"),
                out.rate,
                out.e2e_p50_ms,
                out.e2e_p99_ms,
            ));
            self.loadgen.e2e.insert(format!("{share}pct"), out);
        }
        self.target(
            "rss_ingest",
            "peak RSS ingest-api",
            round(ingest_peak, 1),
            "MiB",
            "< 64 MiB",
            ingest_peak < 64.0,
        );
    }

    fn add_paced(&mut self, share: u32, out: &E2eOut) {
        let k = format!("e2e_{share}");
        let asked = out.rate;
        let label = format!("end to end at {share} % of raw COPY: achieved (asked {asked:.0}/s)");
        self.row(
            &format!("{k}_rate"),
            &label,
            out.ingest.events_per_sec,
            "events/s",
        );
        let p50 = format!("end to end at {share} %: 200 -> row visible, p50");
        self.row(&format!("{k}_p50"), &p50, out.e2e_p50_ms, "ms");
        let p99 = format!("end to end at {share} %: 200 -> row visible, p99");
        let backlog = out.backlog.unwrap_or(0) as f64;
        let bl = format!("end to end at {share} %: backlog when the load stops");
        if share != 35 {
            self.row(&format!("{k}_p99"), &p99, out.e2e_p99_ms, "ms");
            self.row(&format!("{k}_backlog"), &bl, backlog, "entries");
            return;
        }
        let achieved = round(100.0 * out.ingest.events_per_sec / asked.max(1.0), 1);
        let label = format!("end to end at {share} %: achieved / asked");
        self.target(
            &format!("{k}_achieved"),
            &label,
            achieved,
            "%",
            ">= 95 %",
            achieved >= 95.0,
        );
        let v = out.e2e_p99_ms;
        self.target(&format!("{k}_p99"), &p99, v, "ms", "< 1000 ms", v < 1000.0);
        let t = format!("< {asked:.0} (1 s)");
        self.target(
            &format!("{k}_backlog"),
            &bl,
            backlog,
            "entries",
            &t,
            backlog < asked,
        );
    }

    pub fn add_cluster_ingest(
        &mut self,
        out: IngestOut,
        lens: Vec<u64>,
        per_master: String,
        peak: f64,
    ) {
        self.facts.cluster_entries_per_shard = lens;
        self.facts.cluster_shards_per_master = per_master;
        self.facts.cluster_ingest_rss_mib = round(peak, 1);
        let label = "cluster (3 masters, 8 shards): ingest, 32 conns x 100";
        self.row("cluster_ingest", label, out.events_per_sec, "events/s");
        let ratio = round(100.0 * out.events_per_sec / self.ingest_rate, 1);
        self.row(
            "ratio_cluster_ingest",
            "ratio: cluster ingest / single-node ingest",
            ratio,
            "%",
        );
        self.loadgen.cluster_ingest = Some(out);
    }

    pub fn add_cluster_flush(&mut self, runs: Vec<(FillOut, DrainOut)>) {
        if let Some((fill, _)) = runs.first() {
            let label = "ref: cluster MULTI/EXEC of 100 XADDs, 8 conns (loadgen fill)";
            self.row("cluster_raw_multi", label, fill.events_per_sec, "events/s");
            self.loadgen.cluster_fill = Some(fill.clone());
        }
        for (i, (_, drain)) in runs.into_iter().enumerate() {
            let n = i + 1;
            let label = format!(
                "cluster: flush, {n} flusher{}, defaults",
                if n > 1 { "s" } else { "" }
            );
            self.row(
                &format!("cluster_flush_{n}"),
                &label,
                drain.rows_per_sec,
                "rows/s",
            );
            if n == 2 {
                let ratio = round(100.0 * drain.rows_per_sec / self.flush_2, 1);
                let label = "ratio: cluster flush / single-node flush (both 2 flushers, defaults)";
                self.row("ratio_cluster_flush", label, ratio, "%");
            }
            self.loadgen.cluster_drains.insert(n.to_string(), drain);
        }
    }

    /// The ratio rows with targets (a) and (e).
    pub fn add_ratios(&mut self) {
        let pct = |a: f64, b: f64| round(100.0 * a / b, 1);
        let get = |rows: &[(String, Row)], k: &str| {
            rows.iter()
                .find(|(key, _)| key == k)
                .map_or(0.0, |(_, r)| r.value)
        };
        let ingest = pct(self.ingest_rate, self.raw_xadd);
        self.target(
            "ratio_ingest",
            "ratio: ingest / raw Redis XADD",
            ingest,
            "%",
            ">= 70 %",
            ingest >= 70.0,
        );
        let f1 = pct(get(&self.rows, "flush_1"), self.raw_copy_median);
        let label = "ratio: flush (1 flusher, defaults) / raw one-COPY median";
        self.target("ratio_flush_1", label, f1, "%", ">= 80 %", f1 >= 80.0);
        let f2 = pct(self.flush_2, self.raw_copy_median);
        self.row(
            "ratio_flush_2",
            "ratio: flush (2 flushers, defaults) / raw one-COPY median",
            f2,
            "%",
        );
    }

    /// The flusher's peak RSS over every run, the cluster's included.
    pub fn add_flusher_rss(&mut self) {
        let peak = round(self.flusher_peak_mib, 1);
        self.target(
            "rss_flusher",
            "peak RSS flusher (largest of all runs)",
            peak,
            "MiB",
            "< 64 MiB",
            peak < 64.0,
        );
    }
}
