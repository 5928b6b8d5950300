//! The harness's private Redis Cluster: three masters that answer redirected commands, a node that
//! really dies when killed, and that comes back into the same cluster with its data (AOF).

use std::process::{Command, Output};

use et_tests::RedisCluster;

fn cli(port: u16, args: &[&str]) -> Output {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn cluster_node_killed_and_restarted_keeps_its_keys() {
    let mut cluster = RedisCluster::start();
    let ports = cluster.ports();
    let urls = cluster.urls();
    assert_eq!(urls.split(',').count(), 3, "{urls}");
    for (i, port) in ports.iter().enumerate() {
        assert_eq!(cluster.node_url(i), format!("redis://127.0.0.1:{port}/"));
        assert!(urls.contains(&cluster.node_url(i)), "{urls}");
        let info = stdout(&cli(*port, &["cluster", "info"]));
        assert!(info.contains("cluster_state:ok"), "node {i}: {info}");
    }

    assert_eq!(stdout(&cli(ports[0], &["-c", "set", "k", "v"])), "OK");
    assert_eq!(stdout(&cli(ports[1], &["-c", "get", "k"])), "v");

    let owner = cluster.node_for_key("k");
    // Without -c only the owner answers the key itself; the others redirect.
    assert_eq!(stdout(&cli(ports[owner], &["get", "k"])), "v");
    cluster.kill(owner);
    assert!(!cluster.is_up(owner));
    let ping = cli(ports[owner], &["ping"]);
    assert!(
        !ping.status.success() && !stdout(&ping).contains("PONG"),
        "killed node :{} still answers: {ping:?}",
        ports[owner]
    );

    cluster.restart(owner);
    assert!(cluster.is_up(owner));
    assert_eq!(cluster.node_for_key("k"), owner, "same node, same slots");
    assert_eq!(stdout(&cli(ports[owner], &["get", "k"])), "v");
    let other = (owner + 1) % 3;
    assert_eq!(stdout(&cli(ports[other], &["-c", "get", "k"])), "v");
}
