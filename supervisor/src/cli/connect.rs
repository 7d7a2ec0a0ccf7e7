//! `tollgate run --connect SOCKET`: the caller's side of the node service.
//!
//! A caller without root cannot build a sandbox; the node service (`tollgate serve`) builds
//! it for them. This side is what keeps that indistinguishable from a local `tollgate run`:
//! it sends the caller's own arguments (for the service to parse with the same parser), its
//! stdin, stdout and stderr as descriptors (the command reads and writes them directly, as
//! locally), the `--audit` and `--log` files opened as the caller (so the service never
//! writes a path for anyone), the `--share` / `--share-ro` directories opened as the caller
//! (so the sandbox gets only what the caller can reach), and the signals the caller receives; it writes `--summary` as
//! the caller and exits with the status the service reports. It needs no privilege and
//! reads no file but the outputs it was asked to write.

use super::run::RunArgs;
use crate::run::status::TOLLGATE_ERROR;
use crate::sandbox::{host_path, mounts};
use crate::serve::fds;
use crate::serve::wire::{self, ClientMessage, FrameError, LaunchRequest, ServiceMessage};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Runs the command through the node service at `socket`; returns the exit status.
pub fn run(socket: &Path, args: RunArgs) -> i32 {
    // Everything after `tollgate run`: there are no options before the subcommand.
    let argv: Vec<OsString> = std::env::args_os().skip(2).collect();
    // SAFETY: descriptors 0, 1 and 2 are open for the life of the process (the standard
    // library opens /dev/null in place of any that was closed at startup).
    let stdio = unsafe {
        [
            BorrowedFd::borrow_raw(0),
            BorrowedFd::borrow_raw(1),
            BorrowedFd::borrow_raw(2),
        ]
    };
    let ending = launch(socket, &args, argv, stdio).unwrap_or_else(|message| Ending {
        status: TOLLGATE_ERROR,
        message: Some(message),
    });
    if let Some(message) = ending.message {
        eprintln!("tollgate: {message}");
    }
    ending.status
}

/// How the run ended for the caller: the exit status, and one line to print first.
#[derive(Debug)]
struct Ending {
    status: i32,
    message: Option<String>,
}

