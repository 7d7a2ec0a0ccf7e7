"""System calls made from inside a tollgate sandbox, with what each returned, as one JSON line.

Run by tests/tests/escape_kernel.rs as `/usr/bin/python3 -c <this file> <request>`, where the
request is a JSON object whose keys pick the sections to run:

  "marked": [[name, number, [args]], ...]  calls the filter must refuse, made in a forked child
                                           that cannot execute them (see `marked` below)
  "plain":  [[name, number, [args]], ...]  calls made as they are (arguments the kernel would
                                           reject with another errno, so the filter's answer
                                           is told apart from the kernel's)
  "allowed": true                          ordinary calls that must keep working
  "keys": true                             real attempts at the kernel keyrings
  "i386": true                             a 32-bit system call (int 0x80) from this process

It prints {"uid": ..., "<section>": {name: outcome}, ...}; an outcome is "ok" or an errno name.
x86-64 system call numbers.
"""

import ctypes
import errno
import fcntl
import json
import mmap
import os
import signal
import socket
import sys
import termios
import threading

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

SYS_SECCOMP = 317
PASSED = "passed-the-filter"


def errno_name(number):
    return errno.errorcode.get(number, "E%d" % number)


def syscall(number, args):
    rc = libc.syscall(ctypes.c_long(number), *[ctypes.c_ulong(a & (2**64 - 1)) for a in args])
    return "ok" if rc >= 0 else errno_name(ctypes.get_errno())


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def install_marker(numbers):
    """A seccomp filter of this process's own: each of `numbers` → SECCOMP_RET_USER_NOTIF.

    It is installed without a listener, so a call that reaches it fails with ENOSYS and is
    never executed. Every filter of the stack sees each call and the action of highest
    precedence wins: tollgate's SECCOMP_RET_ERRNO outranks USER_NOTIF, so a call tollgate
    refuses fails with tollgate's errno, and one tollgate lets through fails with ENOSYS here
    (whatever the kernel's own capability checks or sysctls would have answered).
    """
    LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06
    AUDIT_ARCH_X86_64 = 0xC000003E
    RET_USER_NOTIF, RET_ALLOW = 0x7FC00000, 0x7FFF0000
    numbers = sorted(set(numbers))
    assert 2 * len(numbers) + 1 <= 255, "too many numbers for one jump"
    program = [(LD_W_ABS, 0, 0, 4), (JEQ_K, 0, 2 * len(numbers) + 1, AUDIT_ARCH_X86_64),
               (LD_W_ABS, 0, 0, 0)]
    for number in numbers:
        program += [(JEQ_K, 0, 1, number), (RET_K, 0, 0, RET_USER_NOTIF)]
    program.append((RET_K, 0, 0, RET_ALLOW))
    instructions = (SockFilter * len(program))(*[SockFilter(*i) for i in program])
    fprog = SockFprog(len(program), instructions)
    return syscall(SYS_SECCOMP, [1, 0, ctypes.addressof(fprog)])  # SECCOMP_SET_MODE_FILTER


