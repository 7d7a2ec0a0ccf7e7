//! What crosses the node service's sockets: the launch socket between `tollgate run
//! --connect` and `tollgate serve`, and the channel between the service and the worker
//! process that supervises one execution (`tollgate __execution`).
//!
//! Every message is one frame: a 4-byte big-endian length, then that many bytes of JSON.
//! A frame longer than [`MAX_FRAME`] is refused, so a hostile caller cannot make the
//! service allocate more than that. The caller's descriptors travel with the first frame as
//! `SCM_RIGHTS`, never as bytes through the service.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// The largest frame either side accepts (a launch request carries the command line and
/// the caller's `--pass-env` values; a finish carries the summary).
pub const MAX_FRAME: usize = 1 << 20;

/// The protocol's version; a service refuses a caller of another version with a message
/// that names both.
pub const VERSION: u32 = 1;

/// The signals a caller passes on to its execution, exactly as a local `tollgate run` takes
/// them (the client catches these; the service passes on these and no other).
pub const PASSED_SIGNALS: [nix::sys::signal::Signal; 7] = {
    use nix::sys::signal::Signal;
    [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ]
};

/// Caller → service, on the launch socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// The first frame; it carries the descriptors, in this order: stdin, stdout, stderr,
    /// then the `--audit` file when `audit` is true, then the `--log` file when `log` is,
    /// then one `O_PATH` descriptor per shared directory (`shares` of them): every `--share`
    /// in the order given, then every `--share-ro` in the order given.
    Launch(LaunchRequest),
    /// A signal the caller received (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2,
    /// SIGWINCH), to be passed on exactly as a local `tollgate run` would.
    Signal { signal: i32 },
}

/// What the caller asks for: its `tollgate run` arguments, as it gave them (without
/// `--connect`), and the values the service cannot read itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    pub version: u32,
    /// Everything after `run` on the caller's command line except `--connect SOCKET`,
    /// parsed by the service with the same parser as a local run.
    pub args: Vec<String>,
    /// The caller's own values of the variables it named with `--pass-env` (a name the
    /// caller does not have is absent, as in a local run).
    pub pass_env: BTreeMap<String, String>,
    /// The caller's `TERM` and `LANG`, which a local run hands the sandbox from its own
    /// environment. The service keeps only those two names, and only values of a few safe
    /// characters: they go into a root process's environment.
    #[serde(default)]
    pub terminal: BTreeMap<String, String>,
    /// The caller opened its `--audit` file itself (as itself) and sends the descriptor.
    pub audit: bool,
    /// Likewise for `--log`.
    pub log: bool,
    /// How many directory descriptors follow (see [`ClientMessage::Launch`]): the caller
    /// opened each `--share` / `--share-ro` directory itself, as itself, so the worker binds
    /// only what the caller can reach (at most `mounts::MAX_SHARES`).
    #[serde(default)]
    pub shares: u32,
}

/// The worker's descriptor of the caller's first shared directory; the `i`-th share of the
/// serialised options (`RunOptions.shares`, in their mount order) is on `FIRST_SHARE_FD + i`.
/// Below it: 0, 1, 2 the caller's stdio, 3 the worker channel, 4 `--audit`, 5 `--log`.
pub const FIRST_SHARE_FD: i32 = 6;

/// Service → caller, on the launch socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServiceMessage {
    /// The execution exists (sent once its worker reported its id).
    Started { execution: String },
    /// The launch was refused, or failed before the command could run: print `message`
    /// (prefixed `tollgate: `) and exit `status` (125, or 126/127 for the command).
    Refused { status: i32, message: String },
    /// The execution ended: exit `status`; `summary` is the summary document when the
    /// caller asked for `--summary` (the caller writes it, as itself).
    Exited {
        status: i32,
        #[serde(default)]
        summary: Option<serde_json::Value>,
    },
}

/// Service → worker: the first and only frame the service sends on the worker channel
/// (closing the channel afterwards means "end this execution now").
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerStart {
    /// The run, already authorised: what `RunArgs` became, with the service's own choices
    /// (team policy, secrets root) applied. Serialised `crate::run::RunOptions`.
    pub options: serde_json::Value,
    /// The team policy in force when the launch was accepted (the last good version).
    pub policy: Option<PolicyText>,
    /// Who launched it, for the execution's audit records and the service's log.
    pub caller: CallerIdentity,
}

