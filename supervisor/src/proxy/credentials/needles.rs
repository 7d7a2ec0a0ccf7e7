//! The secrets redaction looks for, found however an upstream spelled them.
//!
//! An upstream that echoes a credential rarely echoes it byte for byte: a JSON encoder writes
//! `/` as `\/` or `\u002f`, a redirect URL percent-encodes `:` and `+`, a form writes a space
//! as `+`. Listing every spelling of every secret would not do: each character may be spelled
//! its own way (`a\/b%2Bc`), so the lists grow exponentially. Instead a secret matches
//! wherever the text *decodes* to it character by character, each character written as
//! itself, as `%XX` (either case), as `\u00XX` (either case, ASCII only), as a JSON short
//! escape (`\/`, `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`) or, for a space, as `+`.
//!
//! One pass over the text finds every secret: a table of the bytes that can begin a spelling
//! of any secret skips the rest, so redaction costs about one table lookup per byte. This is
//! best effort, as `docs/policy.md` says: reversed, hex-encoded, compressed or otherwise
//! transformed echoes are not found; what protects a credential is its scope.

/// Every secret of an execution, longest first (so `Bearer x` is replaced whole, not `x`
/// inside it), with the table of bytes that may start a spelling of one.
#[derive(Debug, Clone)]
pub(crate) struct Needles {
    secrets: Vec<Vec<u8>>,
    may_start: [bool; 256],
}

impl Default for Needles {
    fn default() -> Self {
        Needles::new(Vec::new())
    }
}

