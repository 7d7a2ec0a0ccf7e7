//! Socket families the cgroup eBPF hook cannot see, and io_uring, are refused by the child's
//! seccomp filter: `AF_VSOCK` would otherwise reach the hypervisor host past every wall.
//! Only socket creation is attempted here: nothing is ever sent.
//!
//! Needs root.

use tollgate_tests::{
    leaks::SuiteLock,
    sandbox::{Sandbox, NETWORK_POLICY, PYTHON},
    Scratch,
};

const PROBE: &str = r#"
import ctypes, errno, socket
def family(name, fam, typ):
    try:
        socket.socket(fam, typ).close()
        print(name, "created")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
family("vsock", 40, socket.SOCK_STREAM)
family("packet", 17, socket.SOCK_RAW)
family("bluetooth", 31, socket.SOCK_STREAM)
family("can", 29, socket.SOCK_RAW)
family("unix", socket.AF_UNIX, socket.SOCK_STREAM)
family("inet", socket.AF_INET, socket.SOCK_STREAM)
family("inet6", socket.AF_INET6, socket.SOCK_STREAM)
family("netlink", socket.AF_NETLINK, socket.SOCK_RAW)
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
rc = libc.syscall(425, 8, params)
print("io_uring", "created" if rc >= 0 else errno.errorcode.get(ctypes.get_errno()))
"#;

#[test]
fn only_unix_inet_and_netlink_sockets_can_be_created_and_io_uring_is_refused() {
    let _lock = SuiteLock::shared();
    let scratch = Scratch::new("families");
    let policy = scratch.file("policy.yaml", NETWORK_POLICY);
    let finished = Sandbox::new().policy(&policy).run([PYTHON, "-c", PROBE]);
    assert_eq!(finished.code(), 0, "{}", finished.describe());
    let expected = [
        ("vsock", "EAFNOSUPPORT"),
        ("packet", "EAFNOSUPPORT"),
        ("bluetooth", "EAFNOSUPPORT"),
        ("can", "EAFNOSUPPORT"),
        ("unix", "created"),
        ("inet", "created"),
        ("inet6", "created"),
        ("netlink", "created"),
        ("io_uring", "ENOSYS"),
    ];
    for (name, outcome) in expected {
        let line = format!("{name} {outcome}");
        assert!(
            finished.stdout.lines().any(|l| l == line),
            "expected `{line}`:\n{}",
            finished.stdout
        );
    }
}
