//! A network namespace of a test's own ([`Netns`]), for the network faults the host's loopback
//! must never see: a silent partition (every packet to or from one port dropped by `tc` on the
//! namespace's own `lo`: nothing refused, nothing answered). And what `ss` says about TCP
//! connections ([`tcp_connections`]): whose they are, and their timers (keepalive or not).
//!
//! Needs root (`ip netns`, `tc`): a test that needs it fails where it cannot have it, and says so.

use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

use crate::*;

/// The device a partition sends packets to: a veth left down, which drops them.
const DROP_DEVICE: &str = "etdrop";

/// A network namespace with only its own `lo`, up; deleted on drop (drop the processes inside
/// it first: declare it before them).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create() -> Netns {
        let name = format!("et-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let out = Command::new("ip").args(["netns", "add", &name]).output();
        let why = match out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(String::from_utf8_lossy(&o.stderr).into_owned()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = why {
            panic!(
                "this test needs root and iproute2 (`ip netns`, `tc`) to make a network namespace \
                 of its own; `ip netns add {name}` failed: {why}"
            );
        }
        let ns = Netns { name };
        run_ok(ns.command("ip").args(["link", "set", "lo", "up"]));
        // Left down: what is redirected to it is dropped ([`Netns::partition_port`]).
        run_ok(ns.command("ip").args([
            "link",
            "add",
            DROP_DEVICE,
            "type",
            "veth",
            "peer",
            "name",
            "etdrop-peer",
        ]));
        ns
    }

    /// `program`, to be run inside the namespace (`ip netns exec` replaces itself with it, so
    /// the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// The same command (program, arguments, environment, folder), run inside the namespace.
    pub fn wrap(&self, cmd: &Command) -> Command {
        in_netns(&self.name, cmd)
    }

    /// Sets a sysctl of the namespace's own network stack (`net.ipv4.tcp_*` are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        run_ok(
            self.command("sysctl")
                .args(["-q", "-w"])
                .arg(format!("{key}={value}")),
        );
    }

    /// Drops every packet to or from `port` on the namespace's `lo`, silently: no reset, no
    /// ICMP, the peers just stop hearing from each other. A u32 filter picks the packets by port
    /// and redirects them to a device that is down, which drops them (this kernel has neither
    /// netem nor the drop action; mirred and u32 are common to all). On `lo`'s ingress, after
    /// the sender's transmit succeeded, as a drop somewhere in the network: a drop on egress is
    /// reported to the sending socket as local congestion, and TCP then re-sends every 500 ms
    /// without counting the attempt (keepalive probes included), unlike a real partition.
    pub fn partition_port(&self, port: u16) {
        let tc = |args: &[&str]| run_ok(self.command("tc").args(args));
        tc(&["qdisc", "add", "dev", "lo", "clsact"]);
        for side in ["dport", "sport"] {
            let filter = format!(
                "filter add dev lo ingress protocol ip prio 1 u32 match ip {side} {port} 0xffff \
                 action mirred egress redirect dev {DROP_DEVICE}"
            );
            tc(&filter.split_whitespace().collect::<Vec<_>>());
        }
    }

    /// Ends the partition: packets flow again.
    pub fn heal(&self) {
        run_ok(
            self.command("tc")
                .args(["qdisc", "del", "dev", "lo", "clsact"]),
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// `cmd` run inside the namespace called `name`.
pub(crate) fn in_netns(name: &str, cmd: &Command) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", name])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// One established TCP connection as `ss -tnop` shows it.
#[derive(Debug, Clone)]
pub struct TcpConn {
    pub local_port: u16,
    pub peer_port: u16,
    /// The process that holds it (`users:((…,pid=N,…))`), when `ss` could tell.
    pub pid: Option<u32>,
    /// The whole `ss` line (its `timer:(keepalive,…)` says keepalive probes are armed).
    pub line: String,
}

impl TcpConn {
    /// Keepalive probes are armed: `ss -o` shows a `keepalive` timer on an idle connection
    /// with SO_KEEPALIVE set (one sending data shows its retransmission timer, `on`, instead).
    pub fn keepalive_armed(&self) -> bool {
        self.line.contains("timer:(keepalive")
    }

    /// Time left before the next keepalive probe, when armed (`timer:(keepalive,9.8sec,0)`,
    /// `…,119min,0)`, `…,1min30sec,0)`, `…,300ms,0)`).
    pub fn keepalive_due(&self) -> Option<Duration> {
        let (_, rest) = self.line.split_once("timer:(keepalive,")?;
        let text = rest.split(',').next()?;
        let mut total = Duration::ZERO;
        let mut number = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            let mut unit = c.to_string();
            while let Some(&u) = chars.peek().filter(|u| u.is_ascii_alphabetic()) {
                unit.push(u);
                chars.next();
            }
            let n: f64 = number.parse().ok()?;
            number.clear();
            total += Duration::from_secs_f64(match unit.as_str() {
                "ms" => n / 1000.0,
                "sec" => n,
                "min" => n * 60.0,
                "h" => n * 3600.0,
                _ => return None,
            });
        }
        Some(total)
    }
}

/// The established TCP connections whose peer port is one of `ports`, in the namespace or on
/// the host.
pub fn tcp_connections(netns: Option<&Netns>, ports: &[u16]) -> Vec<TcpConn> {
    tcp_connections_where(netns, |c| ports.contains(&c.peer_port))
}

/// The established TCP connections `keep` keeps, in the namespace or on the host.
pub fn tcp_connections_where(
    netns: Option<&Netns>,
    keep: impl Fn(&TcpConn) -> bool,
) -> Vec<TcpConn> {
    let mut cmd = match netns {
        Some(ns) => ns.command("ss"),
        None => Command::new("ss"),
    };
    let out = cmd
        .args(["-Htnop", "state", "established"])
        .output()
        .expect("ss (iproute2)");
    assert!(out.status.success(), "ss failed");
    let port_of = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // Recv-Q Send-Q Local:Port Peer:Port [users:(…)] [timer:(…)]
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = port_of(fields.get(2)?)?;
            let peer_port = port_of(fields.get(3)?)?;
            let pid = line
                .split_once("pid=")
                .and_then(|(_, rest)| rest.split([',', ')']).next())
                .and_then(|p| p.parse().ok());
            Some(TcpConn {
                local_port,
                peer_port,
                pid,
                line: line.to_string(),
            })
        })
        .filter(|c| keep(c))
        .collect()
}
