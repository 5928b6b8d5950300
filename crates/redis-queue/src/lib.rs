//! The Redis side that ingest-api and the flusher share: a connection to one Redis node or to a
//! Redis Cluster ([`Connector`], [`Conn`]), one shared multiplexed connection with a timeout on
//! every call ([`Shared`]), the shard layout of the queue ([`Layout`]) with the shard count
//! stored in Redis so that every process uses the same one, and the queue's state as both
//! binaries read and export it ([`QueueState`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use redis;
use redis::IntoConnectionInfo;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, Value};

pub mod append;
mod layout;
pub mod queue_state;
pub mod reader;
mod resp;
pub mod scripts;
pub mod settle;
pub mod writer;
pub use layout::{Layout, LayoutCheck};
pub use queue_state::{MEMORY_RATIO_GAUGE, MEMORY_RATIO_HELP, QueueState};

/// What can go wrong talking to the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// An error reply read by the lean RESP code (`resp.rs`, under [`reader::StreamReader`] and
    /// the [`writer::Writers`]); redis-rs's own are in `Redis`.
    #[error("redis: {code} {message}")]
    Reply { code: String, message: String },
    /// A reply the lean RESP code could not parse.
    #[error("redis protocol: {0}")]
    Protocol(String),
    #[error("every shard's Redis node is past the memory limit")]
    Full,
    #[error("invalid redis settings: {0}")]
    Config(String),
    #[error(
        "the queue {key:?} has {stored} shards (recorded in Redis key {count_key:?}) but this \
         process was started with --shards {configured}: start every ingest-api and flusher with \
         --shards {stored} (a different count would leave shards that nobody reads)"
    )]
    ShardMismatch {
        key: String,
        count_key: String,
        stored: String,
        configured: usize,
    },
    #[error(
        "the unsharded stream {key:?} still holds {entries} entries, and a sharded queue would \
         never read them: run the flusher with --shards 1 until it is empty, then delete \
         {key}:shards and start everything with the new --shards"
    )]
    UnshardedBacklog { key: String, entries: u64 },
}

impl QueueError {
    /// The queue's layout in Redis does not match this process's settings: it must not run.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            QueueError::ShardMismatch { .. } | QueueError::UnshardedBacklog { .. }
        )
    }

    /// A MOVED or ASK reply inside an aborted MULTI/EXEC. The cluster client follows them for
    /// single commands, but not inside a transaction, and keeps sending the shard's transactions
    /// to the old node until its next topology refresh (seconds): a new connection starts from
    /// the current slot map.
    /// Whether a connection that returned this error should be replaced by a new one. One node:
    /// anything but an error reply from a healthy server. A cluster connection reconnects to
    /// each node by itself, so one node being down is no reason; it is replaced when its slot
    /// map is stale (see [`QueueError::is_stale_topology`]) or when it has lost every node
    /// ("No connections found": after the whole cluster was down it never recovers by itself).
    pub fn needs_new_connection(&self, cluster: bool) -> bool {
        if !cluster {
            return self.code().is_none();
        }
        self.is_stale_topology()
            || matches!(self, QueueError::Redis(e)
                if e.kind() == redis::ErrorKind::ClusterConnectionNotFound)
    }

    pub fn is_stale_topology(&self) -> bool {
        use redis::ServerErrorKind::{Ask, Moved};
        let QueueError::Redis(e) = self else {
            return false;
        };
        e.is_cluster_error()
            || e.clone().into_server_errors().is_some_and(|errors| {
                errors
                    .iter()
                    .any(|(_, s)| matches!(s.kind(), Some(Moved | Ask)))
            })
    }

    /// An error reply from a healthy server (`NOGROUP`, `BUSYGROUP`, `WRONGTYPE`, …), as opposed
    /// to a connection that failed or timed out.
    pub fn code(&self) -> Option<&str> {
        match self {
            QueueError::Redis(e) => e.code(),
            QueueError::Reply { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// `TCP_NODELAY`, which redis-rs leaves off: with Nagle's algorithm a command written while an
/// earlier one is unacknowledged waits for that ACK, and commands from several tasks share a
/// multiplexed connection. And keepalive probes with a user timeout ([`service_kit::tcp`]): a
/// Redis gone silent is noticed in about 30 s, and a blocked read does not wait for it forever.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    let settings = redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive());
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(service_kit::tcp::USER_TIMEOUT);
    settings
}

/// The keepalive probes of every Redis connection.
fn keepalive() -> socket2::TcpKeepalive {
    use service_kit::tcp::{KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES};
    socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES)
}

/// The same settings on a connection made without redis-rs ([`resp::Conn`]).
fn configure(socket: &tokio::net::TcpStream) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let sock = socket2::SockRef::from(socket);
    sock.set_tcp_keepalive(&keepalive())?;
    #[cfg(target_os = "linux")]
    sock.set_tcp_user_timeout(Some(service_kit::tcp::USER_TIMEOUT))?;
    Ok(())
}

/// How to reach Redis: one node (`redis://…`) or a Redis Cluster (a comma-separated list of
/// seed node URLs; the client learns the rest of the topology from them).
#[derive(Clone)]
pub enum Connector {
    Single(Client),
    Cluster(Box<ClusterClient>),
}

