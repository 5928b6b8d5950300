//! The queue `fill` and `drain` work on, and its flags.

use std::time::Duration;

use redis_queue::{Conn, Connector, Layout};

use crate::Error;

/// Where the queue is: --redis-url, --stream-key, --shards, --redis-cluster.
#[derive(clap::Args, Debug, Clone)]
pub struct QueueArgs {
    /// Redis URL; with --redis-cluster, a comma-separated list of seed node URLs.
    #[arg(long)]
    pub redis_url: String,
    /// The stream key (with shards: the prefix of `<key>:{n}`).
    #[arg(long)]
    pub stream_key: String,
    /// The queue is a Redis Cluster.
    #[arg(long)]
    pub redis_cluster: bool,
    /// Shards of the queue.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
}

/// The queue `fill` and `drain` work on: one stream on one Redis node, or (`--shards N` above 1,
/// or `--redis-cluster`) the streams `<key>:{0}` … `<key>:{N-1}`, laid out and reached as the
/// binaries do (crates/redis-queue).
pub struct Queue {
    pub keys: Vec<String>,
    connector: Connector,
}

impl Queue {
    /// From --redis-url, --stream-key, --shards and --redis-cluster.
    pub fn new(args: &QueueArgs) -> Result<Queue, Error> {
        let layout = Layout::new(&args.stream_key, args.shards, args.redis_cluster)?;
        Ok(Queue {
            keys: (0..layout.shards()).map(|n| layout.key(n)).collect(),
            connector: Connector::new(&args.redis_url, args.redis_cluster)?,
        })
    }

    pub async fn connect(&self) -> Result<Conn, Error> {
        let t = Duration::from_secs(30);
        Ok(self.connector.connect(t, t).await?)
    }

    /// The entries queued in all shards together (the shards' XLENs, asked concurrently).
    pub async fn len(&self, con: &Conn) -> Result<u64, Error> {
        let lens = futures_util::future::try_join_all(self.keys.iter().map(|k| {
            let mut c = con.clone();
            async move { redis::cmd("XLEN").arg(k).query_async::<u64>(&mut c).await }
        }))
        .await?;
        Ok(lens.iter().sum())
    }
}
