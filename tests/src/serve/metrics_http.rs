//! Fetching `/metrics` from the service's Unix socket: one HTTP/1.1 GET, the body of a 200
//! answer (chunked or not), for [`super::Exposition`] to parse.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
};

use crate::sandbox::HANG_LIMIT;

/// `GET target` over HTTP/1.1 on a Unix socket; the body of a 200 answer.
pub fn http_get_unix(socket: &Path, target: &str) -> Result<String, String> {
    let mut stream =
        UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(HANG_LIMIT))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send the request: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read the answer: {e}"))?;
    let answer = String::from_utf8(answer).map_err(|_| "an answer that is not UTF-8")?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("an answer without a header end: {answer:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered {status:?}: {body}"));
    }
    let chunked = head.lines().any(|line| {
        let lower = line.to_ascii_lowercase();
        lower.starts_with("transfer-encoding:") && lower.contains("chunked")
    });
    Ok(if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    })
}

/// The body of a chunked transfer coding.
fn dechunk(mut body: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body
            .split_once("\r\n")
            .ok_or("a chunk without a size line")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("a bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("a chunk shorter than its size")?;
        out.push_str(chunk);
        body = rest[size..]
            .strip_prefix("\r\n")
            .ok_or("a chunk without CRLF")?;
    }
}
