//! Appending to the queue: the one place that writes an entry's fields. An event entry is
//! `v` = [`ENTRY_VERSION`] and `e` = the encoded event (see `event_model::queue`); a requeued
//! dead letter gets back exactly the fields it had.

use event_model::queue::{ENTRY_VERSION, EVENT_FIELD, VERSION_FIELD};
use redis::Pipeline;

/// Adds the XADD of one event entry to `pipe` (its reply ignored).
pub fn add_event(pipe: &mut Pipeline, key: &str, encoded: &str) {
    pipe.cmd("XADD")
        .arg(key)
        .arg("*")
        .arg(VERSION_FIELD)
        .arg(ENTRY_VERSION)
        .arg(EVENT_FIELD)
        .arg(encoded)
        .ignore();
}

/// A MULTI/EXEC appending every encoded event to `key`: all are in the stream, or none.
pub fn events<S: AsRef<str>>(key: &str, encoded: impl IntoIterator<Item = S>) -> Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for e in encoded {
        add_event(&mut pipe, key, e.as_ref());
    }
    pipe
}

/// Adds the XADD of an entry with exactly these fields to `pipe` (its reply ignored).
pub fn add_fields<'f>(
    pipe: &mut Pipeline,
    key: &str,
    fields: impl IntoIterator<Item = (&'f [u8], &'f [u8])>,
) {
    let cmd = pipe.cmd("XADD").arg(key).arg("*");
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    cmd.ignore();
}
