//! EventTracker's shared model: what a valid event is, how a request body becomes a batch of
//! events, and how an accepted event travels through the Redis stream to the flusher.
//!
//! This crate is the only place that knows the validation rules of the ingest contract
//! (`docs/contract.md`). It does no I/O: callers pass the clock in.

pub mod batch;
pub mod event;
mod members;
pub mod queue;
pub mod scan;
pub mod skew;
pub mod timestamp;
mod view;

pub use batch::{Batch, BatchError, parse_batch};
pub use event::{EventError, Limits, ValidEvent, validate_event, validate_event_at};
pub use queue::{DecodeError, ENTRY_VERSION, EventView, QueuedEvent};
pub use skew::BatchClock;