impl Connector {
    /// A lean stream reader ([`reader::StreamReader`]) for one node over TCP; `None` for a
    /// cluster or another kind of address.
    pub async fn stream_reader(&self) -> Result<Option<reader::StreamReader>, QueueError> {
        match self {
            Connector::Single(client) => {
                reader::StreamReader::connect(client.get_connection_info()).await
            }
            Connector::Cluster(_) => Ok(None),
        }
    }

    /// A pool of lean appenders ([`writer::Writers`]) for one node over TCP; `None` for a
    /// cluster or another kind of address.
    pub fn writers(&self, timeout: Duration) -> Option<writer::Writers> {
        match self {
            Connector::Single(client) => {
                writer::Writers::new(client.get_connection_info().clone(), timeout)
            }
            Connector::Cluster(_) => None,
        }
    }

    /// Checks the URL(s); connects nothing yet.
    pub fn new(url: &str, cluster: bool) -> Result<Self, QueueError> {
        if !cluster {
            if url.contains(',') {
                return Err(QueueError::Config(
                    "several Redis URLs given: add --redis-cluster to use them as cluster seeds"
                        .into(),
                ));
            }
            return url
                .into_connection_info()
                .map(|info| info.set_tcp_settings(tcp_settings()))
                .and_then(Client::open)
                .map(Connector::Single)
                .map_err(|e| QueueError::Config(format!("invalid Redis URL: {e}")));
        }
        let seeds: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if seeds.is_empty() {
            return Err(QueueError::Config("no Redis Cluster seed URL given".into()));
        }
        ClusterClient::builder(seeds)
            // A node that is down fails its commands at once: the caller decides what to do
            // (ingest-api writes to another shard, the flusher reads the other shards).
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(200)
            .tcp_settings(tcp_settings())
            .build()
            .map(|c| Connector::Cluster(Box::new(c)))
            .map_err(|e| QueueError::Config(format!("invalid Redis Cluster seeds: {e}")))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Connector::Cluster(_))
    }

    /// A new connection whose every reply must arrive within `response_timeout`.
    pub async fn connect(
        &self,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Conn, QueueError> {
        let fut = async {
            match self {
                Connector::Single(client) => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(connect_timeout))
                        .set_response_timeout(Some(response_timeout));
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(Conn::Single)
                }
                Connector::Cluster(client) => {
                    let config = ClusterConfig::new()
                        .set_connection_timeout(connect_timeout)
                        .set_response_timeout(response_timeout);
                    client
                        .get_async_connection_with_config(config)
                        .await
                        .map(Conn::Cluster)
                }
            }
        };
        // Connecting to a cluster asks several nodes; bound the whole of it.
        tokio::time::timeout(connect_timeout + response_timeout, fut)
            .await
            .map_err(|_| QueueError::Timeout(connect_timeout))?
            .map_err(QueueError::from)
    }
}

/// A multiplexed connection to one node, or a cluster connection (which routes each command
/// to the node owning its key's slot and follows MOVED/ASK redirections).
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// One connection shared by every caller, each call bounded by a timeout.
///
/// Taking it costs no round trip (a pool that PINGs on every checkout, as deadpool-redis does,
/// doubled the round trips per request). A single-node connection that failed or timed out is
/// dropped and the next call makes a new one; a cluster connection is kept, since it reconnects
/// to each node by itself and one node being down must not cut the others off.
#[derive(Clone)]
pub struct Shared {
    connector: Connector,
    slot: Arc<tokio::sync::Mutex<Option<Conn>>>,
    timeout: Duration,
    failures: Arc<AtomicU64>,
}

/// Failed calls in a row (none answered by a server) after which a connection is replaced.
const STUCK_AFTER_FAILURES: u64 = 20;

impl Shared {
    pub fn new(connector: Connector, timeout: Duration) -> Self {
        Shared {
            connector,
            slot: Arc::default(),
            timeout,
            failures: Arc::default(),
        }
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn conn(&self) -> Result<Conn, QueueError> {
        let mut slot = self.slot.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.connector.connect(self.timeout, self.timeout).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs one command or pipeline within the timeout.
    pub async fn query<T>(
        &self,
        op: impl AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    ) -> Result<T, QueueError> {
        let result = tokio::time::timeout(self.timeout, async {
            let mut conn = self.conn().await?;
            op(&mut conn).await.map_err(QueueError::from)
        })
        .await
        .unwrap_or(Err(QueueError::Timeout(self.timeout)));
        match &result {
            Ok(_) => self.failures.store(0, Ordering::Relaxed),
            Err(e) => {
                // Failures in a row with no success between, on a cluster: a connection stuck
                // in a way the checks above do not know is replaced too, now and then.
                let in_a_row = if e.code().is_none() {
                    self.failures.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    0
                };
                if e.needs_new_connection(self.connector.is_cluster())
                    || in_a_row >= STUCK_AFTER_FAILURES
                {
                    self.failures.store(0, Ordering::Relaxed);
                    *self.slot.lock().await = None;
                }
            }
        }
        result
    }
}

/// Current time as a duration since the Unix epoch (what stream entry IDs start with).
pub fn now_since_epoch() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_need_cluster_mode() {
        assert!(Connector::new("redis://a:1/,redis://b:2/", false).is_err());
        assert!(Connector::new("redis://a:1/,redis://b:2/", true).is_ok());
        assert!(Connector::new(" , ", true).is_err());
        assert!(Connector::new("redis://a:1/", false).is_ok());
        assert!(Connector::new("not a url", false).is_err());
    }
}
