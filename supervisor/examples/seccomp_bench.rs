//! What the sandbox's seccomp filter costs one system call: raw system-call loops in a child
//! that installed [`ChildFilters`], beside the same loops in a child without it.
//!
//! The end-to-end view (a Python loop inside `tollgate run` against the host) is
//! `scripts/bench-seccomp.sh`; this one isolates the filter from everything else a sandbox
//! changes, and from the interpreter's own overhead. Rounds alternate between the two
//! children so that a busy machine slows both alike; each figure is the best round, in CPU
//! time. Run as root (installing a filter needs no_new_privs, which the child sets):
//!
//! `cargo run --release -p tollgate --example seccomp_bench [CALLS_PER_ROUND]`

use std::io::{Read as _, Write as _};
use std::os::fd::{FromRawFd as _, RawFd};

use tollgate::sandbox::seccomp::ChildFilters;

const ROUNDS: usize = 15;

/// One iteration of a loop, given the read end of an empty pipe.
type Iteration = fn(RawFd);

/// The loops: a name and one iteration.
const LOOPS: [(&str, Iteration); 4] = [
    ("getppid", |_| unsafe {
        libc::syscall(libc::SYS_getppid);
    }),
    ("ioctl(FIONREAD)", |fd| unsafe {
        let mut n: libc::c_int = 0;
        libc::ioctl(fd, libc::FIONREAD, &mut n);
    }),
    ("personality(query)", |_| unsafe {
        libc::personality(0xffff_ffff);
    }),
    ("socket(AF_UNIX)+close", |_| unsafe {
        let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        libc::close(s);
    }),
];

fn cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Runs every loop once in a forked child (with the filter or not); nanoseconds per call.
fn one_round(filters: Option<&ChildFilters>, calls: u64) -> Vec<f64> {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors; fork from this single-threaded program.
    unsafe { libc::pipe(fds.as_mut_ptr()) };
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        if let Some(filters) = filters {
            // SAFETY: prctl on the calling process.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            filters.apply().expect("install the filter");
        }
        let mut report = String::new();
        for (_, iteration) in LOOPS {
            let start = cpu_ns();
            for _ in 0..calls {
                iteration(fds[0]);
            }
            report.push_str(&format!("{}\n", (cpu_ns() - start) as f64 / calls as f64));
        }
        // SAFETY: the write end of the pipe, owned by this child.
        let mut out = unsafe { std::fs::File::from_raw_fd(fds[1]) };
        let _ = out.write_all(report.as_bytes());
        unsafe { libc::_exit(0) };
    }
    // SAFETY: closing the parent's copy of the write end; reading the read end it owns.
    unsafe { libc::close(fds[1]) };
    let mut text = String::new();
    let _ = unsafe { std::fs::File::from_raw_fd(fds[0]) }.read_to_string(&mut text);
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    text.lines().map(|l| l.parse().expect("a number")).collect()
}

fn main() {
    let calls: u64 = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("CALLS_PER_ROUND is a number"))
        .unwrap_or(2_000_000);
    let filters = ChildFilters::compile().expect("compile the filter");
    let mut best = [[f64::MAX; LOOPS.len()]; 2];
    for _ in 0..ROUNDS {
        for (variant, filters) in [None, Some(&filters)].into_iter().enumerate() {
            for (i, ns) in one_round(filters, calls).into_iter().enumerate() {
                best[variant][i] = best[variant][i].min(ns);
            }
        }
    }
    println!(
        "{:<24} {:>10} {:>12} {:>10}",
        "call", "no filter", "with filter", "added"
    );
    for (i, (name, _)) in LOOPS.iter().enumerate() {
        println!(
            "{:<24} {:>8.1}ns {:>10.1}ns {:>8.1}ns",
            name,
            best[0][i],
            best[1][i],
            best[1][i] - best[0][i]
        );
    }
}
