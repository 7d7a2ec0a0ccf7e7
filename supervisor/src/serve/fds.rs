//! Descriptors over Unix sockets (`SCM_RIGHTS`) and the identity of the process at the other
//! end (`SO_PEERCRED`, `SO_PEERGROUPS`).
//!
//! The caller of the node service hands over its stdin, stdout, stderr and the output files
//! it opened as itself, so the service never opens a path on a caller's behalf and never
//! copies the caller's bytes. The descriptors ride on the first byte of the launch frame;
//! the service takes them from its first read only (with `MSG_CMSG_CLOEXEC`, so no child it
//! spawns inherits one by accident). Whatever else a hostile caller attaches is closed:
//! descriptors on a later part of the frame are dropped by the kernel when read without a
//! control buffer, and a first read that brings more than the service expects, or a
//! control message the kernel had to truncate, closes every descriptor it brought and
//! refuses the frame.

use super::wire::{self, CallerIdentity, FrameError};
use nix::sys::socket::{self, ControlMessage, MsgFlags};
use std::io::{self, IoSlice, Read as _};
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Sends `frame` (header included) on a blocking stream, with `fds` attached to the first
/// `sendmsg`; the rest of the frame follows in as many calls as the socket needs. Never
/// raises `SIGPIPE` (a closed peer is `EPIPE`).
pub fn send_with_fds(stream: &UnixStream, frame: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if frame.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors need at least one byte to travel with",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let mut attached = raw.is_empty();
    let mut sent = 0;
    while sent < frame.len() {
        let control: &[ControlMessage<'_>] = if attached { &[] } else { &rights };
        match socket::sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&frame[sent..])],
            control,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(count) => {
                sent += count;
                attached = true;
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// Reads one frame from the service's side of a launch socket: the 4-byte header and the
/// body it announces (at most [`wire::MAX_FRAME`] bytes, refused before anything is
/// allocated), with the descriptors that came with the frame's first byte. More than
/// `max_fds` descriptors, or a truncated control message, closes them all and refuses the
/// frame. Returns the body (decode it with [`wire::decode`]); `Closed` when the peer closed
/// the connection before the first byte.
pub async fn recv_frame_with_fds(
    stream: &tokio::net::UnixStream,
    max_fds: usize,
) -> Result<(Vec<u8>, Vec<OwnedFd>), FrameError> {
    let mut header = [0u8; 4];
    let (first, fds) = stream
        .async_io(tokio::io::Interest::READABLE, || {
            recv_with_fds(stream.as_fd(), &mut header, max_fds, libc::MSG_DONTWAIT)
        })
        .await?;
    if first == 0 {
        return Err(FrameError::Closed);
    }
    read_exact_async(stream, &mut header[first..]).await?;
    let mut body = vec![0u8; wire::frame_length(header)?];
    read_exact_async(stream, &mut body).await?;
    Ok((body, fds))
}

/// The blocking twin of [`recv_frame_with_fds`], for a blocking `std` stream.
pub fn recv_frame_with_fds_blocking(
    stream: &UnixStream,
    max_fds: usize,
) -> Result<(Vec<u8>, Vec<OwnedFd>), FrameError> {
    let mut header = [0u8; 4];
    let (first, fds) = loop {
        match recv_with_fds(stream.as_fd(), &mut header, max_fds, 0) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    if first == 0 {
        return Err(FrameError::Closed);
    }
    let mut reader = stream;
    reader.read_exact(&mut header[first..])?;
    let mut body = vec![0u8; wire::frame_length(header)?];
    reader.read_exact(&mut body)?;
    Ok((body, fds))
}

/// Fills `buf` from a non-blocking tokio stream; the end of the stream is `UnexpectedEof`.
async fn read_exact_async(stream: &tokio::net::UnixStream, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.readable().await?;
        match stream.try_read(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(count) => buf = &mut buf[count..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// One `recvmsg` into `buf`, with room for `max_fds` descriptors: the bytes read and the
/// descriptors received, or an error (every received descriptor closed) when they were
/// more than `max_fds` or the kernel truncated the control message.
///
/// The control buffer is parsed here rather than by `nix`, which will not walk a truncated
/// one: the descriptors the kernel did install must be found to be closed.
fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    flags: libc::c_int,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let rights_len = u32::try_from(max_fds * size_of::<RawFd>())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"))?;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(rights_len) } as usize;
    // u64 words: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(size_of::<u64>())];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control).
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space as _;
    // SAFETY: `message` points at `iov` (over `buf`) and `control`, both alive and of the
    // lengths given, for the duration of the call.
    let count =
        unsafe { libc::recvmsg(fd.as_raw_fd(), &mut message, flags | libc::MSG_CMSG_CLOEXEC) };
    if count < 0 {
        return Err(io::Error::last_os_error());
    }
    let fds = received_descriptors(&message);
    if message.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > max_fds {
        // `fds` is dropped here: every descriptor that came is closed.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more descriptors than the {max_fds} expected came with the frame"),
        ));
    }
    Ok((count as usize, fds))
}

/// Takes ownership of every descriptor in the `SCM_RIGHTS` messages `recvmsg` left in
/// `message`'s control buffer.
fn received_descriptors(message: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: `message` was filled by a successful recvmsg: the kernel set msg_controllen
    // to what it wrote, and the CMSG_* walk stays inside that.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(message);
        while !header.is_null() {
            let cmsg = &*header;
            if cmsg.cmsg_level == libc::SOL_SOCKET && cmsg.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                let bytes = cmsg.cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for index in 0..bytes / size_of::<RawFd>() {
                    // Each is a descriptor the kernel just installed for us, owned by no one.
                    fds.push(OwnedFd::from_raw_fd(data.add(index).read_unaligned()));
                }
            }
            header = libc::CMSG_NXTHDR(message, header);
        }
    }
    fds
}

/// Who is at the other end of a connected Unix socket, as the kernel recorded it when the
/// peer connected: `SO_PEERCRED` (uid, gid, pid in our PID namespace, 0 if outside it) and
/// `SO_PEERGROUPS` (supplementary groups).
pub fn peer_identity(fd: impl AsFd) -> io::Result<CallerIdentity> {
    let credentials = socket::getsockopt(&fd, socket::sockopt::PeerCredentials)?;
    Ok(CallerIdentity {
        uid: credentials.uid(),
        gid: credentials.gid(),
        pid: credentials.pid(),
        groups: peer_groups(fd.as_fd())?,
    })
}

/// `SO_PEERGROUPS`: the kernel answers `ERANGE` with the length it needs when the buffer is
/// short, so the buffer grows to that and the call is repeated.
fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    const GID: usize = size_of::<libc::gid_t>();
    // Linux's NGROUPS_MAX: no process has more.
    const MOST: usize = 65_536;
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut length = (groups.len() * GID) as libc::socklen_t;
        // SAFETY: the kernel writes at most `length` bytes into `groups` and updates
        // `length`.
        let status = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut length,
            )
        };
        if status == 0 {
            groups.truncate(length as usize / GID);
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        let needed = length as usize / GID;
        if error.raw_os_error() != Some(libc::ERANGE) || needed > MOST {
            return Err(error);
        }
        groups.resize(needed.max(groups.len() * 2), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::wire::{encode, ClientMessage};
    use std::io::Write as _;

    fn launch_frame() -> Vec<u8> {
        encode(&ClientMessage::Signal { signal: 2 })
    }

    /// A pipe: (read end, write end).
    fn pipe() -> (std::fs::File, std::fs::File) {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (read.into(), write.into())
    }

    /// Whether every write end of the pipe `read` reads from is closed, in this process and
    /// everywhere: `POLLHUP` (waited for, so a forked test child holding a copy between
    /// fork and exec cannot make this flaky; a leak fails after the wait).
    fn writers_all_closed(read: &std::fs::File) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(read.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(10_000u16)).unwrap() == 1
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLHUP))
    }

    #[test]
    fn descriptors_arrive_with_the_frame_and_work() {
        let (caller, service) = UnixStream::pair().unwrap();
        let (mut out_read, out_write) = pipe();
        let (_in_read, in_write) = pipe();
        let frame = launch_frame();
        send_with_fds(&caller, &frame, &[out_write.as_fd(), in_write.as_fd()]).unwrap();
        let (body, fds) = recv_frame_with_fds_blocking(&service, 5).unwrap();
        assert_eq!(body, frame[4..]);
        assert_eq!(fds.len(), 2);
        for fd in &fds {
            let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert!(
                nix::fcntl::FdFlag::from_bits_truncate(flags)
                    .contains(nix::fcntl::FdFlag::FD_CLOEXEC),
                "a received descriptor must be close-on-exec"
            );
        }
        let mut received = std::fs::File::from(fds.into_iter().next().unwrap());
        received.write_all(b"through the caller's stdout").unwrap();
        drop((received, out_write));
        let mut text = String::new();
        out_read.read_to_string(&mut text).unwrap();
        assert_eq!(text, "through the caller's stdout");
    }

    #[tokio::test]
    async fn the_async_reader_takes_descriptors_and_a_frame_sent_in_pieces() {
        let (caller, service) = UnixStream::pair().unwrap();
        service.set_nonblocking(true).unwrap();
        let service = tokio::net::UnixStream::from_std(service).unwrap();
        let (_read, write) = pipe();
        let frame = launch_frame();
        // One byte with the descriptor, then the rest of the header and the body apart.
        send_with_fds(&caller, &frame[..1], &[write.as_fd()]).unwrap();
        send_with_fds(&caller, &frame[1..3], &[]).unwrap();
        let sender = std::thread::spawn({
            let caller = caller.try_clone().unwrap();
            let rest = frame[3..].to_vec();
            move || send_with_fds(&caller, &rest, &[]).unwrap()
        });
        let (body, fds) = recv_frame_with_fds(&service, 5).await.unwrap();
        sender.join().unwrap();
        assert_eq!(body, frame[4..]);
        assert_eq!(fds.len(), 1);
        drop(caller);
        assert!(matches!(
            recv_frame_with_fds(&service, 5).await,
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn more_descriptors_than_expected_are_all_closed_and_the_frame_refused() {
        // (expected, sent): 4 fit the control buffer for 3 (alignment), 8 do not and the
        // kernel truncates; 5 for 4 fill a buffer that holds exactly 4, then truncate.
        for (expected, sent) in [(3, 4), (3, 8), (4, 5)] {
            let (caller, service) = UnixStream::pair().unwrap();
            let (read, write) = pipe();
            let copies: Vec<BorrowedFd<'_>> = (0..sent).map(|_| write.as_fd()).collect();
            send_with_fds(&caller, &launch_frame(), &copies).unwrap();
            let refused = recv_frame_with_fds_blocking(&service, expected);
            assert!(
                matches!(&refused, Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::InvalidData),
                "{sent} descriptors: {refused:?}"
            );
            drop(write);
            assert!(
                writers_all_closed(&read),
                "{sent} descriptors: a received copy of the write end is still open"
            );
        }
    }

    #[test]
    fn descriptors_on_a_later_part_of_the_frame_are_dropped() {
        let (caller, service) = UnixStream::pair().unwrap();
        let (read, write) = pipe();
        let frame = launch_frame();
        send_with_fds(&caller, &frame[..4], &[]).unwrap();
        send_with_fds(&caller, &frame[4..], &[write.as_fd()]).unwrap();
        let (body, fds) = recv_frame_with_fds_blocking(&service, 3).unwrap();
        assert_eq!(body, frame[4..]);
        assert!(fds.is_empty());
        drop(write);
        assert!(writers_all_closed(&read));
    }

    #[test]
    fn a_header_announcing_two_gib_is_refused() {
        let (caller, service) = UnixStream::pair().unwrap();
        send_with_fds(&caller, &(2u32 << 30).to_be_bytes(), &[]).unwrap();
        assert!(matches!(
            recv_frame_with_fds_blocking(&service, 3),
            Err(FrameError::TooLarge(length)) if length == 2 << 30
        ));
    }

    #[test]
    fn a_frame_cut_short_is_an_error_not_a_hang() {
        let (caller, service) = UnixStream::pair().unwrap();
        send_with_fds(&caller, &launch_frame()[..6], &[]).unwrap();
        drop(caller);
        assert!(matches!(
            recv_frame_with_fds_blocking(&service, 3),
            Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof
        ));
    }

    #[test]
    fn the_peer_is_this_process() {
        let (caller, service) = UnixStream::pair().unwrap();
        let identity = peer_identity(&service).unwrap();
        assert_eq!(identity.uid, nix::unistd::getuid().as_raw());
        assert_eq!(identity.gid, nix::unistd::getgid().as_raw());
        assert_eq!(identity.pid, std::process::id() as i32);
        let mut ours: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut theirs = identity.groups.clone();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(theirs, ours);
        drop(caller);
    }

    #[test]
    fn a_long_group_list_grows_the_buffer() {
        // A peer with more supplementary groups than the first buffer holds: a python
        // process (as root, which may set them) that connects after setgroups.
        if !nix::unistd::getuid().is_root() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("tollgate-fds-groups-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let script = "import os, socket, sys\n\
                      os.setgroups(range(70000, 70100))\n\
                      s = socket.socket(socket.AF_UNIX)\n\
                      s.connect(sys.argv[1])\n\
                      s.recv(1)\n";
        let mut child = std::process::Command::new("/usr/bin/python3")
            .args(["-c", script])
            .arg(&path)
            .spawn()
            .unwrap();
        let (peer, _) = listener.accept().unwrap();
        let identity = peer_identity(&peer);
        drop(peer);
        child.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut groups = identity.unwrap().groups;
        groups.sort_unstable();
        assert_eq!(groups, (70_000..70_100).collect::<Vec<u32>>());
    }
}
