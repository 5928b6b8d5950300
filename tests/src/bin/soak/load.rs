//! The load: first a burst that measures the pipeline's drain rate, then batches of 100 paced
//! at a given rate until stopped; every batch retried (503, connection errors) until
//! acknowledged, its client-chosen ids kept.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use et_tests::*;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The clients' shared state.
#[derive(Clone)]
pub struct Load {
    http: reqwest::Client,
    url: String,
    retries: Arc<AtomicU64>,
    acked: Arc<Mutex<HashSet<Uuid>>>,
    stop: Arc<AtomicBool>,
}

/// What the load had acknowledged, once stopped.
pub struct Sent {
    pub acked: HashSet<Uuid>,
    pub retries: u64,
}

impl Load {
    pub fn new(ingest: &Ingest) -> Load {
        Load {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            url: ingest.url.clone(),
            retries: Arc::default(),
            acked: Arc::default(),
            stop: Arc::default(),
        }
    }

    /// Events acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// The drain rate in events/s: 20,000 events from 4 clients as fast as they go, until the
    /// last row lands.
    pub async fn calibrate(&self, db: &TestDb) -> f64 {
        let calibrate = 20_000usize;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let load = self.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..calibrate / 4 / 100 {
                    load.send_one_batch().await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        db.wait_rows(calibrate as i64).await;
        calibrate as f64 / started.elapsed().as_secs_f64()
    }

    /// Starts one client sending a batch of 100 every `100 / rate` seconds until [`Load::stop`].
    pub fn paced(&self, rate: f64) -> JoinHandle<()> {
        let load = self.clone();
        tokio::spawn(async move {
            let pace = Duration::from_secs_f64(100.0 / rate);
            let start = tokio::time::Instant::now();
            let mut n = 0u32;
            while !load.stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(start + pace * n).await;
                n += 1;
                load.send_one_batch().await;
            }
        })
    }

    /// Stops the paced client and waits for its last batch.
    pub async fn stop(self, paced: JoinHandle<()>) -> Sent {
        self.stop.store(true, Ordering::Relaxed);
        paced.await.unwrap();
        Sent {
            acked: self.acked.lock().unwrap().clone(),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    /// Posts 100 events with fresh ids until acknowledged; keeps the ids.
    async fn send_one_batch(&self) {
        let ids: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
        let body = batch_with_ids("soak", 0, &ids);
        post_until_acked(&self.http, &self.url, &body, &self.retries).await;
        self.acked.lock().unwrap().extend(ids);
    }
}
