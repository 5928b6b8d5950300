//! CPU time over a drain, per row written: the flushers' (from /proc/PID/stat), PostgreSQL's
//! (the postmaster and all its children) and Redis's (`INFO cpu`).

use serde::Serialize;

use crate::config::Config;
use crate::{Context, Result, procs, services};

/// CPU used so far, sampled at one instant.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Each flusher's utime + stime, clock ticks.
    pub flushers: Vec<u64>,
    /// The postmaster's utime + stime + cutime + cstime (reaped children included) plus the
    /// utime + stime of its live children, clock ticks.
    pub postgres: u64,
    /// used_cpu_user + used_cpu_sys (+ _children), seconds.
    pub redis: f64,
}

/// CPU per row over a drain, µs.
#[derive(Serialize, Debug, Clone, Default)]
pub struct PerRow {
    pub rows: u64,
    pub flusher_us: f64,
    pub postgres_us: f64,
    pub redis_us: f64,
}

pub fn sample(cfg: &Config, flushers: &[u32]) -> Result<Sample> {
    let mut f = Vec::with_capacity(flushers.len());
    for &pid in flushers {
        f.push(procs::cpu_ticks(pid)?.0);
    }
    Ok(Sample {
        flushers: f,
        postgres: postgres_ticks(cfg)?,
        redis: redis_secs(cfg.redis_port)?,
    })
}

fn postgres_ticks(cfg: &Config) -> Result<u64> {
    let pm = services::postmaster_pid(cfg)?;
    let (own, reaped) = procs::cpu_ticks(pm)?;
    // A backend may exit between the listing and the read: it is then in `reaped` next time.
    let live: u64 = procs::children_of(pm)
        .into_iter()
        .filter_map(|pid| procs::cpu_ticks(pid).ok())
        .map(|(t, _)| t)
        .sum();
    Ok(own + reaped + live)
}

fn redis_secs(port: u16) -> Result<f64> {
    let info = services::rcli(port, &["INFO", "cpu"])?;
    let mut total = 0.0;
    for key in [
        "used_cpu_user",
        "used_cpu_sys",
        "used_cpu_user_children",
        "used_cpu_sys_children",
    ] {
        let v: f64 = info
            .lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .context(|| format!("INFO cpu: no {key}"))?;
        total += v;
    }
    Ok(total)
}

pub fn per_row(start: &Sample, end: &Sample, rows: u64) -> PerRow {
    let us_per_tick = 1e6 / procs::clock_ticks();
    let flusher: u64 = end
        .flushers
        .iter()
        .zip(&start.flushers)
        .map(|(e, s)| e.saturating_sub(*s))
        .sum();
    let n = rows.max(1) as f64;
    PerRow {
        rows,
        flusher_us: flusher as f64 * us_per_tick / n,
        postgres_us: end.postgres.saturating_sub(start.postgres) as f64 * us_per_tick / n,
        redis_us: (end.redis - start.redis).max(0.0) * 1e6 / n,
    }
}

#[cfg(test)]
mod tests {
    use super::{Sample, per_row};

    #[test]
    fn cpu_per_row_is_the_difference_over_the_rows() {
        let start = Sample {
            flushers: vec![10],
            postgres: 100,
            redis: 1.0,
        };
        let end = Sample {
            flushers: vec![30],
            postgres: 300,
            redis: 1.5,
        };
        let r = per_row(&start, &end, 1000);
        let tick_us = 1e6 / crate::procs::clock_ticks();
        assert!((r.flusher_us - 20.0 * tick_us / 1000.0).abs() < 1e-9);
        assert!((r.postgres_us - 200.0 * tick_us / 1000.0).abs() < 1e-9);
        assert!((r.redis_us - 500.0).abs() < 1e-9);
    }
}