def in_child(work):
    """Runs `work()` (returning a JSON-able value) in a forked child; returns its value."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            value = work()
        except BaseException as e:  # a probe that breaks reports how, never hangs
            value = {"raised": repr(e)}
        data = json.dumps(value).encode()
        while data:
            data = data[os.write(w, data):]
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"raised": "no answer"}')


def marked(calls):
    def work():
        installed = install_marker([number for _, number, _ in calls])
        if installed != "ok":
            return {"marker filter": installed}
        outcomes = {"marker filter": "ok"}
        for name, number, args in calls:
            outcome = syscall(number, args)
            outcomes[name] = PASSED if outcome == "ENOSYS" else outcome
        return outcomes
    return in_child(work)


def plain(calls):
    return {name: syscall(number, args) for name, number, args in calls}


def attempt(action):
    try:
        action()
        return "ok"
    except OSError as e:
        return errno_name(e.errno)


def personality(persona):
    libc.personality.restype = ctypes.c_int
    rc = libc.personality(ctypes.c_ulong(persona))
    return "ok" if rc != -1 else errno_name(ctypes.get_errno())


def allowed():
    out = {}
    out["socketpair(AF_UNIX, SOCK_STREAM)"] = attempt(
        lambda: [s.close() for s in socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)])
    out["socketpair(AF_UNIX, SOCK_DGRAM)"] = attempt(
        lambda: [s.close() for s in socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)])
    out["personality(0xffffffff)"] = personality(0xFFFFFFFF)
    # Changing the persona is done in children, so this process keeps the default one.
    for name, persona in [("PER_LINUX", 0), ("PER_LINUX32", 0x0008), ("UNAME26", 0x0020000),
                          ("PER_LINUX32|UNAME26", 0x0020008)]:
        out["personality(%s)" % name] = in_child(lambda p=persona: personality(p))
    ran = []
    thread = threading.Thread(target=lambda: ran.append(True))
    thread.start()
    thread.join()
    out["thread"] = "ok" if ran else "did-not-run"
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    out["fork"] = "ok" if os.waitstatus_to_exitcode(status) == 7 else "status-%d" % status
    r, w = os.pipe()
    out["ioctl(FIONREAD)"] = attempt(lambda: fcntl.ioctl(r, termios.FIONREAD, b"\0\0\0\0"))
    out["ioctl(TCGETS) on a pipe"] = attempt(lambda: fcntl.ioctl(r, termios.TCGETS, b"\0" * 64))
    os.close(r)
    os.close(w)
    # ptrace of one's own child: debuggers and profilers (see the filter's table for why).
    libc.ptrace.restype = ctypes.c_long
    out["ptrace(PTRACE_TRACEME)"] = in_child(
        lambda: "ok" if libc.ptrace(0, 0, None, None) == 0 else errno_name(ctypes.get_errno()))
    out["memfd_create"] = attempt(lambda: os.close(os.memfd_create("probe")))
    # Newer forms of allowed calls: fchmodat2 (glibc 2.39 uses it for lchmod) and futex_wake.
    path = "/tmp/escape-kernel-probe-%d" % os.getpid()
    open(path, "w").close()
    name = ctypes.create_string_buffer(path.encode())
    out["fchmodat2"] = syscall(452, [-100, ctypes.addressof(name), 0o600, 0])  # AT_FDCWD
    os.unlink(path)
    word = ctypes.c_uint32(0)
    out["futex_wake"] = syscall(454, [ctypes.addressof(word), 0xFFFFFFFF, 1, 2])
    out["seccomp (a filter of the program's own)"] = in_child(lambda: install_marker([250]))
    return out


KEY_SPEC_USER_KEYRING = -4
KEYCTL_GET_KEYRING_ID = 0


def keys():
    """Real attempts: on a kernel that lets them through, these create keys for this uid."""
    kind, description = ctypes.c_char_p(b"user"), ctypes.c_char_p(b"tollgate-probe")
    payload = b"left for the next execution"
    out = {}
    rc = libc.syscall(ctypes.c_long(248), kind, description, ctypes.c_char_p(payload),
                      ctypes.c_size_t(len(payload)), ctypes.c_int(KEY_SPEC_USER_KEYRING))
    out["add_key"] = "ok" if rc >= 0 else errno_name(ctypes.get_errno())
    out["keyctl(KEYCTL_GET_KEYRING_ID, user keyring, create)"] = syscall(
        250, [KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 1])
    rc = libc.syscall(ctypes.c_long(249), kind, description, None, ctypes.c_int(0))
    out["request_key"] = "ok" if rc >= 0 else errno_name(ctypes.get_errno())
    return out


def i386_call():
    """getpid through `int 0x80` (the i386 entry, AUDIT_ARCH_I386), in a child: how it ended."""
    pid = os.fork()
    if pid == 0:
        page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(b"\xb8\x14\x00\x00\x00\xcd\x80\xc3")  # mov eax, 20; int 0x80; ret
        call = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
        os._exit(0 if call() > 0 else 1)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "killed-" + signal.Signals(os.WTERMSIG(status)).name
    return "ok" if os.waitstatus_to_exitcode(status) == 0 else "failed"


def main():
    request = json.loads(sys.argv[1])
    result = {"uid": os.getuid()}
    if "marked" in request:
        result["marked"] = marked(request["marked"])
    if "plain" in request:
        result["plain"] = plain(request["plain"])
    if request.get("allowed"):
        result["allowed"] = allowed()
    if request.get("keys"):
        result["keys"] = keys()
    if request.get("i386"):
        result["i386"] = {"getpid": i386_call()}
    print(json.dumps(result), flush=True)


main()
