//! The acknowledgement of a committed batch, run on a task of its own: it overlaps the next
//! batch's reads and COPY, and is awaited when the next one is acknowledged and before the
//! worker ends. Its error is the next one's to report; its entries stay pending then and are
//! claimed and de-duplicated later.

use std::sync::Mutex;

use tokio::task::JoinHandle;

use crate::FlusherError;
use crate::consumer::Consumer;

type Ack = JoinHandle<Result<(), FlusherError>>;

/// The acknowledgement still running, if any (one per worker).
#[derive(Debug, Default)]
pub struct AckBehind {
    in_flight: Mutex<Option<Ack>>,
}

impl AckBehind {
    /// Starts acknowledging and deleting committed entries on a task of its own, then waits for
    /// the previous acknowledgement (whose error, if any, is returned).
    pub async fn ack<'i>(
        &self,
        consumer: &Consumer,
        shard: usize,
        ids: impl IntoIterator<Item = &'i str>,
    ) -> Result<(), FlusherError> {
        let next = tokio::spawn(consumer.ack_delete(shard, ids));
        let previous = self.replace(Some(next));
        await_ack(previous).await
    }

    /// Waits for the acknowledgement in flight, if any.
    pub async fn settled(&self) -> Result<(), FlusherError> {
        let previous = self.replace(None);
        await_ack(previous).await
    }

    fn replace(&self, next: Option<Ack>) -> Option<Ack> {
        match self.in_flight.lock() {
            Ok(mut slot) => std::mem::replace(&mut *slot, next),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), next),
        }
    }
}

async fn await_ack(ack: Option<Ack>) -> Result<(), FlusherError> {
    match ack {
        None => Ok(()),
        Some(handle) => handle.await.map_err(FlusherError::Panic)?,
    }
}
