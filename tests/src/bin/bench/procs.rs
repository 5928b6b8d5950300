//! Child processes of the bench (flushers, ingest-api, loadgen, tools) and what /proc says
//! about a process: CPU time, peak RSS, parent.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::{Context, Result, bail};

/// Pids of the children still running, for the Ctrl-C handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A running child: stdout to `out`, stderr to `log` (the same file when `out` is the log).
pub struct Spawned {
    pub name: String,
    pub child: Child,
    pub out: PathBuf,
    pub log: PathBuf,
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit; the child is then no longer ours to stop.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        let status = self
            .child
            .wait()
            .context(|| format!("waiting for {}", self.name))?;
        forget(self.pid());
        Ok(status)
    }

    /// SIGTERM, then waits; fails unless it exits 0 within a minute.
    pub fn terminate(&mut self) -> Result<()> {
        signal(self.pid(), "TERM")?;
        let start = Instant::now();
        while self.child.try_wait()?.is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                bail!("{} did not exit within 60 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = self.wait()?;
        if !status.success() {
            bail!(
                "{} exited with {status} on SIGTERM:\n{}",
                self.name,
                tail(&self.log, 15)
            );
        }
        Ok(())
    }
}

/// Starts `cmd` with stdin from /dev/null, stdout to `out` and stderr to `log` (may be equal).
pub fn spawn(name: &str, mut cmd: Command, out: &Path, log: &Path) -> Result<Spawned> {
    let stdout = File::create(out).context(|| format!("creating {}", out.display()))?;
    let stderr = if out == log {
        stdout.try_clone()?
    } else {
        File::create(log).context(|| format!("creating {}", log.display()))?
    };
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let child = cmd
        .spawn()
        .context(|| format!("starting {name} ({cmd:?})"))?;
    if let Ok(mut c) = CHILDREN.lock() {
        c.push(child.id());
    }
    Ok(Spawned {
        name: name.to_string(),
        child,
        out: out.to_path_buf(),
        log: log.to_path_buf(),
    })
}

fn forget(pid: u32) {
    if let Ok(mut c) = CHILDREN.lock() {
        c.retain(|&p| p != pid);
    }
}

/// SIGTERM to every child still running, then SIGKILL to those left after 5 s (Ctrl-C, failure).
pub fn stop_all_children() {
    let pids: Vec<u32> = CHILDREN.lock().map(|c| c.clone()).unwrap_or_default();
    for &pid in &pids {
        let _ = signal(pid, "TERM");
    }
    let start = Instant::now();
    while pids.iter().any(|&p| alive(p)) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in pids.iter().filter(|&&p| alive(p)) {
        let _ = signal(pid, "KILL");
    }
}

/// Runs `cmd` to the end (stdout to `out`, stderr to `out`.err.log); fails with the stderr's
/// last lines unless it exits 0.
pub fn run(name: &str, cmd: Command, out: &Path) -> Result<()> {
    let log = out.with_extension("err.log");
    let mut p = spawn(name, cmd, out, &log)?;
    let status = p.wait()?;
    if !status.success() {
        bail!("{name} failed ({status}):\n{}", tail(&log, 20));
    }
    Ok(())
}

/// Runs `cmd` (a loadgen subcommand) and parses the one line of JSON it prints.
pub fn run_json<T: DeserializeOwned>(name: &str, cmd: Command, out: &Path) -> Result<T> {
    run(name, cmd, out)?;
    let text = std::fs::read_to_string(out).context(|| format!("reading {}", out.display()))?;
    serde_json::from_str(text.trim()).context(|| format!("{name}: parsing its output {text:?}"))
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn signal(pid: u32, sig: &str) -> Result<()> {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .context(|| "running kill".to_string())?
        .success();
    if !ok {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

/// The fields of /proc/PID/stat after the command name (field 3, the state, is index 0).
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .context(|| format!("reading /proc/{pid}/stat"))?;
    let (_, rest) = stat
        .rsplit_once(')')
        .context(|| format!("/proc/{pid}/stat: no ')'"))?;
    Ok(rest.split_whitespace().map(str::to_string).collect())
}

fn field(f: &[String], n: usize, pid: u32) -> Result<u64> {
    f.get(n - 3)
        .and_then(|v| v.parse().ok())
        .context(|| format!("/proc/{pid}/stat: field {n}"))
}

/// CPU time of a process in clock ticks: (utime + stime, cutime + cstime).
pub fn cpu_ticks(pid: u32) -> Result<(u64, u64)> {
    let f = stat_fields(pid)?;
    Ok((
        field(&f, 14, pid)? + field(&f, 15, pid)?,
        field(&f, 16, pid)? + field(&f, 17, pid)?,
    ))
}

pub fn ppid(pid: u32) -> Result<u32> {
    Ok(field(&stat_fields(pid)?, 4, pid)? as u32)
}

/// Clock ticks a second (`getconf CLK_TCK`; 100 on Linux when getconf is missing).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Whether a process runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    stat_fields(pid).is_ok_and(|f| f.first().is_some_and(|s| s != "Z" && s != "X"))
}

/// Peak resident memory (VmHWM) of a process, MiB.
pub fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context(|| format!("reading /proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context(|| format!("/proc/{pid}/status: no VmHWM"))?;
    Ok(kb / 1024.0)
}

/// Every live process whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| ppid(pid).is_ok_and(|p| p == parent))
        .collect()
}