/// A team policy as text, and the name it is reported under (its file's path).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyText {
    pub name: String,
    pub text: String,
}

/// The launching process, as `SO_PEERCRED` (and `SO_PEERGROUPS`) reported it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CallerIdentity {
    pub uid: u32,
    pub gid: u32,
    /// As the service's PID namespace sees it (0 when the caller is outside it).
    pub pid: i32,
    /// Supplementary groups.
    #[serde(default)]
    pub groups: Vec<u32>,
}

/// Worker → service, on the worker channel, in this order: `Started`, any number of
/// `Record`, then exactly one `Finished` (a worker that dies first is reported as a failed
/// execution).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkerEvent {
    Started {
        execution: String,
    },
    /// One audit record of the execution, in tollgate's own format (docs/audit.md),
    /// whatever `--audit-format` the caller chose: what the metrics are counted from.
    Record {
        record: serde_json::Value,
    },
    /// The run's exit status and its summary (always sent; the service forwards it to the
    /// caller only when it asked for `--summary`).
    Finished {
        status: i32,
        #[serde(default)]
        summary: Option<serde_json::Value>,
    },
}

/// Where the service serves `/metrics`: `HOST:PORT` or `unix:/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    Tcp(std::net::SocketAddr),
    Unix(std::path::PathBuf),
}

impl MetricsListen {
    pub fn parse(text: &str) -> Result<MetricsListen, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = std::path::PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!("metrics address {text}: give unix:/ABSOLUTE/PATH"));
            }
            return Ok(MetricsListen::Unix(path));
        }
        text.parse().map(MetricsListen::Tcp).map_err(|_| {
            format!("metrics address `{text}`: give HOST:PORT (e.g. 127.0.0.1:9464) or unix:/PATH")
        })
    }
}

impl std::fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsListen::Tcp(addr) => write!(f, "{addr}"),
            MetricsListen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the other side closed the connection")]
    Closed,
    #[error("a frame of {0} bytes is larger than the {MAX_FRAME} allowed")]
    TooLarge(usize),
    #[error("a malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `message` as one frame.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let body = serde_json::to_vec(message).expect("wire messages always serialise");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// The length a frame header announces, refused above [`MAX_FRAME`].
pub fn frame_length(header: [u8; 4]) -> Result<usize, FrameError> {
    let length = u32::from_be_bytes(header) as usize;
    if length > MAX_FRAME {
        return Err(FrameError::TooLarge(length));
    }
    Ok(length)
}

/// Decodes one frame's body.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(body)?)
}

/// Writes one frame to a blocking writer.
pub fn write_frame<T: Serialize>(out: &mut impl Write, message: &T) -> std::io::Result<()> {
    out.write_all(&encode(message))?;
    out.flush()
}

/// Reads one frame from a blocking reader; `Closed` at a clean end of stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(input: &mut impl Read) -> Result<T, FrameError> {
    let mut header = [0u8; 4];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let mut body = vec![0u8; frame_length(header)?];
    input.read_exact(&mut body)?;
    decode(&body)
}

/// Reads one frame from an async reader; `Closed` at a clean end of stream.
pub async fn read_frame_async<T: for<'de> Deserialize<'de>>(
    input: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<T, FrameError> {
    use tokio::io::AsyncReadExt as _;
    let mut header = [0u8; 4];
    match input.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let mut body = vec![0u8; frame_length(header)?];
    input.read_exact(&mut body).await?;
    decode(&body)
}

/// Writes one frame to an async writer.
pub async fn write_frame_async<T: Serialize>(
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
    message: &T,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    out.write_all(&encode(message)).await?;
    out.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_an_oversized_header_is_refused() {
        let message = ClientMessage::Signal { signal: 2 };
        let frame = encode(&message);
        let back: ClientMessage = read_frame(&mut frame.as_slice()).unwrap();
        assert_eq!(back, message);
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            read_frame::<ClientMessage>(&mut huge.as_slice()),
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(
            read_frame::<ClientMessage>(&mut [].as_slice()),
            Err(FrameError::Closed)
        ));
        let garbage = encode(&serde_json::json!({"type": "launch", "args": 3}));
        assert!(matches!(
            read_frame::<ClientMessage>(&mut garbage.as_slice()),
            Err(FrameError::Malformed(_))
        ));
    }
}
