//! The sample of batches whose visibility in PostgreSQL `loadgen e2e` watches.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use uuid::Uuid;

/// Batches whose visibility in PostgreSQL is being watched (a sample, to keep polling cheap).
#[derive(Default)]
pub struct Tracker {
    /// Event id → batch number, for the ids not yet seen.
    pub pending: HashMap<Uuid, u64>,
    /// By batch number, i.e. oldest first.
    pub batches: BTreeMap<u64, Tracked>,
    pub latencies_ms: Vec<f64>,
}

pub struct Tracked {
    /// The ids not yet seen.
    ids: Vec<Uuid>,
    acked: Option<Instant>,
    seen: Option<Instant>,
}

impl Tracker {
    pub fn register(&mut self, batch: u64, ids: &[Uuid]) {
        for id in ids {
            self.pending.insert(*id, batch);
        }
        self.batches.insert(
            batch,
            Tracked {
                ids: ids.to_vec(),
                acked: None,
                seen: None,
            },
        );
    }

    pub fn forget(&mut self, batch: u64) {
        if let Some(t) = self.batches.remove(&batch) {
            for id in t.ids {
                self.pending.remove(&id);
            }
        }
    }

    pub fn acked(&mut self, batch: u64, at: Instant) {
        if let Some(t) = self.batches.get_mut(&batch) {
            t.acked = Some(at);
        }
        self.finish(batch);
    }

    pub fn seen(&mut self, id: &Uuid, at: Instant) {
        if let Some(batch) = self.pending.remove(id) {
            if let Some(t) = self.batches.get_mut(&batch) {
                t.ids.retain(|i| i != id);
                if t.ids.is_empty() {
                    t.seen = Some(at);
                }
            }
            self.finish(batch);
        }
    }

    fn finish(&mut self, batch: u64) {
        if let Some(Tracked {
            acked: Some(a),
            seen: Some(s),
            ..
        }) = self.batches.get(&batch)
        {
            // Rows visible before the client read its 200 count as 0.
            self.latencies_ms
                .push(s.saturating_duration_since(*a).as_secs_f64() * 1e3);
            self.batches.remove(&batch);
        }
    }

    /// The ids to ask about: every unseen id of the oldest batches, at most about `cap`.
    pub fn to_poll(&self, cap: usize) -> Vec<Uuid> {
        let mut ids = Vec::new();
        for t in self.batches.values() {
            if ids.len() >= cap {
                break;
            }
            ids.extend_from_slice(&t.ids);
        }
        ids
    }
}
