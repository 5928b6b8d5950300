//! Appending to the queue: the one place that writes an entry's fields. An event entry is
//! `v` = [`ENTRY_VERSION`] and `e` = the encoded event (see `event_model::queue`); a requeued
//! dead letter gets back exactly the fields it had.

use event_model::queue::{ENTRY_VERSION, EVENT_FIELD, EntryEvent, VERSION_FIELD};
use redis::{Cmd, Pipeline};

/// Adds the XADD of one event entry to `pipe`. Its buffers are sized once, for these seven
/// arguments; its reply (the entry ID) is left in the pipeline's reply, which the callers do
/// not read (marking it ignored costs a hash-set entry per event).
pub fn add_event(pipe: &mut Pipeline, key: &str, encoded: &[u8]) {
    let fixed = ["XADD", key, "*", VERSION_FIELD, ENTRY_VERSION, EVENT_FIELD];
    let size = fixed.iter().map(|a| a.len()).sum::<usize>() + encoded.len();
    let mut cmd = Cmd::with_capacity(fixed.len() + 1, size);
    for arg in fixed {
        cmd.arg(arg);
    }
    cmd.arg(encoded);
    pipe.add_command(cmd);
}

/// A MULTI/EXEC appending every encoded event to `key`: all are in the stream, or none. Query
/// it as `()`: the reply is every entry's ID.
pub fn events<S: AsRef<[u8]>>(key: &str, encoded: impl IntoIterator<Item = S>) -> Pipeline {
    let encoded = encoded.into_iter();
    let mut pipe = Pipeline::with_capacity(encoded.size_hint().0);
    pipe.atomic();
    for e in encoded {
        add_event(&mut pipe, key, e.as_ref());
    }
    pipe
}

/// [`events`] for events still to be encoded: each is encoded into one scratch buffer and
/// copied from there into its command, so no event gets a buffer of its own.
pub fn entries<'e>(key: &str, events: impl IntoIterator<Item = EntryEvent<'e>>) -> Pipeline {
    let events = events.into_iter();
    let mut pipe = Pipeline::with_capacity(events.size_hint().0);
    pipe.atomic();
    let mut scratch = Vec::with_capacity(1024);
    for e in events {
        scratch.clear();
        e.encode_into(&mut scratch);
        add_event(&mut pipe, key, &scratch);
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