/// Asks the service at `socket` to run what `args` (parsed from `argv`, the arguments after
/// `run`) say, with `stdio` as the command's stdin, stdout and stderr, and waits for it.
fn launch(
    socket: &Path,
    args: &RunArgs,
    argv: Vec<OsString>,
    stdio: [BorrowedFd<'_>; 3],
) -> Result<Ending, String> {
    let request_args = launch_args(argv)?;
    let outputs = Outputs::open(args)?;
    let shares = open_shares(args)?;
    let terminal = args.tty.then(|| Terminal::save(stdio[0])).flatten();
    let stream = UnixStream::connect(socket).map_err(|e| unreachable(socket, &e))?;
    // Blocked from here on: every signal the caller gets is read from the signalfd and sent
    // on, none kills the client (SIGPIPE is ignored by the runtime; sends use MSG_NOSIGNAL).
    let signals = Signals::block()
        .map_err(|e| format!("cannot take the signals to pass on to the command: {e}"))?;
    let request = LaunchRequest {
        version: wire::VERSION,
        args: request_args,
        pass_env: passed_values(&args.pass_env),
        terminal: ["TERM", "LANG"]
            .into_iter()
            .filter_map(|name| Some((name.to_owned(), std::env::var(name).ok()?)))
            .collect(),
        audit: outputs.audit.is_some(),
        log: outputs.log.is_some(),
        shares: shares.len() as u32,
    };
    let mut descriptors = stdio.to_vec();
    descriptors.extend(outputs.audit.iter().map(AsFd::as_fd));
    descriptors.extend(outputs.log.iter().map(AsFd::as_fd));
    descriptors.extend(shares.iter().map(AsFd::as_fd));
    let sent = fds::send_with_fds(
        &stream,
        &wire::encode(&ClientMessage::Launch(request)),
        &descriptors,
    );
    // The service holds its own copies now.
    drop(descriptors);
    drop(shares);
    let Outputs { summary, .. } = outputs;
    let answer = wait(&stream, &signals);
    if let Err(error) = sent {
        // A service that refused at once may have said why before closing.
        return match answer {
            Ok(ServiceMessage::Refused { status, message }) => Ok(Ending {
                status,
                message: Some(message),
            }),
            _ => Err(unreachable(socket, &error)),
        };
    }
    let ending = match answer? {
        ServiceMessage::Refused { status, message } => Ending {
            status,
            message: Some(message),
        },
        ServiceMessage::Exited {
            status,
            summary: document,
        } => Ending {
            status,
            message: summary.and_then(|target| target.write(document.as_ref()).err()),
        },
        ServiceMessage::Started { .. } => unreachable!("wait reads past Started"),
    };
    drop(terminal);
    Ok(ending)
}

/// Options whose value is a file of the caller's. The client opens (or writes) them itself
/// and the service sees their names only in messages, but the worker's working directory is
/// not the caller's: they are sent made absolute against the caller's.
const CALLER_FILES: [&str; 3] = ["--audit", "--log", "--summary"];

/// The arguments to send: `argv` (what followed `run`) without `--connect SOCKET` or
/// `--connect=SOCKET` before `--`, the [`CALLER_FILES`] made absolute; every one must be
/// UTF-8 (the service parses text).
fn launch_args(argv: Vec<OsString>) -> Result<Vec<String>, String> {
    use std::os::unix::ffi::OsStrExt as _;
    let mut kept = Vec::with_capacity(argv.len());
    let mut arguments = argv.into_iter();
    while let Some(argument) = arguments.next() {
        if argument == "--" {
            kept.push(argument);
            kept.extend(arguments);
            break;
        }
        let bytes = argument.as_bytes();
        let (name, value) = match bytes.iter().position(|&b| b == b'=') {
            Some(at) if bytes.starts_with(b"--") => {
                (&bytes[..at], Some(OsStr::from_bytes(&bytes[at + 1..])))
            }
            _ => (bytes, None),
        };
        let caller_file = CALLER_FILES.iter().any(|flag| flag.as_bytes() == name);
        match value {
            _ if name == b"--connect" => {
                if value.is_none() {
                    arguments.next();
                }
            }
            Some(value) if caller_file => {
                let mut joined = OsString::from_vec(name.to_vec());
                joined.push("=");
                joined.push(absolute(value)?);
                kept.push(joined);
            }
            None if caller_file => {
                kept.push(argument);
                if let Some(value) = arguments.next() {
                    kept.push(absolute(&value)?);
                }
            }
            _ => kept.push(argument),
        }
    }
    kept.into_iter()
        .map(|argument| {
            argument.into_string().map_err(|argument| {
                format!(
                    "the argument `{}` cannot be sent to the node service (not UTF-8)",
                    argument.to_string_lossy()
                )
            })
        })
        .collect()
}

/// `path` made absolute against the caller's working directory (by its text, as a local
/// run reads it).
fn absolute(path: &OsStr) -> Result<OsString, String> {
    host_path::absolute(Path::new(path))
        .map(PathBuf::into_os_string)
        .map_err(|e| {
            format!(
                "cannot read the working directory, for {}: {}",
                Path::new(path).display(),
                describe(&e)
            )
        })
}

/// The caller's values of the `--pass-env` names. As in a local run, a name the caller
/// does not have, or whose value is not UTF-8, is not passed.
fn passed_values(names: &[String]) -> BTreeMap<String, String> {
    names
        .iter()
        .filter_map(|name| Some((name.clone(), std::env::var(name).ok()?)))
        .collect()
}

/// `cannot reach the node service at SOCK: <why>`, the why in words a caller can act on.
fn unreachable(socket: &Path, error: &io::Error) -> String {
    let why = match error.kind() {
        io::ErrorKind::NotFound => "no such socket (is `tollgate serve` running?)".to_owned(),
        io::ErrorKind::ConnectionRefused => {
            "nothing is listening on it (is `tollgate serve` running?)".to_owned()
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied (the node configuration's socket group must be one of yours)"
                .to_owned()
        }
        _ => describe(error),
    };
    format!(
        "cannot reach the node service at {}: {why}",
        socket.display()
    )
}

/// An I/O error in words, without Rust's `(os error N)`.
fn describe(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => error.to_string(),
    }
}

/// The directories to share, each opened as the caller (`O_PATH`, no link followed), in
/// the order the launch frame carries them: every `--share`, then every `--share-ro`. The
/// worker binds a directory only when it is the one the caller's descriptor is, so a caller
/// shares only what it can reach itself (the root worker could reach anything). At most
/// [`mounts::MAX_SHARES`], as in a local run.
fn open_shares(args: &RunArgs) -> Result<Vec<OwnedFd>, String> {
    let given = args.share.len() + args.share_ro.len();
    if given > mounts::MAX_SHARES {
        return Err(format!(
            "{given} directories shared: at most {} can be; share a common parent instead",
            mounts::MAX_SHARES
        ));
    }
    let flags = args.share.iter().map(|path| ("--share", path));
    let flags = flags.chain(args.share_ro.iter().map(|path| ("--share-ro", path)));
    flags
        .map(|(flag, path)| {
            host_path::open_dir(path).map_err(|error| match error.raw_os_error() {
                Some(libc::ELOOP) => format!(
                    "{flag} {}: a symbolic link is in the path; give the real path",
                    path.display()
                ),
                _ => flag_error(flag, path, &error),
            })
        })
        .collect()
}

/// The output files, opened or checked as the caller before anything is launched, so a
/// bad path fails first, as in a local run.
struct Outputs {
    audit: Option<File>,
    log: Option<File>,
    summary: Option<SummaryFile>,
}

impl Outputs {
    fn open(args: &RunArgs) -> Result<Outputs, String> {
        let audit = args
            .audit
            .as_deref()
            .map(|path| open_appended("--audit", path))
            .transpose()?;
        let summary = args
            .summary
            .as_deref()
            .map(SummaryFile::check)
            .transpose()?;
        let log = args
            .log
            .as_deref()
            .map(|path| open_log(path, audit.as_ref(), summary.as_ref()))
            .transpose()?;
        Ok(Outputs {
            audit,
            log,
            summary,
        })
    }
}

/// Opens `--log` like `--audit`, refusing the file another output is (its lines would mix
/// into JSON), as a local run does.
fn open_log(
    path: &Path,
    audit: Option<&File>,
    summary: Option<&SummaryFile>,
) -> Result<File, String> {
    let log = open_appended("--log", path)?;
    let error = |e: io::Error| flag_error("--log", path, &e);
    let id = host_path::file_id(log.as_fd()).map_err(error)?;
    let audit_id = audit
        .map(|file| host_path::file_id(file.as_fd()))
        .transpose()
        .map_err(error)?;
    let summary_id = summary
        .map(SummaryFile::existing_id)
        .transpose()
        .map_err(error)?
        .flatten();
    for (flag, other) in [("--audit", audit_id), ("--summary", summary_id)] {
        if other == Some(id) {
            return Err(format!(
                "--log {}: it is the {flag} file too; give tollgate's log a file of its own",
                path.display()
            ));
        }
    }
    Ok(log)
}

fn flag_error(flag: &str, path: &Path, error: &io::Error) -> String {
    format!("{flag} {}: {}", path.display(), describe(error))
}

/// Opens `path` for appending as the caller (created 0600: records name destinations): a
/// regular file, not a link (`O_NOFOLLOW`), never a FIFO that would hang the open.
fn open_appended(flag: &str, path: &Path) -> Result<File, String> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_WRONLY
            | OFlag::O_APPEND
            | OFlag::O_CREAT
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC
            | OFlag::O_NOCTTY
            | OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .map_err(|errno| match errno {
        nix::errno::Errno::ELOOP => format!(
            "{flag} {}: a symbolic link; give the file itself",
            path.display()
        ),
        // What opening a FIFO without a reader (or a device without a driver) says.
        nix::errno::Errno::ENXIO => format!("{flag} {}: not a regular file", path.display()),
        errno => flag_error(flag, path, &errno.into()),
    })?;
    let stat = host_path::stat(fd.as_fd()).map_err(|e| flag_error(flag, path, &e))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(format!("{flag} {}: not a regular file", path.display()));
    }
    let file = File::from(fd);
    // Back to blocking writes, which is what the worker expects of the descriptor.
    let flags = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| flag_error(flag, path, &e.into()))?;
    nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK),
    )
    .map_err(|e| flag_error(flag, path, &e.into()))?;
    Ok(file)
}

