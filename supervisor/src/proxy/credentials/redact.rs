//! Keeping echoed secrets away from the sandbox: an upstream that repeats an injected
//! credential back (in a response header, or in the body, e.g. an echo service or an error
//! page quoting the request) has it replaced by [`REDACTED`] before the sandbox sees it.
//!
//! The needles are every secret of the execution and every header value built from one
//! (so `Basic dXNlcjpwYXNz` is caught as well as the password). Bodies are buffered for
//! this (under `max_response_bytes`, which already bounds them) and asked for without
//! compression; see `pipeline`.

use http::{HeaderMap, HeaderValue};

/// What replaces a secret.
pub const REDACTED: &str = "[redacted by tollgate]";

/// Replaces every needle in the header values; returns how many values changed.
pub(crate) fn headers(headers: &mut HeaderMap, needles: &[Vec<u8>]) -> usize {
    let mut changed = 0;
    for value in headers.values_mut() {
        if let Some(clean) = bytes(value.as_bytes(), needles) {
            if let Ok(clean) = HeaderValue::from_bytes(&clean) {
                *value = clean;
                changed += 1;
            } else {
                *value = HeaderValue::from_static(REDACTED);
                changed += 1;
            }
        }
    }
    changed
}

/// `data` with every needle replaced, or `None` when none occurs.
pub(crate) fn bytes(data: &[u8], needles: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut current: Option<Vec<u8>> = None;
    for needle in needles {
        if needle.is_empty() {
            continue;
        }
        let source = current.as_deref().unwrap_or(data);
        if let Some(replaced) = replace_all(source, needle) {
            current = Some(replaced);
        }
    }
    current
}

fn replace_all(data: &[u8], needle: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut start = 0;
    let mut i = 0;
    while i + needle.len() <= data.len() {
        if data[i..].starts_with(needle) {
            let buffer = out.get_or_insert_with(|| Vec::with_capacity(data.len()));
            buffer.extend_from_slice(&data[start..i]);
            buffer.extend_from_slice(REDACTED.as_bytes());
            i += needle.len();
            start = i;
        } else {
            i += 1;
        }
    }
    let mut out = out?;
    out.extend_from_slice(&data[start..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_of_every_needle_is_replaced() {
        let needles = vec![b"Bearer s3cret".to_vec(), b"s3cret".to_vec()];
        let body = b"auth=Bearer s3cret; again s3cret; s3cre";
        let clean = bytes(body, &needles).expect("changed");
        assert_eq!(
            String::from_utf8(clean).expect("utf8"),
            "auth=[redacted by tollgate]; again [redacted by tollgate]; s3cre"
        );
        assert!(bytes(b"nothing here", &needles).is_none());
        let mut map = HeaderMap::new();
        map.insert("x-echo", HeaderValue::from_static("token s3cret"));
        map.insert("x-other", HeaderValue::from_static("fine"));
        assert_eq!(headers(&mut map, &needles), 1);
        assert_eq!(map["x-echo"], "token [redacted by tollgate]");
    }
}
