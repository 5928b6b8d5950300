//! Events as loadgen sends and queues them.

use std::sync::atomic::{AtomicU64, Ordering};

use event_model::QueuedEvent;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// Unique event ids, cheaply: a random 64-bit prefix per run and a counter, shaped as a UUIDv4.
pub struct Ids {
    prefix: u64,
    next: AtomicU64,
}

impl Ids {
    pub fn next(&self) -> Uuid {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.prefix.to_be_bytes());
        b[8..].copy_from_slice(&n.to_be_bytes());
        uuid::Builder::from_random_bytes(b).into_uuid()
    }
}

/// A realistic mix of game/app telemetry events of about 300 bytes each as sent.
pub struct EventGen {
    pub ids: Ids,
    /// Per template: (name, device_id, session_id, user_id, properties JSON).
    templates: Vec<[String; 5]>,
    /// Per template: the event's JSON text after its timestamp value (pre-serialised).
    tails: Vec<String>,
}

const NAMES: [&str; 8] = [
    "level_complete",
    "session_start",
    "purchase",
    "ad_impression",
    "achievement_unlocked",
    "settings_changed",
    "frame_stats",
    "match_end",
];

impl EventGen {
    pub fn new() -> EventGen {
        let prefix = Uuid::new_v4().as_u64_pair().0;
        let templates: Vec<[String; 5]> = (0..64u64)
            .map(|i| {
                let r = prefix.rotate_left(i as u32) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                [
                    NAMES[i as usize % NAMES.len()].to_string(),
                    format!("dev-{:016x}", r),
                    format!("sess-{:012x}", r >> 16),
                    format!("user-{:06}", r % 1_000_000),
                    format!(
                        r#"{{"level":{},"score":{},"duration_ms":{},"difficulty":"{}","platform":"windows","build":"1.4.2+8841","fps_avg":{}.{}}}"#,
                        r % 90 + 1,
                        r % 100_000,
                        r % 600_000,
                        ["easy", "normal", "hard"][i as usize % 3],
                        r % 120 + 30,
                        r % 10,
                    ),
                ]
            })
            .collect();
        let tails = templates
            .iter()
            .map(|[name, dev, sess, user, props]| {
                format!(
                    r#"","name":"{name}","device_id":"{dev}","session_id":"{sess}","user_id":"{user}","properties":{props}}}"#
                )
            })
            .collect();
        EventGen {
            ids: Ids {
                prefix,
                next: AtomicU64::new(0),
            },
            templates,
            tails,
        }
    }

    /// A request body of `n` events with fresh ids, all stamped `now`; also returns the ids.
    pub fn body(&self, n: usize, now: OffsetDateTime, ids: &mut Vec<Uuid>) -> String {
        let ts = now.format(&Rfc3339).expect("formats");
        let mut body = String::with_capacity(64 + n * 360);
        body.push_str(r#"{"sent_at":""#);
        body.push_str(&ts);
        body.push_str(r#"","events":["#);
        let mut buf = Uuid::encode_buffer();
        for i in 0..n {
            let id = self.ids.next();
            ids.push(id);
            if i > 0 {
                body.push(',');
            }
            body.push_str(r#"{"event_id":""#);
            body.push_str(id.hyphenated().encode_lower(&mut buf));
            body.push_str(r#"","timestamp":""#);
            body.push_str(&ts);
            body.push_str(&self.tails[(id.as_u64_pair().1 as usize) % self.tails.len()]);
        }
        body.push_str("]}");
        body
    }

    /// The queue entry ingest-api would write for one such event.
    pub fn queued(&self, id: Uuid, now: OffsetDateTime) -> QueuedEvent {
        let [name, dev, sess, user, props] =
            &self.templates[(id.as_u64_pair().1 as usize) % self.templates.len()];
        QueuedEvent {
            time: now,
            event_id: id,
            name: name.clone(),
            source: "bench".into(),
            device_id: Some(dev.clone()),
            session_id: Some(sess.clone()),
            user_id: Some(user.clone()),
            device_time: None,
            properties: RawValue::from_string(props.clone()).expect("valid JSON"),
            sent_at: Some(now),
            received_at: now,
        }
    }
}