impl Needles {
    /// The needles for `secrets` (empty ones ignored, duplicates once).
    pub fn new(mut secrets: Vec<Vec<u8>>) -> Needles {
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        let mut may_start = [false; 256];
        for secret in &secrets {
            may_start[usize::from(secret[0])] = true;
            if secret[0] == b' ' {
                may_start[usize::from(b'+')] = true;
            }
            may_start[usize::from(b'%')] = true;
            may_start[usize::from(b'\\')] = true;
        }
        Needles { secrets, may_start }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Whether some spelling of some secret occurs in `data`.
    pub fn found_in(&self, data: &[u8]) -> bool {
        (0..data.len()).any(|at| self.match_at(data, at).is_some())
    }

    /// `data` with every spelling of every secret replaced by `with`, or `None` when none
    /// occurs. Matches are taken leftmost first, each the longest there.
    pub fn replace(&self, data: &[u8], with: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        let mut at = 0;
        while at < data.len() {
            match self.match_at(data, at) {
                Some(length) => {
                    let buffer = out.get_or_insert_with(|| Vec::with_capacity(data.len()));
                    buffer.extend_from_slice(&data[copied..at]);
                    buffer.extend_from_slice(with);
                    at += length;
                    copied = at;
                }
                None => at += 1,
            }
        }
        let mut out = out?;
        out.extend_from_slice(&data[copied..]);
        Some(out)
    }

    /// The most bytes a spelling of a secret can take: every character written as
    /// `\u00XX`. Whether a secret is spelled at some place never depends on more bytes
    /// than this from there (what a streaming search holds back, `redact_stream`).
    pub fn longest_spelling(&self) -> usize {
        self.secrets.first().map_or(0, |s| s.len() * LONGEST_ESCAPE)
    }

    /// Whether a spelling of some secret may begin at `data[at]` and go on past the end of
    /// `data`: the text runs out inside it, so only the bytes after `data` can tell. When
    /// this is false, [`Needles::match_at`] on `data` answers as it would on any longer text
    /// `data` begins.
    pub fn open_at(&self, data: &[u8], at: usize) -> bool {
        let Some(&byte) = data.get(at) else {
            return !self.is_empty();
        };
        if !self.may_start[usize::from(byte)] {
            return false;
        }
        let escaped = matches!(byte, b'%' | b'\\' | b'+');
        self.secrets
            .iter()
            .filter(|secret| escaped || secret[0] == byte)
            .any(|secret| runs_out(data, at, secret))
    }

    /// The length of the longest spelling of a secret starting at `data[at]`.
    pub fn match_at(&self, data: &[u8], at: usize) -> Option<usize> {
        let byte = data[at];
        if !self.may_start[usize::from(byte)] {
            return None;
        }
        let escaped = matches!(byte, b'%' | b'\\' | b'+');
        self.secrets
            .iter()
            .filter(|secret| escaped || secret[0] == byte)
            .find_map(|secret| spelled_at(data, at, secret))
    }
}

/// The length of the longest spelling of `secret` at `data[at..]`, if there is one.
///
/// Almost always each character has at most one spelling where it is read, and the walk is
/// a straight line. A character may have two (a `%` in the secret is itself, or the start of
/// `%25`): from there both are followed ([`spelled_from`]).
fn spelled_at(data: &[u8], at: usize, secret: &[u8]) -> Option<usize> {
    let mut end = at;
    for (i, &want) in secret.iter().enumerate() {
        end += match spellings(data, end, want) {
            [None, None] => return None,
            [Some(len), None] | [None, Some(len)] => len,
            [Some(a), Some(b)] => {
                let rest = &secret[i + 1..];
                return spelled_from(data, vec![end + a, end + b], rest).map(|e| e - at);
            }
        };
    }
    Some(end - at)
}

/// Where the longest spelling of `rest` ends when it may start at any of `ends`: the
/// candidates are followed together, at most a handful since each spelling is 1 to 6 bytes.
fn spelled_from(data: &[u8], mut ends: Vec<usize>, rest: &[u8]) -> Option<usize> {
    for &want in rest {
        let mut next: Vec<usize> = Vec::with_capacity(ends.len() + 1);
        for &end in &ends {
            for len in spellings(data, end, want).into_iter().flatten() {
                if !next.contains(&(end + len)) {
                    next.push(end + len);
                }
            }
        }
        if next.is_empty() {
            return None;
        }
        ends = next;
    }
    ends.into_iter().max()
}

/// Whether some way of reading `secret` from `data[at]` reaches the end of `data` before
/// the secret is spelled out (the ways are followed together, as in [`spelled_from`]).
fn runs_out(data: &[u8], at: usize, secret: &[u8]) -> bool {
    let mut ends = vec![at];
    for &want in secret {
        let mut next: Vec<usize> = Vec::with_capacity(ends.len() + 1);
        for &end in &ends {
            if truncated(data, end, want) {
                return true;
            }
            for len in spellings(data, end, want).into_iter().flatten() {
                if !next.contains(&(end + len)) {
                    next.push(end + len);
                }
            }
        }
        if next.is_empty() {
            return false;
        }
        ends = next;
    }
    false
}

/// Whether `data` ends inside what may still become a spelling of `want` at `data[at]`:
/// nothing there yet, or the start of an escape (`%`, `%X`, `\`, `\u`, `\u00`, …) whose
/// digits so far are those of `want`.
fn truncated(data: &[u8], at: usize, want: u8) -> bool {
    let rest = data.get(at..).unwrap_or_default();
    let digits_so_far = |digits: &[u8], of: &str| {
        digits.len() < of.len()
            && digits
                .iter()
                .zip(of.bytes())
                .all(|(d, w)| d.eq_ignore_ascii_case(&w))
    };
    match rest {
        [] => true,
        [b'%', digits @ ..] => digits_so_far(digits, &format!("{want:02X}")),
        [b'\\'] => want.is_ascii() || json_short_escape(want).is_some(),
        [b'\\', b'u', digits @ ..] => {
            want.is_ascii() && digits_so_far(digits, &format!("{want:04X}"))
        }
        _ => false,
    }
}

/// The longest escape of one byte: `\u00XX`.
const LONGEST_ESCAPE: usize = 6;

/// The lengths of the spellings of the byte `want` that begin at `data[at]`: the byte
/// itself, and one escape (`%XX`, `\u00XX`, `\/`-style, `+` for a space).
fn spellings(data: &[u8], at: usize, want: u8) -> [Option<usize>; 2] {
    let Some(&byte) = data.get(at) else {
        return [None, None];
    };
    let itself = (byte == want).then_some(1);
    let escape = match byte {
        b'%' => (hex(data.get(at + 1..at + 3)) == Some(u32::from(want))).then_some(3),
        b'+' => (want == b' ').then_some(1),
        b'\\' => match data.get(at + 1) {
            Some(b'u') => (want.is_ascii()
                && hex(data.get(at + 2..at + 6)) == Some(u32::from(want)))
            .then_some(6),
            Some(&short) => (json_short_escape(want) == Some(short)).then_some(2),
            None => None,
        },
        _ => None,
    };
    [itself, escape]
}

/// The letter JSON may write after `\` for `byte`.
fn json_short_escape(byte: u8) -> Option<u8> {
    match byte {
        b'/' | b'"' | b'\\' => Some(byte),
        0x08 => Some(b'b'),
        0x0c => Some(b'f'),
        b'\n' => Some(b'n'),
        b'\r' => Some(b'r'),
        b'\t' => Some(b't'),
        _ => None,
    }
}

/// The value of hex digits (either case), if they all are.
fn hex(digits: Option<&[u8]>) -> Option<u32> {
    digits?.iter().try_fold(0u32, |value, &digit| {
        Some(value << 4 | char::from(digit).to_digit(16)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needles(secrets: &[&str]) -> Needles {
        Needles::new(secrets.iter().map(|s| s.as_bytes().to_vec()).collect())
    }

    fn clean(needles: &Needles, text: &str) -> String {
        let replaced = needles.replace(text.as_bytes(), b"#");
        String::from_utf8(replaced.unwrap_or_else(|| text.as_bytes().to_vec())).unwrap()
    }

    #[test]
    fn every_spelling_of_every_character_is_found() {
        let n = needles(&["a/b c+d:e\"f\\g"]);
        for spelled in [
            "a/b c+d:e\"f\\g",
            "a\\/b c+d:e\\\"f\\\\g",
            "a\\u002fb\\u0020c\\u002bd\\u003ae\\u0022f\\u005cg",
            "a\\u002Fb\\u0020c\\u002Bd\\u003Ae\\u0022f\\u005Cg",
            "a%2Fb%20c%2Bd%3Ae%22f%5Cg",
            "a%2fb%20c%2bd%3ae%22f%5cg",
            "a%2Fb+c%2Bd%3Ae%22f%5Cg",
            "a/b%20c%2Bd%3Ae%22f%5Cg",
            // Each character its own way.
            "%61\\/b+c%2bd\\u003Ae\\\"f%5cg",
        ] {
            assert_eq!(clean(&n, &format!("<{spelled}>")), "<#>", "{spelled}");
        }
        // A `+` in the secret is never a space, and a near miss is left alone.
        assert_eq!(clean(&n, "a/b c d:e\"f\\g"), "a/b c d:e\"f\\g");
        assert_eq!(clean(&n, "a/b c+d:e\"f\\"), "a/b c+d:e\"f\\");
    }

    #[test]
    fn a_percent_or_backslash_in_the_secret_matches_raw_and_escaped() {
        let n = needles(&["x%y\\z"]);
        for spelled in ["x%y\\z", "x%25y%5Cz", "x%y\\\\z", "x\\u0025y\\u005cz"] {
            assert_eq!(clean(&n, spelled), "#", "{spelled}");
        }
    }

    #[test]
    fn the_longest_secret_wins_and_every_occurrence_goes() {
        let n = needles(&["tok", "Bearer tok"]);
        assert_eq!(clean(&n, "Bearer tok, tok, Bearer+tok, to"), "#, #, #, to");
        assert!(n.found_in(b"xx%74ok"));
        assert!(!n.found_in(b"t-o-k"));
        assert!(needles(&[]).replace(b"anything", b"#").is_none());
    }

    #[test]
    fn truncated_escapes_at_the_end_of_the_text_do_not_panic() {
        let n = needles(&["ab"]);
        for text in ["a%", "a%6", "a\\", "a\\u00", "a\\u006", "%", "\\"] {
            assert!(n.replace(text.as_bytes(), b"#").is_none(), "{text}");
        }
    }
}
