//! The audit writer: one thread that owns a store connection and commits every record that is
//! waiting as one transaction (group commit: one fsync for the whole batch), then tells each
//! waiter its sequence number. A request is acknowledged only after its record is durable.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;

use crate::audit::AuditRecord;
use crate::{Result, Store, StoreError};

type Done = Box<dyn FnOnce(Result<u64>) + Send>;

struct Job {
    record: AuditRecord,
    done: Done,
}

/// Most records in one transaction.
const MAX_BATCH: usize = 4096;

pub struct AuditWriter {
    tx: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl AuditWriter {
    /// Starts the writer thread over its own store connection.
    pub fn start(store: Box<dyn Store>) -> Result<AuditWriter> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("mideum-audit".into())
            .spawn(move || run(store, rx))?;
        Ok(AuditWriter {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a record; `done` runs on the writer thread once it is durable (or failed).
    pub fn submit(&self, record: AuditRecord, done: impl FnOnce(Result<u64>) + Send + 'static) {
        let job = Job {
            record,
            done: Box::new(done),
        };
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(tx) => {
                if let Err(mpsc::SendError(job)) = tx.send(job) {
                    (job.done)(Err(StoreError::Writer("the writer thread ended".into())));
                }
            }
            None => (job.done)(Err(StoreError::Writer("the writer was shut down".into()))),
        }
    }

    /// Appends one record and blocks until it is durable; returns its sequence number.
    pub fn append(&self, record: AuditRecord) -> Result<u64> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(record, move |r| {
            let _ = tx.send(r);
        });
        rx.recv()
            .map_err(|_| StoreError::Writer("the writer dropped a record".into()))?
    }

    /// Writes what is queued, then stops the thread.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for AuditWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(store: Box<dyn Store>, rx: Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let records: Vec<AuditRecord> = jobs.iter().map(|j| j.record.clone()).collect();
        match store.append_audit(&records) {
            Ok(seqs) => {
                for (job, seq) in jobs.into_iter().zip(seqs) {
                    (job.done)(Ok(seq));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = jobs.len(), "audit batch failed");
                let msg = e.to_string();
                for job in jobs {
                    (job.done)(Err(StoreError::Writer(msg.clone())));
                }
            }
        }
    }
}
