//! Checks on a request's parts that are not its URL: today, its method.
//!
//! Methods are case-sensitive tokens (RFC 9110 §9.1), but many servers upper-case them
//! before routing, so `delete /x` would be refused by no `DELETE` rule and then act as a
//! delete upstream. Rather than guess what a server makes of another case, tollgate refuses
//! any method that is not upper case, in every entry point: the proxy and `policy eval` call
//! [`check_method`] before deciding, and [`crate::Policy::decide`] refuses such a method
//! itself too, so a caller that forgot cannot have it matched.

/// Longest method echoed in a message; a longer one is named by its length.
const MAX_ECHO: usize = 32;

/// Why a method is refused. Every variant has the reason [`crate::Reason::MethodNotUppercase`]; the
/// messages are safe to return to the sandbox and to log (a method is echoed only when it is
/// a short token, so no control character or long blob reaches a log line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    #[error("the request has no method: send an upper-case HTTP method such as GET")]
    Empty,
    #[error(
        "the method is not an HTTP token (RFC 9110: letters, digits and !#$%&'*+-.^_`|~ only): send an upper-case method such as GET"
    )]
    NotToken,
    #[error(
        "the method {given} is not upper case: HTTP methods are case-sensitive and tollgate does not guess what the server makes of {given}; send {upper}"
    )]
    NotUppercase {
        /// The method as sent, quoted, or its length if it is long.
        given: String,
        /// What to send instead, quoted, or `it in upper case` if it is long.
        upper: String,
    },
}

impl MethodError {
    /// The machine reason, for the audit record (`400 invalid_request` in the proxy).
    pub fn reason(&self) -> crate::Reason {
        crate::Reason::MethodNotUppercase
    }
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Accepts a method that is an RFC 9110 token with no lower-case letter (`GET`, `DELETE`,
/// `PROPFIND`, `M-SEARCH`); refuses anything else, never rewriting it.
pub fn check_method(method: &str) -> Result<(), MethodError> {
    if method.is_empty() {
        return Err(MethodError::Empty);
    }
    if !method.bytes().all(is_tchar) {
        return Err(MethodError::NotToken);
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        let (given, upper) = if method.len() <= MAX_ECHO {
            (
                format!("`{method}`"),
                format!("`{}`", method.to_ascii_uppercase()),
            )
        } else {
            (
                format!("of {} bytes", method.len()),
                "it in upper case".to_owned(),
            )
        };
        return Err(MethodError::NotUppercase { given, upper });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_case_tokens_pass() {
        for method in [
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
            "PROPFIND", "M-SEARCH", "X_1", "BREW!",
        ] {
            assert_eq!(check_method(method), Ok(()), "{method}");
        }
    }

    #[test]
    fn other_cases_are_refused_and_not_rewritten() {
        for method in ["delete", "gEt", "Get", "get", "m-search", "PROPfind"] {
            let error = check_method(method).unwrap_err();
            assert_eq!(error.reason().as_str(), "method_not_uppercase");
            let message = error.to_string();
            assert!(message.contains(&format!("`{method}`")), "{message}");
            assert!(
                message.contains(&format!("send `{}`", method.to_ascii_uppercase())),
                "{message}"
            );
        }
    }

    #[test]
    fn what_is_not_a_token_is_refused_without_being_echoed() {
        assert_eq!(check_method(""), Err(MethodError::Empty));
        for method in [
            "GE T", "GET\r\n", "GET\0", "GÉT", "GET/", "(GET)", "G\"T", "GET,POST", "G\tT",
        ] {
            let error = check_method(method).unwrap_err();
            assert_eq!(error, MethodError::NotToken, "{method:?}");
            assert_eq!(error.reason().as_str(), "method_not_uppercase");
            assert!(!error.to_string().contains(method), "{method:?}");
        }
    }

    #[test]
    fn a_long_method_is_named_by_its_length() {
        let method = "a".repeat(1000);
        let message = check_method(&method).unwrap_err().to_string();
        assert!(message.contains("of 1000 bytes"), "{message}");
        assert!(message.len() < 300, "{message}");
    }
}
