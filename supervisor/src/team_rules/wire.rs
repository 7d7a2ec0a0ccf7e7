//! What the supervisor and a team-rules worker say to each other over the worker's stdin and
//! stdout: length-prefixed JSON frames, each read under a deadline and a size limit.
//!
//! A frame is a 4-byte big-endian length and that many bytes of JSON. The supervisor sends
//! the module once, then one input per request; the worker answers each. Nothing the worker
//! sends is trusted further than its shape: an answer larger than [`MAX_ANSWER`] or not in
//! time is a failed evaluation, whatever the worker meant.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};
use tollgate_policy::{TeamModule, TeamOutcome};

/// Largest message to a worker: the module with the policy's data document (from a policy
/// file of at most 1 MiB), or one request's input.
pub const MAX_REQUEST: usize = 16 << 20;
/// Largest answer accepted from a worker: denial messages and header edits.
pub const MAX_ANSWER: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    Compile(TeamModule),
    Evaluate(tollgate_policy::rego::Value),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    Compiled,
    CompileError {
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    Outcome(TeamOutcome),
    /// The rules failed without taking the worker down (a type error, regorus's time or
    /// instruction limit).
    Failed(String),
}

/// Writes one frame.
pub fn send<T: Serialize>(to: &mut impl Write, message: &T, limit: usize) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    if body.len() > limit {
        return Err(io::Error::other(format!(
            "a message of {} bytes is over the {limit}-byte limit",
            body.len()
        )));
    }
    let length = u32::try_from(body.len()).map_err(io::Error::other)?;
    // One write for the frame: the reader usually gets it whole in one read.
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&body);
    to.write_all(&frame)?;
    to.flush()
}

/// Reads one frame, blocking as long as it takes (the worker's side: its supervisor is
/// trusted, and its end of the pipe closing ends the worker).
pub fn receive<T: for<'de> Deserialize<'de>>(from: &mut impl Read, limit: usize) -> io::Result<T> {
    let mut length = [0u8; 4];
    from.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length) as usize;
    if length > limit {
        return Err(io::Error::other("frame over the size limit"));
    }
    let mut body = vec![0u8; length];
    from.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(io::Error::other)
}

/// Why a frame from a worker did not arrive.
#[derive(Debug)]
pub enum Late {
    /// Nothing complete before the deadline.
    Deadline,
    /// The pipe closed or failed: the worker is gone.
    Closed(io::Error),
    /// Over [`MAX_ANSWER`], or not a message.
    Malformed(String),
}

/// Reads one frame from a worker before `deadline`. Reads as much as is there each time (a
/// frame written in one piece arrives in one read), so the worker never runs ahead: it
/// answers one message at a time.
pub fn receive_by<T, R>(from: &mut R, deadline: Instant, limit: usize) -> Result<T, Late>
where
    T: for<'de> Deserialize<'de>,
    R: Read + AsFd,
{
    let mut frame: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if frame.len() >= 4 {
            let length = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
            if length > limit {
                return Err(Late::Malformed(format!(
                    "an answer of {length} bytes is over the {limit}-byte limit"
                )));
            }
            if frame.len() >= 4 + length {
                return serde_json::from_slice(&frame[4..4 + length])
                    .map_err(|e| Late::Malformed(e.to_string()));
            }
        }
        let n = read_some_by(from, &mut chunk, deadline)?;
        frame.extend_from_slice(&chunk[..n]);
    }
}

/// One read of whatever is available before `deadline` (at least one byte).
fn read_some_by<R: Read + AsFd>(
    from: &mut R,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<usize, Late> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Late::Deadline);
        }
        let millis = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(error) => return Err(Late::Closed(error.into())),
        }
        // Readable (or hung up): a read now returns at once.
        match from.read(buf) {
            Ok(0) => {
                return Err(Late::Closed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the worker closed its output",
                )))
            }
            Ok(n) => return Ok(n),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(Late::Closed(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_frame_goes_through_and_a_silent_or_oversized_one_does_not() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let mut reader = reader;
        send(&mut writer, &FromWorker::Failed("x".into()), MAX_ANSWER).unwrap();
        let got: FromWorker = receive_by(
            &mut reader,
            Instant::now() + Duration::from_secs(5),
            MAX_ANSWER,
        )
        .unwrap();
        assert!(matches!(got, FromWorker::Failed(m) if m == "x"));
        // Nothing more comes: the deadline ends the wait.
        let late = receive_by::<FromWorker, _>(
            &mut reader,
            Instant::now() + Duration::from_millis(20),
            MAX_ANSWER,
        );
        assert!(matches!(late, Err(Late::Deadline)), "{late:?}");
        // A length over the limit is refused before its body is read.
        writer
            .write_all(&(MAX_ANSWER as u32 + 1).to_be_bytes())
            .unwrap();
        let big = receive_by::<FromWorker, _>(
            &mut reader,
            Instant::now() + Duration::from_secs(5),
            MAX_ANSWER,
        );
        assert!(matches!(big, Err(Late::Malformed(_))), "{big:?}");
        drop(writer);
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
        let closed = receive_by::<FromWorker, _>(
            &mut reader,
            Instant::now() + Duration::from_secs(5),
            MAX_ANSWER,
        );
        assert!(matches!(closed, Err(Late::Closed(_))), "{closed:?}");
    }
}
