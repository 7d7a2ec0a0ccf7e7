//! The audit log's writer thread: it receives records, encodes them, and writes whatever has
//! queued up in one go, then flushes.
//!
//! Encoding off the request path keeps the proxy's latency free of it; under load records
//! are batched into few writes, when idle each reaches the file at once. The file is open
//! `O_APPEND` (see `run::outputs`), so every batch lands whole at the end, whoever else
//! writes the same file.

use super::record::Record;
use std::io::Write;
use std::sync::mpsc;

pub(super) enum Message {
    Record(Box<Record>),
    /// Acknowledged once everything queued before it is written.
    Sync(mpsc::Sender<()>),
}

/// A batch is written once it reaches this size, even if more records are queued.
const BATCH_BYTES: usize = 1024 * 1024;

/// Runs until every sender is gone, then writes what is left.
pub(super) fn run(mut out: Box<dyn Write + Send>, queue: mpsc::Receiver<Message>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut acks = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(record) => encode(&record, &mut batch),
                Message::Sync(ack) => acks.push(ack),
            }
            if batch.len() < BATCH_BYTES {
                next = queue.try_recv().ok();
            }
        }
        if let Err(error) = out.write_all(&batch).and_then(|()| out.flush()) {
            // A full disk must not take the sandbox down.
            tracing::error!("audit log write failed: {error}");
        }
        batch.clear();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

fn encode(record: &Record, batch: &mut Vec<u8>) {
    match serde_json::to_writer(&mut *batch, record) {
        Ok(()) => batch.push(b'\n'),
        Err(error) => tracing::error!("audit record could not be encoded: {error}"),
    }
}
