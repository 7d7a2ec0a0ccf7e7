//! `--tty`: a terminal of the sandbox's own, relayed by the supervisor (like `docker run -t`).
//!
//! The sandbox never holds the caller's terminal as its controlling terminal (it starts a
//! session of its own, see `sandbox::spawn`): from there it could push input into the
//! caller's shell (`TIOCSTI`) or signal the caller's jobs. An interactive command gets a
//! pseudo-terminal instead. Its slave side becomes the command's controlling terminal and its
//! stdin, stdout and stderr; the supervisor copies the caller's stdin to the master and the
//! master to the caller's stdout, puts the caller's terminal in raw mode meanwhile (so keys
//! such as Ctrl-C reach the sandbox's terminal, which signals the sandbox's own processes),
//! and passes window-size changes on.

use nix::sys::termios::{self, SetArg, Termios};
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd, RawFd};
use std::thread::JoinHandle;

/// The sandbox's terminal, and the caller's terminal settings to restore.
pub struct SandboxTerminal {
    master: OwnedFd,
    slave: Option<OwnedFd>,
    /// The caller's stdin settings before raw mode, when stdin is a terminal.
    saved: Option<Termios>,
    output: Option<JoinHandle<()>>,
}

fn stdin() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// The caller's window size, when stdin is a terminal.
fn window_size() -> Option<libc::winsize> {
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize.
    (unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut size) } == 0).then_some(size)
}

impl SandboxTerminal {
    /// Opens a pseudo-terminal with the caller's terminal settings and window size (when
    /// stdin is one).
    pub fn open() -> io::Result<SandboxTerminal> {
        let caller = termios::tcgetattr(stdin()).ok();
        let size = window_size();
        let pty = nix::pty::openpty(size.as_ref(), caller.as_ref())?;
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )?;
        }
        Ok(SandboxTerminal {
            master: pty.master,
            slave: Some(pty.slave),
            saved: caller,
            output: None,
        })
    }

    /// The slave side, for the child (see `sandbox::spawn::ChildSetup::tty`).
    pub fn slave(&self) -> Option<RawFd> {
        self.slave.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// Once the command runs: closes the supervisor's copy of the slave (so the master reads
    /// end when the sandbox's last holder is gone), puts the caller's terminal in raw mode and
    /// starts copying both ways.
    pub fn start_relay(&mut self) -> io::Result<()> {
        self.slave = None;
        if let Some(saved) = &self.saved {
            let mut raw = saved.clone();
            termios::cfmakeraw(&mut raw);
            termios::tcsetattr(stdin(), SetArg::TCSANOW, &raw)?;
        }
        let mut from_sandbox = File::from(self.master.try_clone()?);
        let mut to_sandbox = File::from(self.master.try_clone()?);
        self.output = Some(
            std::thread::Builder::new()
                .name("tollgate-tty-out".into())
                .spawn(move || {
                    let mut out = io::stdout().lock();
                    let mut buffer = [0u8; 16 * 1024];
                    // Ends with EIO once no process holds the slave side.
                    while let Ok(n @ 1..) = from_sandbox.read(&mut buffer) {
                        if out
                            .write_all(&buffer[..n])
                            .and_then(|()| out.flush())
                            .is_err()
                        {
                            break;
                        }
                    }
                })?,
        );
        // Detached: it blocks reading the caller's stdin, and ends with the process.
        std::thread::Builder::new()
            .name("tollgate-tty-in".into())
            .spawn(move || {
                let mut input = io::stdin().lock();
                let mut buffer = [0u8; 4096];
                while let Ok(n @ 1..) = input.read(&mut buffer) {
                    if to_sandbox.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            })?;
        Ok(())
    }

    /// Passes the caller's window size on to the sandbox's terminal (on `SIGWINCH`).
    pub fn resize(&self) {
        if let Some(size) = window_size() {
            // SAFETY: TIOCSWINSZ reads one winsize; the kernel signals the sandbox's
            // foreground process group.
            unsafe { libc::ioctl(self.master.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &size) };
        }
    }

    /// After every process of the execution is dead: waits for the last output to be copied
    /// and gives the caller's terminal its settings back.
    pub fn finish(mut self) {
        if let Some(output) = self.output.take() {
            let _ = output.join();
        }
        self.restore();
    }

    fn restore(&mut self) {
        if let Some(saved) = self.saved.take() {
            let _ = termios::tcsetattr(stdin(), SetArg::TCSANOW, &saved);
        }
    }
}

impl Drop for SandboxTerminal {
    fn drop(&mut self) {
        self.restore();
    }
}