/// Where `--summary` goes: its directory, checked writable by the caller before the launch;
/// the document is written to a fresh file there and renamed over the name, as a local run
/// does (a reader never sees half of it).
struct SummaryFile {
    dir: OwnedFd,
    name: OsString,
    shown: PathBuf,
}

impl SummaryFile {
    fn check(path: &Path) -> Result<SummaryFile, String> {
        let shown = host_path::absolute(path).map_err(|e| flag_error("--summary", path, &e))?;
        let (Some(parent), Some(name)) = (shown.parent(), shown.file_name()) else {
            return Err(format!("--summary {}: give a file name", path.display()));
        };
        let dir = nix::fcntl::open(
            parent,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| flag_error("--summary", parent, &e.into()))?;
        nix::unistd::faccessat(
            &dir,
            ".",
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            AtFlags::empty(),
        )
        .map_err(|e| flag_error("--summary", parent, &e.into()))?;
        let summary = SummaryFile {
            dir,
            name: name.to_owned(),
            shown,
        };
        // Something already under the name must be a file a rename may replace.
        if let Some(stat) = summary.existing().map_err(|e| summary.error(&e))? {
            if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(format!(
                    "--summary {}: something other than a regular file is there",
                    summary.shown.display()
                ));
            }
        }
        Ok(summary)
    }

    /// What is under the name now, if anything (a link is not followed).
    fn existing(&self) -> io::Result<Option<libc::stat>> {
        match nix::sys::stat::fstatat(
            &self.dir,
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(stat) => Ok(Some(stat)),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(errno) => Err(errno.into()),
        }
    }

    fn existing_id(&self) -> io::Result<Option<host_path::FileId>> {
        Ok(self.existing()?.map(|stat| (stat.st_dev, stat.st_ino)))
    }

    fn error(&self, error: &io::Error) -> String {
        flag_error("--summary", &self.shown, error)
    }

    /// Writes `document` (pretty JSON and a newline, as a local run writes its summary);
    /// the message to print when it cannot.
    fn write(&self, document: Option<&serde_json::Value>) -> Result<(), String> {
        let cannot =
            |why: String| format!("cannot write the summary {}: {why}", self.shown.display());
        let document = document.ok_or_else(|| cannot("the node service sent no summary".into()))?;
        let mut text = serde_json::to_string_pretty(document).map_err(|e| cannot(e.to_string()))?;
        text.push('\n');
        host_path::replace_in(self.dir.as_fd(), &self.name, text.as_bytes())
            .map_err(|e| cannot(describe(&e)))
    }
}

