//! The worker process: compiles one team module and evaluates it on each input it is sent,
//! under limits that make any excess its own death, never the supervisor's.
//!
//! Started by the supervisor as `tollgate policy __team-rules-worker` with pipes for stdin
//! and stdout. Before it reads anything it leaves the caller's session, closes every
//! inherited descriptor but the three standard ones, limits its address space to
//! [`ADDRESS_SPACE`] (an allocation past it fails, and Rust aborts on a failed allocation),
//! disables core dumps, drops root for `nobody` with no supplementary groups, then (the
//! credential change clears them) arms `PR_SET_PDEATHSIG` so it dies with the supervisor,
//! sets `no_new_privs` and non-dumpable, and checks its parent is still the supervisor. The module and inputs it
//! receives hold no secret values (the policy's data document names providers only; inputs
//! carry header names, never values).

use std::io::{self, BufReader, BufWriter};

use nix::sys::prctl;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::unistd::{getppid, setgroups, setresgid, setresuid, setsid, Gid, Pid, Uid};
use tollgate_policy::TeamEvaluator as _;

use super::wire::{self, FromWorker, ToWorker};

/// The worker's whole address space. It starts in well under 128 MiB (a debug build); a
/// module that asks regorus for more (`numbers.range(1, 1e8)` is 2.4 GB of values) makes
/// the allocation fail and the worker abort.
pub const ADDRESS_SPACE: u64 = 256 << 20;

/// `nobody`: owns nothing, and no sandbox runs as it by default (they get leased uids).
const NOBODY: u32 = 65534;

/// The supervisor's pid, set by the supervisor: the worker's parent must be that process.
pub const SUPERVISOR_ENV: &str = "TOLLGATE_TEAM_RULES_SUPERVISOR";

/// Runs the worker until its supervisor closes the pipe; the process exit status.
pub fn serve() -> i32 {
    if let Err(error) = confine() {
        eprintln!("tollgate team-rules worker: cannot confine itself: {error}");
        return 125;
    }
    let mut input = BufReader::new(io::stdin().lock());
    let mut output = BufWriter::new(io::stdout().lock());
    let module = match wire::receive::<ToWorker>(&mut input, wire::MAX_REQUEST) {
        Ok(ToWorker::Compile(module)) => module,
        _ => return 125,
    };
    let rules = match module.compile() {
        Ok(rules) => rules,
        Err(error) => {
            let answer = FromWorker::CompileError {
                line: error.line,
                column: error.column,
                message: error.message,
            };
            let _ = wire::send(&mut output, &answer, wire::MAX_ANSWER);
            return 0;
        }
    };
    drop(module);
    if wire::send(&mut output, &FromWorker::Compiled, wire::MAX_ANSWER).is_err() {
        return 0;
    }
    loop {
        let input = match wire::receive::<ToWorker>(&mut input, wire::MAX_REQUEST) {
            Ok(ToWorker::Evaluate(input)) => input,
            // The supervisor closed the pipe (or broke the protocol): done.
            _ => return 0,
        };
        let answer = match rules.evaluate(&input) {
            Ok(outcome) => FromWorker::Outcome(outcome),
            Err(error) => FromWorker::Failed(error),
        };
        match wire::send(&mut output, &answer, wire::MAX_ANSWER) {
            Ok(()) => {}
            // An answer over the limit is the rules' failure, not the protocol's.
            Err(error) if error.kind() == io::ErrorKind::Other => {
                let failed = FromWorker::Failed(format!("its answer is too large: {error}"));
                if wire::send(&mut output, &failed, wire::MAX_ANSWER).is_err() {
                    return 0;
                }
            }
            Err(_) => return 0,
        }
    }
}

fn confine() -> Result<(), String> {
    let supervisor = std::env::var(SUPERVISOR_ENV)
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok())
        .map(Pid::from_raw)
        .ok_or("not started by a tollgate supervisor")?;
    // A session of its own: no controlling terminal to reach.
    let _ = setsid();
    // SAFETY: close_range(2) on the descriptor numbers above stderr; this process holds no
    // Rust object owning any of them (std opens nothing before main).
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if closed != 0 {
        return Err(format!("close_range: {}", io::Error::last_os_error()));
    }
    setrlimit(Resource::RLIMIT_AS, ADDRESS_SPACE, ADDRESS_SPACE)
        .map_err(|e| format!("RLIMIT_AS: {e}"))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| format!("RLIMIT_CORE: {e}"))?;
    setrlimit(Resource::RLIMIT_NOFILE, 16, 16).map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    if Uid::effective().is_root() {
        setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
        let gid = Gid::from_raw(NOBODY);
        setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
        let uid = Uid::from_raw(NOBODY);
        setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
        if Uid::effective().is_root() || nix::unistd::getuid().is_root() {
            return Err("still root after setresuid".into());
        }
    }
    // After the switch: changing credentials clears both of these.
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))?;
    prctl::set_dumpable(false).map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
    // The supervisor may have died before the death signal was armed: then nobody reads.
    if getppid() != supervisor {
        return Err("the supervisor is gone".into());
    }
    Ok(())
}
