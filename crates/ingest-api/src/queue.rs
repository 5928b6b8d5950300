//! The Redis side of ingest-api: one atomic MULTI/EXEC of XADDs per request, a readiness PING,
//! and a cached stream length for backpressure. Every call is bounded by the Redis timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_redis::redis::{self, AsyncConnectionConfig};
use deadpool_redis::{Manager, Pool, Runtime};
use event_model::QueuedEvent;
use event_model::queue::{ENTRY_VERSION, EVENT_FIELD, VERSION_FIELD};

/// Why the queue could not take a write.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(String),
    #[error("{0}")]
    Config(String),
}

/// A handle on the event stream; cheap to clone.
#[derive(Clone)]
pub struct EventQueue {
    pool: Pool,
    stream_key: String,
    timeout: Duration,
    length: Arc<AtomicU64>,
}

impl EventQueue {
    /// Creates the pool. No connection is made yet: ingest-api starts even while Redis is down.
    pub fn new(redis_url: &str, stream_key: &str, timeout: Duration) -> Result<Self, QueueError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let manager = Manager::new_with_config(redis_url, config)
            .map_err(|e| QueueError::Config(format!("invalid redis URL: {e}")))?;
        let pool = Pool::builder(manager)
            .max_size(64)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| QueueError::Config(format!("redis pool: {e}")))?;
        Ok(EventQueue {
            pool,
            stream_key: stream_key.to_string(),
            timeout,
            length: Arc::new(AtomicU64::new(0)),
        })
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, QueueError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_redis::PoolError::Backend(e) => QueueError::Redis(e),
            deadpool_redis::PoolError::Timeout(_) => QueueError::Timeout(self.timeout),
            other => QueueError::Pool(other.to_string()),
        })
    }

    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, QueueError>>,
    ) -> Result<T, QueueError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| QueueError::Timeout(self.timeout))?
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
        self.bounded(async {
            let mut conn = self.conn().await?;
            pipe.query_async::<()>(&mut *conn).await?;
            Ok(())
        })
        .await
    }

    /// PING within the timeout.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            redis::cmd("PING").query_async::<String>(&mut *conn).await?;
            Ok(())
        })
        .await
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
        let (len, oldest): (u64, Vec<(String, redis::Value)>) = self
            .bounded(async {
                let mut conn = self.conn().await?;
                Ok(pipe.query_async(&mut *conn).await?)
            })
            .await?;
        self.length.store(len, Ordering::Relaxed);
        let lag = oldest
            .first()
            .and_then(|(id, _)| id.split('-').next()?.parse::<u64>().ok())
            .map(|ms| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                now.saturating_sub(Duration::from_millis(ms))
            })
            .unwrap_or_default();
        Ok((len, lag))
    }
}