/// The caller's terminal settings with `--tty`. The worker puts the terminal in raw mode
/// and restores it; should it die first (the service killed, the node out of memory), the
/// terminal is restored here, so the caller's shell is not left unusable.
struct Terminal {
    /// The caller's stdin (a copy of the descriptor).
    fd: OwnedFd,
    saved: nix::sys::termios::Termios,
}

impl Terminal {
    /// `stdin`'s settings, when it is a terminal.
    fn save(stdin: BorrowedFd<'_>) -> Option<Terminal> {
        let saved = nix::sys::termios::tcgetattr(stdin).ok()?;
        let fd = stdin.try_clone_to_owned().ok()?;
        Some(Terminal { fd, saved })
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        use nix::sys::termios::{tcgetattr, tcsetattr, SetArg};
        // Only when it differs: a background client setting its terminal would be stopped.
        if tcgetattr(&self.fd).is_ok_and(|now| now != self.saved) {
            let _ = tcsetattr(&self.fd, SetArg::TCSADRAIN, &self.saved);
        }
    }
}

/// The signals a caller passes on (the protocol's list).
const FORWARDED: [Signal; 7] = crate::serve::wire::PASSED_SIGNALS;

/// The forwarded signals, blocked in this thread (the client has no other) and read from a
/// signalfd. The mask is never lifted: the process exits once the run ends, and lifting
/// it would let a signal that came meanwhile kill it with the wrong status.
struct Signals {
    fd: SignalFd,
}

