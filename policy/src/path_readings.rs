//! How lenient servers read a path, so `deny_rules` refuse every spelling of a denied path.
//!
//! tollgate sends the normalised path as it is, but the server at the other end may read it
//! differently: Tomcat and Spring drop `;parameters` from each segment (so `/x/..;/admin`
//! is `/admin`), IIS and Windows file systems drop trailing dots and spaces (`/admin./`),
//! servers behind a decoding proxy decode twice (`%252F` is `/`), some treat `\` as `/`.
//! The entry's opt-ins (`allow_path_parameters`, …) let such paths through the *allow*
//! side; a deny rule must still catch them, so it is matched against the path as sent and
//! against [`lenient_reading`]: every one of those readings applied at once.

/// The path as the most lenient server would read it: percent-escapes decoded up to three
/// times, `\` as `/`, each segment cut at its first `;`, trailing dots, spaces, tabs and
/// NULs removed, empty segments dropped, then `.` and `..` resolved.
pub fn lenient_reading(path: &str) -> String {
    let decoded = decode_repeatedly(path, 3).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for raw in decoded.split('/') {
        let segment = raw.split(';').next().unwrap_or("");
        match segment {
            "." => continue,
            ".." => {
                segments.pop();
                continue;
            }
            _ => {}
        }
        let segment = segment.trim_end_matches(['.', ' ', '\t', '\0']);
        if !segment.is_empty() {
            segments.push(segment);
        }
    }
    let mut reading = String::with_capacity(decoded.len() + 1);
    for segment in &segments {
        reading.push('/');
        reading.push_str(segment);
    }
    if reading.is_empty() || (decoded.ends_with('/') && !segments.is_empty()) {
        reading.push('/');
    }
    reading
}

/// `%XX` decoded, `rounds` times over (each round may reveal a new escape: `%2561` → `%61`
/// → `a`). Bytes that do not form UTF-8 stay as `U+FFFD`: they cannot spell a rule's path.
fn decode_repeatedly(path: &str, rounds: usize) -> String {
    let mut text = path.to_owned();
    for _ in 0..rounds {
        if !text.contains('%') {
            break;
        }
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push(high << 4 | low);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        text = String::from_utf8_lossy(&out).into_owned();
    }
    text
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::lenient_reading;

    #[test]
    fn every_lenient_spelling_reads_as_the_plain_path() {
        for spelling in [
            "/admin/y",
            "/admin;x=1/y",
            "/admin;/y",
            "/x/..;/admin/y",
            "/.;/admin/y",
            "/admin./y",
            "/admin../y",
            "/admin%20/y",
            "/admin%09/y",
            "/admin%00/y",
            "/%2561dmin/y",
            "/admin%252Fy",
            "/admin%255Cy",
            "/admin\\y",
            "//admin//y",
            "/admin%2e/y",
            "/x/%2e%2e/admin/y",
            "/x/%252e%252e/admin/y",
        ] {
            assert_eq!(lenient_reading(spelling), "/admin/y", "{spelling}");
        }
    }

    #[test]
    fn ordinary_paths_keep_their_shape() {
        assert_eq!(lenient_reading("/"), "/");
        assert_eq!(lenient_reading("/v1/items/"), "/v1/items/");
        assert_eq!(lenient_reading("/a/../.."), "/");
        assert_eq!(lenient_reading("/file.tar.gz"), "/file.tar.gz");
        assert_eq!(lenient_reading("/100%"), "/100%");
        assert_eq!(lenient_reading("/%zz"), "/%zz");
    }
}
