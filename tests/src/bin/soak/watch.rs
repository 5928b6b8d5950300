//! While the paced load runs: every 30 s the RSS and open file descriptors of ingest-api and
//! flusher A are sampled and printed; every minute (a short run: three times) flusher B is
//! SIGKILLed and restarted. Flusher A never is, so its footprint shows a leak.

use std::time::{Duration, Instant};

use crate::Rig;
use crate::load::Load;

/// (RSS in KiB, open file descriptors) of a process.
pub type Footprint = (u64, u64);

/// When, and the footprints of ingest-api and flusher A then.
pub type Sample = (Duration, Footprint, Footprint);

/// What the watch saw.
pub struct Watched {
    pub samples: Vec<Sample>,
    pub kills: u32,
    started: Instant,
}

impl Watched {
    /// The last sample, once the load has stopped.
    pub fn last_sample(&mut self, rig: &Rig) {
        self.samples.push(sample(rig, self.started.elapsed()));
    }
}

/// Samples and kills for `total`.
pub async fn watch(rig: &mut Rig, load: &Load, total: Duration) -> Watched {
    let soak_start = Instant::now();
    let mut w = Watched {
        samples: Vec::new(),
        kills: 0,
        started: soak_start,
    };
    let mut next_sample = Duration::ZERO;
    // Every minute; a short run kills it three times.
    let kill_every = Duration::from_secs(60).min(total / 4);
    let mut next_kill = kill_every;
    while soak_start.elapsed() < total {
        let t = soak_start.elapsed();
        if t >= next_sample {
            let sample = sample(rig, t);
            let (i, a) = (sample.1, sample.2);
            println!(
                "{:>6.0}s ingest-api rss {} KiB fds {} | flusher A rss {} KiB fds {} | acked {}",
                t.as_secs_f64(),
                i.0,
                i.1,
                a.0,
                a.1,
                load.acked()
            );
            w.samples.push(sample);
            next_sample += Duration::from_secs(30);
        }
        if t >= next_kill {
            rig.kill_flusher_b();
            w.kills += 1;
            next_kill += kill_every;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w
}

fn sample(rig: &Rig, t: Duration) -> Sample {
    (
        t,
        footprint(rig.ingest.proc.pid()),
        footprint(rig.flusher_a.proc.pid()),
    )
}

/// The [`Footprint`] of a process.
fn footprint(pid: u32) -> Footprint {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (rss, fds)
}
