//! The body type of every response the proxy sends to the sandbox, and small constructors.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

/// Errors inside a streamed body: any of them aborts the client connection mid-body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: a buffered error body or a relayed upstream body.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

pub fn full(data: impl Into<Bytes>) -> ProxyBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}
