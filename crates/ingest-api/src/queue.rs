//! The Redis side of ingest-api: one atomic MULTI/EXEC of XADDs per request, a readiness PING,
//! and a cached stream length for backpressure. Every call is bounded by the Redis timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_redis::redis::{self, AsyncConnectionConfig, Client, aio::MultiplexedConnection};
use event_model::QueuedEvent;
use event_model::queue::{ENTRY_VERSION, EVENT_FIELD, VERSION_FIELD};
use tokio::sync::Mutex;

/// Why the queue could not take a write.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Config(String),
}

/// A handle on the event stream; cheap to clone.
///
/// Every request shares one multiplexed connection: Redis pipelines the commands of concurrent
/// requests on it, and taking it costs no round trip (a pool that PINGs on every checkout, as
/// deadpool-redis does, doubled the round trips per request). After an error or a timeout the
/// connection is dropped and the next call makes a new one.
#[derive(Clone)]
pub struct EventQueue {
    client: Client,
    config: AsyncConnectionConfig,
    conn: Arc<Mutex<Option<MultiplexedConnection>>>,
    stream_key: String,
    timeout: Duration,
    length: Arc<AtomicU64>,
}

impl EventQueue {
    /// No connection is made yet: ingest-api starts even while Redis is down.
    pub fn new(redis_url: &str, stream_key: &str, timeout: Duration) -> Result<Self, QueueError> {
        let client = Client::open(redis_url)
            .map_err(|e| QueueError::Config(format!("invalid redis URL: {e}")))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        Ok(EventQueue {
            client,
            config,
            conn: Arc::default(),
            stream_key: stream_key.to_string(),
            timeout,
            length: Arc::new(AtomicU64::new(0)),
        })
    }

    async fn conn(&self) -> Result<MultiplexedConnection, QueueError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs `op` on the shared connection within the timeout; a failed connection is dropped.
    async fn bounded<T>(
        &self,
        op: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Result<T, QueueError> {
        let result = tokio::time::timeout(self.timeout, async {
            let mut conn = self.conn().await?;
            op(&mut conn).await.map_err(QueueError::from)
        })
        .await
        .unwrap_or(Err(QueueError::Timeout(self.timeout)));
        let broken = match &result {
            Ok(_) => false,
            Err(QueueError::Redis(e)) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
            }
            Err(_) => true,
        };
        if broken {
            *self.conn.lock().await = None;
        }
        result
    }

    /// Appends every event in one MULTI/EXEC: all of them are in the stream, or none.
    pub async fn push(&self, events: &[QueuedEvent]) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for e in events {
            pipe.cmd("XADD")
                .arg(&self.stream_key)
                .arg("*")
                .arg(VERSION_FIELD)
                .arg(ENTRY_VERSION)
                .arg(EVENT_FIELD)
                .arg(e.encode())
                .ignore();
        }
        self.bounded(async |c| pipe.query_async::<()>(c).await)
            .await
    }

    /// PING within the timeout.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.bounded(async |c| redis::cmd("PING").query_async::<String>(c).await)
            .await
            .map(|_| ())
    }

    /// The stream length as last seen by [`EventQueue::refresh_length`].
    pub fn cached_length(&self) -> u64 {
        self.length.load(Ordering::Relaxed)
    }

    /// Reads the stream length (cached for backpressure) and the age of its oldest entry (the
    /// flushers' lag: an entry ID starts with its creation time in milliseconds).
    pub async fn refresh_length(&self) -> Result<(u64, Duration), QueueError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN")
            .arg(&self.stream_key)
            .cmd("XRANGE")
            .arg(&self.stream_key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        let (len, oldest): (u64, Vec<(String, redis::Value)>) =
            self.bounded(async |c| pipe.query_async(c).await).await?;
        self.length.store(len, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let lag = oldest
            .first()
            .map(|(id, _)| event_model::queue::entry_age(id, now))
            .unwrap_or_default();
        Ok((len, lag))
    }
}
