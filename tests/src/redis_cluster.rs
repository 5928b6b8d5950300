//! A private 3-master Redis Cluster ([`RedisCluster`]) for the tests of `--redis-cluster`,
//! driven with `redis-cli`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::*;

/// A private 3-master Redis Cluster (no replicas; AOF on, `appendfsync always`, node timeout 2 s,
/// `cluster-require-full-coverage no`), for tests of `--redis-cluster`. Node `i` keeps its
/// `nodes.conf` and AOF in `dir/node<i>`, so [`RedisCluster::restart`] brings back the same node
/// with its data. Driven with `redis-cli` only. Every node is SIGKILLed on drop.
pub struct RedisCluster {
    nodes: [Option<Proc>; 3],
    ports: [u16; 3],
    pub dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three nodes and joins them with `redis-cli --cluster create`; returns once every
    /// node reports `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let mut c = RedisCluster {
            nodes: [None, None, None],
            ports: cluster_ports(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for i in 0..3 {
            std::fs::create_dir(c.node_dir(i)).expect("node dir");
            c.launch(i);
        }
        let mut create = Command::new("redis-cli");
        create
            .arg("--cluster")
            .arg("create")
            .args(c.ports.map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"]);
        run_ok(&mut create);
        c.wait_ok();
        c
    }

    /// The seed list for `--redis-url` with `--redis-cluster`: `redis://127.0.0.1:P/,…`.
    pub fn urls(&self) -> String {
        self.ports
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .join(",")
    }

    pub fn ports(&self) -> [u16; 3] {
        self.ports
    }

    pub fn node_url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}/", self.ports[i])
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    fn launch(&mut self, i: usize) {
        let port = self.ports[i];
        let mut cmd = redis_server(port, &self.node_dir(i));
        cmd.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--cluster-require-full-coverage",
            "no",
        ]);
        self.nodes[i] = Some(Proc::spawn(&format!("redis-cluster-node{i}-{port}"), cmd));
        let start = Instant::now();
        while !redis_cli(port, &["ping"]).is_some_and(|out| out.contains("PONG")) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis cluster node {i} did not answer PING on :{port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every node sees all three nodes, none flagged failing, and reports
    /// `cluster_state:ok`; panics after 30 s.
    fn wait_ok(&self) {
        let start = Instant::now();
        loop {
            let states = self.ports.map(cluster_node_state);
            if states.iter().all(|s| s == "ok") {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "redis cluster on ports {:?} not ok after 30 s: node states {states:?}",
                self.ports
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL node `i`: a crash. AOF with `always` keeps every acknowledged write.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            p.signal("KILL");
            p.wait_exit(Duration::from_secs(10));
        }
    }

    /// Starts node `i` again on the same port and folder (it rejoins from `nodes.conf`), then
    /// waits until the whole cluster is ok again.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i);
        self.wait_ok();
    }

    /// Starts every node that is down, then waits until the whole cluster is ok again.
    pub fn restart_down(&mut self) {
        for i in 0..3 {
            if !self.is_up(i) {
                self.launch(i);
            }
        }
        self.wait_ok();
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    /// SIGSTOP node `i`: it keeps its connections but answers nothing (a hung host).
    pub fn freeze(&self, i: usize) {
        self.nodes[i].as_ref().expect("running").signal("STOP");
    }

    pub fn thaw(&self, i: usize) {
        self.nodes[i].as_ref().expect("running").signal("CONT");
    }

    /// The index of the node that serves `key`'s slot (asked from a running node).
    pub fn node_for_key(&self, key: &str) -> usize {
        let port = (0..3)
            .find(|&i| self.is_up(i))
            .map(|i| self.ports[i])
            .expect("a running cluster node");
        let slot: u16 = redis_cli(port, &["cluster", "keyslot", key])
            .and_then(|out| out.trim().parse().ok())
            .unwrap_or_else(|| panic!("CLUSTER KEYSLOT {key} on :{port}"));
        let nodes = redis_cli(port, &["cluster", "nodes"]).expect("CLUSTER NODES");
        // `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot ranges>...`
        let owner = nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let serves = fields.iter().skip(8).any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                match (lo.parse::<u16>(), hi.parse::<u16>()) {
                    (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                    _ => false, // `[slot->-id]` migration markers
                }
            });
            let addr = fields.get(1)?.split('@').next()?;
            let node_port: u16 = addr.rsplit_once(':')?.1.parse().ok()?;
            serves.then_some(node_port)
        });
        let owner = owner.unwrap_or_else(|| panic!("no node serves slot {slot}:\n{nodes}"));
        self.ports
            .iter()
            .position(|&p| p == owner)
            .unwrap_or_else(|| panic!("slot {slot} is served by :{owner}, not one of ours"))
    }

    /// Moves the slot of `key` (with every key in it) from its node to node `to`, as
    /// `redis-cli --cluster reshard` does, one slot: IMPORTING/MIGRATING, MIGRATE the keys in
    /// batches, then SETSLOT NODE on every node. Clients see ASK during the move and MOVED after.
    /// Returns how many keys moved.
    pub fn move_slot_of(&self, key: &str, to: usize) -> usize {
        let from = self.node_for_key(key);
        assert_ne!(from, to, "{key} is on node {to} already");
        let (src, dst) = (self.ports[from], self.ports[to]);
        let cli = |port: u16, args: &[&str]| {
            redis_cli(port, args)
                .unwrap_or_else(|| panic!("redis-cli -p {port} {args:?} failed"))
                .trim()
                .to_string()
        };
        let slot = cli(src, &["cluster", "keyslot", key]);
        let (src_id, dst_id) = (
            cli(src, &["cluster", "myid"]),
            cli(dst, &["cluster", "myid"]),
        );
        cli(dst, &["cluster", "setslot", &slot, "importing", &src_id]);
        cli(src, &["cluster", "setslot", &slot, "migrating", &dst_id]);
        let mut moved = 0;
        loop {
            let keys = cli(src, &["cluster", "getkeysinslot", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["migrate", "127.0.0.1"];
            let dst_port = dst.to_string();
            args.extend([dst_port.as_str(), "", "0", "5000", "KEYS"]);
            args.extend(&keys);
            let reply = cli(src, &args);
            assert!(reply == "OK" || reply == "NOKEY", "MIGRATE: {reply}");
            moved += keys.len();
        }
        // The new owner first, then the old one, then the rest (as redis-cli does).
        let third = 3 - from - to;
        for i in [to, from, third] {
            if self.is_up(i) {
                cli(
                    self.ports[i],
                    &["cluster", "setslot", &slot, "node", &dst_id],
                );
            }
        }
        moved
    }
}

/// Three ports below 55000 whose cluster bus port (port + 10000) is free too, all distinct.
fn cluster_ports() -> [u16; 3] {
    let mut held = Vec::new(); // listeners kept open so the picks cannot collide with each other
    let mut ports = Vec::new();
    while ports.len() < 3 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let port = l.local_addr().expect("local addr").port();
        if port >= 55000 {
            continue;
        }
        let Ok(bus) = TcpListener::bind(("127.0.0.1", port + 10000)) else {
            continue;
        };
        held.push((l, bus));
        ports.push(port);
    }
    [ports[0], ports[1], ports[2]]
}

/// `redis-cli -p PORT ARGS...`: its stdout, or `None` if it could not run or connect. (Error
/// replies still exit 0: callers look at the text.)
fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ok` when the node reports `cluster_state:ok`, knows 3 nodes and flags none as failing;
/// otherwise a short description, for the timeout message.
fn cluster_node_state(port: u16) -> String {
    let Some(info) = redis_cli(port, &["cluster", "info"]) else {
        return "down".into();
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or("?")
            .to_string()
    };
    let (state, known) = (field("cluster_state"), field("cluster_known_nodes"));
    let failing = redis_cli(port, &["cluster", "nodes"])
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|flags| flags.split(',').any(|f| f == "fail" || f == "fail?"))
        })
        .count();
    if state == "ok" && known == "3" && failing == 0 {
        "ok".into()
    } else {
        format!("cluster_state:{state} known_nodes:{known} failing:{failing}")
    }
}
