//! Why an HTTP/2 connection to the sandbox ended, in words for the tunnel's record.
//!
//! hyper reports the end as an error whose source is h2's (which of h2's guards tripped is
//! read from the GOAWAY's debug data, `goaway`): a connection error tollgate's side detected (`GOAWAY` with `ENHANCE_YOUR_CALM`, `PROTOCOL_ERROR`, …) means the client
//! broke the protocol or one of its limits, and the record says which; anything else (the
//! client went away, or sent its own `GOAWAY`) is an ordinary close.

use crate::proxy::http1::MAX_HEADER_BYTES;
use h2::Reason;
use std::error::Error as _;

/// The sentence for a connection the client's misbehaviour ended; `None` for an ordinary
/// close. `debug_data`: that of the GOAWAY tollgate sent, if it sent one (see `goaway`).
pub(super) fn describe(error: &hyper::Error, debug_data: Option<&[u8]>) -> Option<String> {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            let debug = String::from_utf8_lossy(debug_data.unwrap_or_default());
            return protocol_error(h2, &debug);
        }
        source = cause.source();
    }
    tracing::debug!("HTTP/2 client connection ended: {error}");
    None
}

fn protocol_error(error: &h2::Error, said: &str) -> Option<String> {
    // Only a GOAWAY tollgate's side sent is the client's fault; one the client sent, and a
    // reset of a single stream, end nothing of the connection's.
    if !error.is_go_away() || error.is_remote() {
        tracing::debug!("HTTP/2 client connection ended: {error}");
        return None;
    }
    let reason = error.reason()?;
    // h2 names which of its guards tripped only in the GOAWAY's debug data (`said`).
    let message = match reason {
        Reason::NO_ERROR => return None,
        Reason::ENHANCE_YOUR_CALM if said.contains("too_many_resets") => {
            "the client reset streams faster than it used them (rapid reset, CVE-2023-44487); \
             tollgate closed the connection with GOAWAY ENHANCE_YOUR_CALM"
                .to_owned()
        }
        Reason::ENHANCE_YOUR_CALM
            if said.contains("too_many_continuations") || said.contains("way_too_large") =>
        {
            format!(
                "the client's header block exceeded {} bytes or went on in CONTINUATION frames \
                 (a CONTINUATION flood); tollgate closed the connection with GOAWAY \
                 ENHANCE_YOUR_CALM",
                crate::proxy::http1::MAX_HEADER_BYTES
            )
        }
        Reason::ENHANCE_YOUR_CALM if said.contains("too_many_internal_resets") => {
            "the client made tollgate reset too many of its streams for errors (MadeYouReset, \
             CVE-2025-8671); tollgate closed the connection with GOAWAY ENHANCE_YOUR_CALM"
                .to_owned()
        }
        Reason::ENHANCE_YOUR_CALM if said.contains("too_many_data_frames") => {
            "the client sent too many small DATA frames; tollgate closed the connection with \
             GOAWAY ENHANCE_YOUR_CALM"
                .to_owned()
        }
        Reason::ENHANCE_YOUR_CALM => {
            format!(
                "the client overloaded the connection ({error}{}); tollgate closed it with \
                 GOAWAY ENHANCE_YOUR_CALM",
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {said}")
                }
            )
        }
        Reason::FRAME_SIZE_ERROR => {
            "the client sent a frame larger than the connection allows; tollgate closed it \
             with GOAWAY FRAME_SIZE_ERROR"
                .to_owned()
        }
        // h2 raises COMPRESSION_ERROR in one place only: a header block that goes on far
        // past the header list limit (HEADERS and CONTINUATION frames together), which it
        // stops decoding rather than buffer (h2 0.4, codec/framed_read.rs).
        Reason::COMPRESSION_ERROR => format!(
            "the client's header block went on far past the {MAX_HEADER_BYTES}-byte header \
             list limit (in HEADERS and CONTINUATION frames); tollgate closed the connection \
             with GOAWAY COMPRESSION_ERROR"
        ),
        Reason::FLOW_CONTROL_ERROR => {
            "the client sent more than its flow-control window allowed; tollgate closed the \
             connection with GOAWAY FLOW_CONTROL_ERROR"
                .to_owned()
        }
        other => format!(
            "the client broke the HTTP/2 protocol ({other:?}); tollgate closed the connection \
             with GOAWAY"
        ),
    };
    Some(message)
}
