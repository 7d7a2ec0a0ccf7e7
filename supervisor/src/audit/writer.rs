//! The audit log's writer thread: it receives records, encodes them (in the log's
//! [`Format`]), and writes whatever has queued up in one go, then flushes.
//!
//! Encoding off the request path keeps the proxy's latency free of it. The writer does not
//! wake for every record ([`super::wake`]): a busy proxy's records go out a batch at a time,
//! a record reaches the file within about a millisecond of its worker running out of work,
//! and a [`Message::Sync`] is answered at once. The file is open
//! `O_APPEND` (see `run::outputs`), so every batch lands whole at the end, whoever else
//! writes the same file.
//!
//! Identical refusals are summed on the way ([`super::aggregate`]): the writer wakes when an
//! interval ends to write its summed record, and writes every pending one on sync and close.
//!
//! An execution the node service launched has a second sink, its [`Tee`]: every record, as
//! written, also goes to the service (whatever the file's format, and with no file at all),
//! from this same thread and in the same batches, so the proxy's requests pay nothing more
//! for it. A local run has no tee.

use super::aggregate::Held;
use super::record::Record;
use super::wake::Wake;
use super::{ocsf, Format, Tee};
use serde::Serialize;
use std::io::Write;
use std::sync::mpsc::{self, TryRecvError};
use std::sync::Arc;

pub(super) enum Message {
    Record(Box<Record>),
    /// Acknowledged once everything queued before it is written.
    Sync(mpsc::Sender<()>),
}

/// A batch is written once it reaches this size, even if more records are queued.
const BATCH_BYTES: usize = 1024 * 1024;

/// Where the records go: the file (in its format) and the tee, each optional.
pub(super) struct Sinks {
    out: Option<Box<dyn Write + Send>>,
    encoder: Encoder,
    batch: Vec<u8>,
    tee: Option<Box<dyn Tee>>,
    /// The tee took records since its last flush.
    teed: bool,
}

impl Sinks {
    pub(super) fn new(
        out: Option<Box<dyn Write + Send>>,
        format: Format,
        tee: Option<Box<dyn Tee>>,
    ) -> Sinks {
        Sinks {
            batch: Vec::with_capacity(if out.is_some() { 64 * 1024 } else { 0 }),
            out,
            encoder: Encoder::new(format),
            tee,
            teed: false,
        }
    }

    /// Hands every record of `ready` to each sink.
    fn take(&mut self, ready: &mut Vec<Record>) {
        for record in ready.drain(..) {
            if let Some(tee) = &mut self.tee {
                tee.record(&record);
                self.teed = true;
            }
            if self.out.is_some() {
                self.encoder.encode(&record, &mut self.batch);
            }
        }
    }

    /// Bytes waiting to go out, in the larger of the two sinks.
    fn pending(&self) -> usize {
        self.batch
            .len()
            .max(self.tee.as_ref().map_or(0, |tee| tee.buffered()))
    }

    fn is_empty(&self) -> bool {
        self.batch.is_empty() && !self.teed
    }

    /// Writes and flushes what each sink holds.
    fn write_out(&mut self) {
        if let Some(out) = &mut self.out {
            if let Err(error) = out.write_all(&self.batch).and_then(|()| out.flush()) {
                // A full disk must not take the sandbox down.
                tracing::error!("audit log write failed: {error}");
            }
        }
        self.batch.clear();
        if let Some(tee) = &mut self.tee {
            tee.flush();
        }
        self.teed = false;
    }
}

/// Runs until every sender is gone, then writes what is left.
pub(super) fn run(mut sinks: Sinks, queue: mpsc::Receiver<Message>, wake: Arc<Wake>) {
    let mut acks = Vec::new();
    // Identical refusals are summed (see `aggregate`): `held` decides what is written when.
    let mut held = Held::default();
    let mut ready = Vec::new();
    let mut open = true;
    // A batch was cut at BATCH_BYTES: take the rest without waiting.
    let mut more = false;
    while open {
        if !more {
            wake.wait(held.next_close());
        }
        more = false;
        loop {
            let message = match queue.try_recv() {
                Ok(message) => message,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            };
            match message {
                Message::Record(record) => {
                    wake.took();
                    held.offer(*record, &mut ready);
                }
                Message::Sync(ack) => {
                    held.drain(&mut ready);
                    acks.push(ack);
                }
            }
            sinks.take(&mut ready);
            if sinks.pending() >= BATCH_BYTES {
                more = true;
                break;
            }
        }
        if open {
            held.due(&mut ready);
        } else {
            held.drain(&mut ready);
        }
        sinks.take(&mut ready);
        if sinks.is_empty() && acks.is_empty() {
            continue;
        }
        sinks.write_out();
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
