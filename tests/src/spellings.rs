//! The ways an upstream may spell a secret it echoes back, for the suites that check none of
//! them reaches the sandbox (`supervisor/tests/proxy_framing.rs` in memory,
//! `tests/tests/proxy_integrity.rs` through a real sandbox, whose Python server spells them
//! the same way).

/// Every spelling [`spell`] knows.
pub const SPELLINGS: [&str; 9] = [
    "raw",
    "json",
    "json_u",
    "json_U",
    "json_mixed",
    "url",
    "url_lower",
    "url_plus",
    "url_path",
];

/// `value` spelled `how`: raw, JSON (`\/`, `\"`, `\\`; every non-alphanumeric as `\u00xx`
/// or `\u00XX`; only `/` as `\u002F`), URL-encoded (upper and lower case hex, `+` for a
/// space, `/` left alone).
pub fn spell(value: &str, how: &str) -> String {
    let percent = |keep: &str, plus: bool, lower: bool| -> String {
        value
            .bytes()
            .map(|b| {
                let c = char::from(b);
                if c.is_ascii_alphanumeric() || "_.-~".contains(c) || keep.contains(c) {
                    c.to_string()
                } else if plus && c == ' ' {
                    "+".to_owned()
                } else if lower {
                    format!("%{b:02x}")
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let unicode = |upper: bool| -> String {
        value
            .chars()
            .map(|c| match (c.is_ascii_alphanumeric(), upper) {
                (true, _) => c.to_string(),
                (false, false) => format!("\\u{:04x}", u32::from(c)),
                (false, true) => format!("\\u{:04X}", u32::from(c)),
            })
            .collect()
    };
    match how {
        "raw" => value.to_owned(),
        "json" => value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('/', "\\/"),
        "json_u" => unicode(false),
        "json_U" => unicode(true),
        "json_mixed" => value.replace('/', "\\u002F"),
        "url" => percent("", false, false),
        "url_lower" => percent("", false, true),
        "url_plus" => percent("", true, false),
        "url_path" => percent("/", false, false),
        other => panic!("unknown spelling {other}"),
    }
}
