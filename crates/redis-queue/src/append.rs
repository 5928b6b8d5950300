//! Appending to the queue: the one place that writes an entry's fields. An event entry is
//! `v` = [`ENTRY_VERSION`] and `e` = the encoded event (see `event_model::queue`); a requeued
//! dead letter gets back exactly the fields it had.

use event_model::queue::{ENTRY_VERSION, EVENT_FIELD, EntryEvent, VERSION_FIELD};
use redis::{Cmd, Pipeline};

/// The arguments of an event entry's XADD to `key`, all but the encoded event that ends it.
fn event_xadd(key: &str) -> [&str; 6] {
    ["XADD", key, "*", VERSION_FIELD, ENTRY_VERSION, EVENT_FIELD]
}

/// Adds the XADD of one event entry to `pipe`. Its buffers are sized once, for these seven
/// arguments; its reply (the entry ID) is left in the pipeline's reply, which the callers do
/// not read (marking it ignored costs a hash-set entry per event).
pub fn add_event(pipe: &mut Pipeline, key: &str, encoded: &[u8]) {
    let fixed = event_xadd(key);
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

/// What [`entries`] sends, written straight in RESP2 into `out` for [`crate::writer`]: MULTI,
/// the XADD of each event, EXEC; byte for byte what redis-rs packs for that pipeline (a test
/// holds the two equal). Each event is encoded into `scratch` first, as its length goes before
/// it. Returns the number of XADDs.
pub(crate) fn entries_resp<'e>(
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    key: &str,
    events: impl IntoIterator<Item = EntryEvent<'e>>,
) -> usize {
    out.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
    let mut head = Vec::with_capacity(64 + key.len());
    head.extend_from_slice(b"*7\r\n");
    for arg in event_xadd(key) {
        crate::resp::bulk_string(&mut head, arg.as_bytes());
    }
    let mut n = 0;
    for e in events {
        scratch.clear();
        e.encode_into(scratch);
        out.reserve(head.len() + scratch.len() + 16);
        out.extend_from_slice(&head);
        crate::resp::bulk_string(out, scratch);
        n += 1;
    }
    out.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn event(k: u8, name: &str, properties: &str) -> EntryEvent<'static> {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000 + i64::from(k)).unwrap();
        EntryEvent {
            time: at,
            event_id: uuid::Uuid::from_bytes([k; 16]),
            name: Box::leak(name.to_string().into_boxed_str()),
            source: "game",
            device_id: k.is_multiple_of(2).then_some("dev"),
            session_id: None,
            user_id: Some("u\"ser"),
            device_time: k.is_multiple_of(5).then_some(at),
            properties: Box::leak(properties.to_string().into_boxed_str()),
            sent_at: k.is_multiple_of(3).then_some(at),
            received_at: at,
        }
    }

    /// The writer's transaction is exactly the pipeline redis-rs would send: the same
    /// commands, the same arguments, the same framing; events of any length (a length with
    /// more digits, an empty object) included.
    #[test]
    fn the_resp_transaction_is_what_redis_rs_packs() {
        let long = format!("{{\"k\":\"{}\"}}", "x".repeat(100_000));
        let events: Vec<_> = [("a", "{}"), ("ünï\ncode", "{\"a\":[1,2]}"), ("b", &long)]
            .iter()
            .enumerate()
            .map(|(k, (n, p))| event(k as u8, n, p))
            .collect();
        for take in [0, 1, events.len()] {
            let (mut out, mut scratch) = (Vec::new(), Vec::new());
            let n = entries_resp(
                &mut out,
                &mut scratch,
                "q:{3}",
                events[..take].iter().copied(),
            );
            assert_eq!(n, take);
            let packed = entries("q:{3}", events[..take].iter().copied()).get_packed_pipeline();
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&packed),
                "{take} events"
            );
        }
    }
}
