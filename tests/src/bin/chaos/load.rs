//! The load: concurrent clients send events with client-chosen `event_id`s, paced over the
//! run's `--seconds`, each batch retried on 503 or a connection error until it is acknowledged.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use et_tests::*;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::Opts;

/// The clients while they run, and what they sent and had acknowledged so far.
pub struct Load {
    clients: Vec<JoinHandle<()>>,
    sent: Arc<Mutex<HashSet<Uuid>>>,
    acked: Arc<Mutex<HashSet<Uuid>>>,
    retries: Arc<AtomicU64>,
}

/// What the load sent, once every client is done.
pub struct Sent {
    /// Every id a client sent, acknowledged or not.
    pub sent: HashSet<Uuid>,
    /// The ids whose batch was answered 200: the ones the pipeline promised to store.
    pub acked: HashSet<Uuid>,
    /// 503s and connection errors the clients retried.
    pub retries: u64,
}

impl Load {
    /// Starts `--clients` clients, spread over the ingest-api processes.
    pub fn start(opts: &Opts, ingests: &[Ingest]) -> Load {
        let mut load = Load {
            clients: Vec::new(),
            sent: Arc::default(),
            acked: Arc::default(),
            retries: Arc::default(),
        };
        let per_client = opts.events.div_ceil(opts.clients);
        for c in 0..opts.clients {
            let url = ingests[c % ingests.len()].url.clone();
            let task = load.client(url, c * per_client, per_client, opts);
            load.clients.push(task);
        }
        load
    }

    /// One client: `count` events numbered from `first`, in batches of `--batch`, paced so
    /// that they take `--seconds`.
    fn client(&self, url: String, first: usize, count: usize, opts: &Opts) -> JoinHandle<()> {
        let (sent, acked, retries) = (self.sent.clone(), self.acked.clone(), self.retries.clone());
        let batch = opts.batch;
        let batches = count.div_ceil(batch) as u32;
        let pace = Duration::from_secs(opts.seconds) / batches.max(1);
        let load_start = tokio::time::Instant::now();
        tokio::spawn(async move {
            let mut sent_batches = 0u32;
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut done = 0;
            while done < count {
                tokio::time::sleep_until(load_start + pace * sent_batches).await;
                sent_batches += 1;
                let n = batch.min(count - done);
                let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
                sent.lock().unwrap().extend(&ids);
                let body = batch_with_ids("chaos", first + done, &ids);
                post_until_acked(&http, &url, &body, &retries).await;
                acked.lock().unwrap().extend(&ids);
                done += n;
            }
        })
    }

    /// Every client has sent all its events.
    pub fn is_done(&self) -> bool {
        self.clients.iter().all(|c| c.is_finished())
    }

    /// Waits for every client, then gives what they sent.
    pub async fn finish(self) -> Sent {
        for c in self.clients {
            c.await.expect("client task");
        }
        Sent {
            sent: self.sent.lock().unwrap().clone(),
            acked: self.acked.lock().unwrap().clone(),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}