impl Signals {
    fn block() -> nix::Result<Signals> {
        let mut mask = SigSet::empty();
        for signal in FORWARDED {
            mask.add(signal);
        }
        mask.thread_block()?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        Ok(Signals { fd })
    }

    /// Sends every pending signal on as a `Signal` frame. A failed send is not an error
    /// here: a service that went away is seen as the end of the stream.
    fn forward(&self, stream: &UnixStream) -> Result<(), String> {
        while let Some(info) = self
            .fd
            .read_signal()
            .map_err(|e| format!("cannot read the signals to pass on: {e}"))?
        {
            let frame = wire::encode(&ClientMessage::Signal {
                signal: info.ssi_signo as i32,
            });
            let _ = fds::send_with_fds(stream, &frame, &[]);
        }
        Ok(())
    }
}

/// What the caller is told when the service goes away mid-run.
const GONE: &str = "the node service closed the connection before the command finished";

/// Passes signals on until the service's answer: `Refused` or `Exited` (past `Started`).
fn wait(stream: &UnixStream, signals: &Signals) -> Result<ServiceMessage, String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut ready = [
            PollFd::new(signals.fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(stream.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut ready, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(format!("cannot wait for the node service: {errno}")),
        }
        let [signal, service] =
            ready.map(|fd| !fd.revents().unwrap_or(PollFlags::empty()).is_empty());
        if signal {
            signals.forward(stream)?;
        }
        if !service {
            continue;
        }
        match wire::read_frame::<ServiceMessage>(&mut &*stream) {
            Ok(ServiceMessage::Started { .. }) => {}
            Ok(answer) => return Ok(answer),
            Err(FrameError::Closed) => return Err(GONE.into()),
            Err(FrameError::Io(error))
                if matches!(
                    error.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                ) =>
            {
                return Err(GONE.into())
            }
            Err(error) => {
                return Err(format!(
                    "the node service sent what this tollgate cannot read ({error}); are both \
                     the same version?"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::os::unix::net::UnixListener;
    use std::thread::JoinHandle;

    #[derive(clap::Parser)]
    struct Line {
        #[command(flatten)]
        args: RunArgs,
    }

    fn parse(argv: &[&str]) -> RunArgs {
        use clap::Parser as _;
        Line::try_parse_from(std::iter::once("run").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    fn os(argv: &[&str]) -> Vec<OsString> {
        argv.iter().map(OsString::from).collect()
    }

    /// A directory of the test's own, removed at the end.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("tollgate-connect-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
        fn text(&self, name: &str) -> String {
            self.path(name).to_str().unwrap().to_owned()
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The launch the fake service received.
    struct Received {
        request: LaunchRequest,
        fds: Vec<OwnedFd>,
    }

    /// A stand-in for `tollgate serve` on a real socket: reads the launch (and its
    /// descriptors), then lets `answer` do the rest.
    fn fake_service(
        socket: &Path,
        answer: impl FnOnce(&Received, &mut UnixStream) + Send + 'static,
    ) -> JoinHandle<Received> {
        let listener = UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // A client that never answers fails the test instead of hanging it.
            let deadline = Some(std::time::Duration::from_secs(60));
            stream.set_read_timeout(deadline).unwrap();
            let (body, fds) =
                fds::recv_frame_with_fds_blocking(&stream, 5 + mounts::MAX_SHARES).unwrap();
            let ClientMessage::Launch(request) = wire::decode(&body).unwrap() else {
                panic!("the first frame is not a launch");
            };
            let received = Received { request, fds };
            answer(&received, &mut stream);
            received
        })
    }

    /// Pipes standing in for the caller's stdin (holding `typed`, then its end), stdout and
    /// stderr; the test keeps the other ends.
    struct Stdio {
        stdin: File,
        stdout: (File, Option<File>),
        stderr: (File, Option<File>),
    }
    fn pipe() -> (File, File) {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        (File::from(read), File::from(write))
    }
    impl Stdio {
        fn new(typed: &str) -> Stdio {
            let (stdin, mut typing) = pipe();
            typing.write_all(typed.as_bytes()).unwrap();
            let (out_read, out_write) = pipe();
            let (err_read, err_write) = pipe();
            Stdio {
                stdin,
                stdout: (out_read, Some(out_write)),
                stderr: (err_read, Some(err_write)),
            }
        }
        fn fds(&self) -> [BorrowedFd<'_>; 3] {
            [
                self.stdin.as_fd(),
                self.stdout.1.as_ref().unwrap().as_fd(),
                self.stderr.1.as_ref().unwrap().as_fd(),
            ]
        }
        /// What the command wrote to stdout and stderr (once every copy of their write ends
        /// is closed).
        fn written(self) -> (String, String) {
            let read = |(mut reader, writer): (File, Option<File>)| {
                drop(writer);
                let mut text = String::new();
                reader.read_to_string(&mut text).unwrap();
                text
            };
            (read(self.stdout), read(self.stderr))
        }
    }

    /// Runs the client in this thread, restoring the signal mask it leaves blocked.
    fn client(socket: &Path, argv: &[&str], stdio: &Stdio) -> Result<Ending, String> {
        let before = SigSet::thread_get_mask().unwrap();
        let ending = launch(socket, &parse(argv), os(argv), stdio.fds());
        before.thread_set_mask().unwrap();
        ending
    }

    fn exited(stream: &mut UnixStream, status: i32, summary: Option<serde_json::Value>) {
        wire::write_frame(stream, &ServiceMessage::Exited { status, summary }).unwrap();
    }

    /// A copy of a received descriptor, as a file.
    fn file(fd: &OwnedFd) -> File {
        File::from(fd.try_clone().unwrap())
    }

    #[test]
    fn the_command_gets_the_callers_descriptors_and_the_caller_its_status() {
        let scratch = Scratch::new("launch");
        let socket = scratch.path("socket");
        let audit = scratch.text("audit.jsonl");
        let service = fake_service(&socket, |received, stream| {
            let [stdin, stdout, stderr, audit] = &received.fds[..] else {
                panic!("{} descriptors", received.fds.len());
            };
            let mut typed = String::new();
            file(stdin).read_to_string(&mut typed).unwrap();
            writeln!(file(stdout), "out: {typed}").unwrap();
            writeln!(file(stderr), "err").unwrap();
            writeln!(file(audit), "{{\"type\":\"x\"}}").unwrap();
            let started = ServiceMessage::Started {
                execution: "e1".into(),
            };
            wire::write_frame(stream, &started).unwrap();
            exited(stream, 7, None);
        });
        let stdio = Stdio::new("typed");
        let argv = [
            "--connect",
            socket.to_str().unwrap(),
            "--pass-env",
            "PATH",
            "--pass-env",
            "TOLLGATE_TEST_SURELY_UNSET",
            "--audit",
            &audit,
            "--",
            "/usr/bin/echo",
            "--connect",
            "x",
        ];
        let ending = client(&socket, &argv, &stdio).unwrap();
        assert_eq!((ending.status, ending.message), (7, None));
        let received = service.join().unwrap();
        assert_eq!(received.request.args, argv[2..]);
        assert_eq!(
            received.request.pass_env,
            BTreeMap::from([("PATH".to_owned(), std::env::var("PATH").unwrap())])
        );
        assert!(received.request.audit && !received.request.log);
        drop(received);
        assert_eq!(stdio.written(), ("out: typed\n".into(), "err\n".into()));
        assert_eq!(
            std::fs::read_to_string(&audit).unwrap(),
            "{\"type\":\"x\"}\n"
        );
    }

    #[test]
    fn each_shared_directory_goes_as_the_callers_descriptor_share_before_share_ro() {
        let scratch = Scratch::new("shares");
        let socket = scratch.path("socket");
        let (read_only, read_write) = (scratch.path("ro"), scratch.path("rw"));
        for dir in [&read_only, &read_write] {
            std::fs::create_dir(dir).unwrap();
        }
        let service = fake_service(&socket, |_, stream| exited(stream, 0, None));
        let stdio = Stdio::new("");
        let argv = [
            "--share-ro",
            read_only.to_str().unwrap(),
            "--share",
            read_write.to_str().unwrap(),
            "--",
            "/bin/true",
        ];
        let ending = client(&socket, &argv, &stdio).unwrap();
        assert_eq!(ending.status, 0);
        let received = service.join().unwrap();
        assert_eq!(received.request.shares, 2);
        let ids: Vec<_> = received.fds[3..]
            .iter()
            .map(|fd| host_path::file_id(fd.as_fd()).unwrap())
            .collect();
        let id =
            |dir: &Path| host_path::file_id(host_path::open_dir(dir).unwrap().as_fd()).unwrap();
        assert_eq!(ids, [id(&read_write), id(&read_only)]);
    }

    #[test]
    fn signals_the_caller_gets_are_sent_on_and_do_not_kill_it() {
        let scratch = Scratch::new("signals");
        let socket = scratch.path("socket");
        // SAFETY: pthread_self has no preconditions.
        let caller = unsafe { libc::pthread_self() };
        let service = fake_service(&socket, move |_, stream| {
            // The launch came, so the client has these blocked: they wait for its signalfd.
            for signal in [libc::SIGUSR1, libc::SIGINT, libc::SIGWINCH] {
                // SAFETY: the client thread is alive until this service answers.
                assert_eq!(unsafe { libc::pthread_kill(caller, signal) }, 0);
            }
            let mut got = Vec::new();
            while got.len() < 3 {
                match wire::read_frame(&mut &*stream).unwrap() {
                    ClientMessage::Signal { signal } => got.push(signal),
                    other => panic!("{other:?}"),
                }
            }
            got.sort_unstable();
            assert_eq!(got, [libc::SIGINT, libc::SIGUSR1, libc::SIGWINCH]);
            exited(stream, 130, None);
        });
        let stdio = Stdio::new("");
        let ending = client(&socket, &["--", "/bin/true"], &stdio).unwrap();
        assert_eq!(ending.status, 130);
        service.join().unwrap();
    }

    #[test]
    fn a_refusal_is_printed_with_its_status() {
        let scratch = Scratch::new("refused");
        let socket = scratch.path("socket");
        let service = fake_service(&socket, |_, stream| {
            let refused = ServiceMessage::Refused {
                status: 125,
                message: "team data-eng is not yours to launch".into(),
            };
            wire::write_frame(stream, &refused).unwrap();
        });
        let stdio = Stdio::new("");
        let ending = client(&socket, &["--", "/bin/true"], &stdio).unwrap();
        assert_eq!(ending.status, 125);
        assert_eq!(
            ending.message.as_deref(),
            Some("team data-eng is not yours to launch")
        );
        service.join().unwrap();
    }

    #[test]
    fn a_service_gone_before_the_end_is_a_tollgate_error() {
        let scratch = Scratch::new("gone");
        let socket = scratch.path("socket");
        let service = fake_service(&socket, |_, stream| {
            let started = ServiceMessage::Started {
                execution: "e1".into(),
            };
            wire::write_frame(stream, &started).unwrap();
        });
        let stdio = Stdio::new("");
        let ending = client(&socket, &["--", "/bin/true"], &stdio);
        assert_eq!(ending.unwrap_err(), GONE);
        service.join().unwrap();
    }

    #[test]
    fn nothing_listening_is_said_plainly() {
        let scratch = Scratch::new("unreachable");
        let socket = scratch.path("socket");
        let stdio = Stdio::new("");
        let message = client(&socket, &["--", "/bin/true"], &stdio).unwrap_err();
        assert_eq!(
            message,
            format!(
                "cannot reach the node service at {}: no such socket (is `tollgate serve` \
                 running?)",
                socket.display()
            )
        );
        drop(UnixListener::bind(&socket).unwrap());
        let message = client(&socket, &["--", "/bin/true"], &stdio).unwrap_err();
        assert!(message.ends_with("nothing is listening on it (is `tollgate serve` running?)"));
    }

    #[test]
    fn the_summary_is_written_by_the_caller_whole() {
        let scratch = Scratch::new("summary");
        let socket = scratch.path("socket");
        let summary = scratch.path("summary.json");
        std::fs::write(&summary, "old").unwrap();
        let document = serde_json::json!({"execution": "e1", "exit_status": 3});
        let sent = document.clone();
        let service = fake_service(&socket, move |_, stream| exited(stream, 3, Some(sent)));
        let stdio = Stdio::new("");
        let argv = ["--summary", summary.to_str().unwrap(), "--", "/bin/true"];
        let ending = client(&socket, &argv, &stdio).unwrap();
        assert_eq!((ending.status, ending.message), (3, None));
        service.join().unwrap();
        let written = std::fs::read_to_string(&summary).unwrap();
        assert_eq!(
            written,
            serde_json::to_string_pretty(&document).unwrap() + "\n"
        );
        let names: Vec<_> = std::fs::read_dir(&scratch.0)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "a temporary file was left: {names:?}");
    }

    #[test]
    fn bad_output_paths_fail_before_anything_is_launched() {
        let scratch = Scratch::new("outputs");
        // Nothing listens: an output not checked first would be "cannot reach" instead.
        let socket = scratch.path("socket");
        let fifo = scratch.path("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let link = scratch.path("link");
        std::os::unix::fs::symlink(scratch.path("elsewhere"), &link).unwrap();
        let audit = scratch.path("audit.jsonl");
        let missing = scratch.path("missing/summary.json");
        std::fs::create_dir(scratch.path("dir")).unwrap();
        let (fifo, link, audit, missing, dir) = (
            fifo.to_str().unwrap(),
            link.to_str().unwrap(),
            audit.to_str().unwrap(),
            missing.to_str().unwrap(),
            scratch.text("dir"),
        );
        let cases: [(&[&str], String); 6] = [
            (
                &["--audit", fifo],
                format!("--audit {fifo}: not a regular file"),
            ),
            (
                &["--audit", "/dev/null"],
                "--audit /dev/null: not a regular file".into(),
            ),
            (
                &["--log", link],
                format!("--log {link}: a symbolic link; give the file itself"),
            ),
            (
                &["--summary", missing],
                format!(
                    "--summary {}: no such file or directory",
                    scratch.path("missing").display()
                ),
            ),
            (
                &["--summary", &dir],
                format!("--summary {dir}: something other than a regular file is there"),
            ),
            (
                &["--audit", audit, "--log", audit],
                format!(
                    "--log {audit}: it is the --audit file too; give tollgate's log a file of \
                     its own"
                ),
            ),
        ];
        let stdio = Stdio::new("");
        for (options, expected) in cases {
            let argv: Vec<&str> = options.iter().copied().chain(["--", "/bin/true"]).collect();
            assert_eq!(client(&socket, &argv, &stdio).unwrap_err(), expected);
        }
    }

    #[test]
    fn the_arguments_sent_are_the_callers_without_connect() {
        let here = std::env::current_dir().unwrap();
        let given = os(&[
            "--connect=/run/a.sock",
            "--team",
            "t",
            "--connect",
            "/run/b.sock",
            "--audit",
            "audit.jsonl",
            "--log=logs/../tollgate.log",
            "--summary",
            "/srv/summary.json",
            "-t",
            "--",
            "sh",
            "--connect",
            "c",
            "--audit",
            "x",
        ]);
        let audit = format!("{}/audit.jsonl", here.display());
        let log = format!("--log={}/tollgate.log", here.display());
        assert_eq!(
            launch_args(given).unwrap(),
            [
                "--team",
                "t",
                "--audit",
                &audit,
                &log,
                "--summary",
                "/srv/summary.json",
                "-t",
                "--",
                "sh",
                "--connect",
                "c",
                "--audit",
                "x"
            ]
        );
        use std::os::unix::ffi::OsStringExt as _;
        let odd = OsString::from_vec(b"caf\xe9".to_vec());
        let message = launch_args(vec!["--".into(), odd]).unwrap_err();
        assert_eq!(
            message,
            "the argument `caf\u{fffd}` cannot be sent to the node service (not UTF-8)"
        );
    }

    #[test]
    fn a_terminal_left_raw_by_a_dead_worker_is_restored() {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let pty = nix::pty::openpty(None, None).unwrap();
        let before = tcgetattr(&pty.slave).unwrap();
        let terminal = Terminal::save(pty.slave.as_fd()).unwrap();
        let mut raw = before.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &raw).unwrap();
        drop(terminal);
        assert_eq!(tcgetattr(&pty.slave).unwrap(), before);
        assert!(Terminal::save(Stdio::new("").stdin.as_fd()).is_none());
    }
}
