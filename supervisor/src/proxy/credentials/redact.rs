//! Keeping echoed secrets away from the sandbox: an upstream that repeats an injected
//! credential back (in a response header, or in the body, e.g. an echo service or an error
//! page quoting the request) has it replaced by [`REDACTED`] before the sandbox sees it.
//!
//! The needles ([`Needles`]) are every secret of the execution, every header value built from
//! one (so `Basic dXNlcjpwYXNz` is caught as well as the password) and the bare base64 token
//! of Basic credentials, each found in any JSON or URL spelling. Every header is searched,
//! its name as well as its value (`Location`, `Set-Cookie` and the rest alike), and so is
//! every trailer; the reason phrase never reaches the sandbox at all (tollgate sends the
//! standard one). Bodies are asked for without compression (see `pipeline`) and searched
//! whole when they are buffered (under `max_response_bytes`, which already bounds them), or
//! chunk by chunk as they stream ([`stream`]).

pub(crate) mod stream;

pub(crate) use super::needles::Needles;
use http::{HeaderMap, HeaderValue};

/// What replaces a secret.
pub const REDACTED: &str = "[redacted by tollgate]";

/// Replaces every needle in the header values, and drops a header whose name holds one;
/// returns how many headers changed.
pub(crate) fn headers(headers: &mut HeaderMap, needles: &Needles) -> usize {
    if needles.is_empty() {
        return 0;
    }
    let mut changed = 0;
    let named: Vec<_> = headers
        .keys()
        .filter(|name| needles.found_in(name.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in named {
        changed += headers.get_all(&name).iter().count();
        headers.remove(&name);
    }
    for value in headers.values_mut() {
        if let Some(clean) = bytes(value.as_bytes(), needles) {
            *value = HeaderValue::from_bytes(&clean)
                .unwrap_or_else(|_| HeaderValue::from_static(REDACTED));
            changed += 1;
        }
    }
    changed
}

/// `data` with every needle replaced, or `None` when none occurs.
pub(crate) fn bytes(data: &[u8], needles: &Needles) -> Option<Vec<u8>> {
    needles.replace(data, REDACTED.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_of_every_needle_is_replaced() {
        let needles = Needles::new(vec![b"Bearer s3cret".to_vec(), b"s3cret".to_vec()]);
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
        map.insert("location", HeaderValue::from_static("/cb?t=s%33cret"));
        map.append("set-cookie", HeaderValue::from_static("a=1"));
        map.append("set-cookie", HeaderValue::from_static("sid=s3cret"));
        assert_eq!(headers(&mut map, &needles), 3);
        assert_eq!(map["x-echo"], "token [redacted by tollgate]");
        assert_eq!(map["location"], "/cb?t=[redacted by tollgate]");
        let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "sid=[redacted by tollgate]"]);
        assert_eq!(map["x-other"], "fine");
    }

    #[test]
    fn a_header_named_after_a_secret_is_dropped() {
        let needles = Needles::new(vec![b"tok3n".to_vec()]);
        let mut map = HeaderMap::new();
        map.insert("x-tok3n", HeaderValue::from_static("1"));
        map.insert("x-fine", HeaderValue::from_static("1"));
        assert_eq!(headers(&mut map, &needles), 1);
        assert!(map.get("x-tok3n").is_none());
        assert!(map.get("x-fine").is_some());
    }
}
