//! The audit log's writer thread: it receives records, encodes them (in the log's
//! [`Format`]), and writes whatever has queued up in one go, then flushes.
//!
//! Encoding off the request path keeps the proxy's latency free of it; under load records
//! are batched into few writes, when idle each reaches the file at once. The file is open
//! `O_APPEND` (see `run::outputs`), so every batch lands whole at the end, whoever else
//! writes the same file.

use super::record::Record;
use super::{ocsf, Format};
use serde::Serialize;
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
pub(super) fn run(
    mut out: Box<dyn Write + Send>,
    format: Format,
    queue: mpsc::Receiver<Message>,
) {
    let mut encoder = Encoder::new(format);
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut acks = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(record) => encoder.encode(&record, &mut batch),
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

/// Turns records into lines of the log's format.
enum Encoder {
    Json,
    Ocsf(ocsf::Encoder),
}

impl Encoder {
    fn new(format: Format) -> Encoder {
        match format {
            Format::Json => Encoder::Json,
            Format::Ocsf => Encoder::Ocsf(ocsf::Encoder::default()),
        }
    }

    /// Appends `record`'s line (OCSF: one line per event it maps to) to `batch`.
    fn encode(&mut self, record: &Record, batch: &mut Vec<u8>) {
        match self {
            Encoder::Json => line(record, batch),
            Encoder::Ocsf(encoder) => {
                for event in encoder.events(record) {
                    line(&event, batch);
                }
            }
        }
    }
}

/// Appends `value` and a newline to `batch`; a value that cannot be encoded leaves nothing
/// (no half line) and is reported.
fn line(value: &impl Serialize, batch: &mut Vec<u8>) {
    let start = batch.len();
    match serde_json::to_writer(&mut *batch, value) {
        Ok(()) => batch.push(b'\n'),
        Err(error) => {
            batch.truncate(start);
            tracing::error!("audit record could not be encoded: {error}");
        }
    }
}
