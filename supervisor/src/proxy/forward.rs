//! The forward proxy's entry: one absolute-form `http://` request, its URL parsed and
//! normalised here, everything else in `pipeline`.

use super::body::ProxyBody;
use super::errors::{ErrorCode, ProxyError};
use super::{pipeline, Shared, Via};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use std::sync::Arc;
use tollgate_policy::url::NormalizedUrl;

/// Handles one forward-proxy request; every outcome is a response and an audit record.
///
/// `ambiguous_framing`: the connection's framing witness saw both `Content-Length` and
/// `Transfer-Encoding` in this request's head (hyper has already dropped the former).
pub(crate) async fn forward(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    ambiguous_framing: bool,
) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    let url = parse_target(&parts.uri);
    pipeline::handle(shared, url, parts, body, ambiguous_framing, Via::Proxy).await
}

/// parse + normalise: an absolute `http://` URL, through the policy crate's one parser.
fn parse_target(uri: &Uri) -> Result<NormalizedUrl, ProxyError> {
    let invalid = |m: String| Err(ProxyError::new(ErrorCode::InvalidUrl, m));
    match uri.scheme_str() {
        None => invalid(
            "the request target must be an absolute http:// URL: configure the client to use tollgate as its HTTP proxy".into(),
        ),
        Some(s) if s.eq_ignore_ascii_case("https") => invalid(
            "https:// URLs cannot be sent in absolute form: use CONNECT (an HTTPS proxy tunnel), which clients do when HTTPS_PROXY is set".into(),
        ),
        Some(s) if !s.eq_ignore_ascii_case("http") => {
            invalid("only http:// URLs can be forwarded; use CONNECT for https".into())
        }
        Some(_) => NormalizedUrl::parse(&uri.to_string())
            .map_err(|e| ProxyError::new(ErrorCode::InvalidUrl, e.to_string())),
    }
}
