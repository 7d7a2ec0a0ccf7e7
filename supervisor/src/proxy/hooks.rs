//! Supervisor-side hooks around each forwarded HTTP request, run in registration order.
//!
//! `before_http` hooks see the method, the normalised URL and the headers about to be sent;
//! they may rewrite the URL or the headers, or cancel the request with a reason. A rewritten
//! URL is decided again from scratch (policy, resolution, address checks), so a hook can
//! never route a request around the policy. `after_http` hooks see the upstream status and
//! headers. Hooks run once per request (not per retry), for forward-proxied requests and
//! for each request inside an intercepted TLS tunnel; never for a passthrough tunnel, whose
//! HTTP tollgate cannot see. They see requests before credentials are attached (no hook
//! ever sees a secret) and responses after echoed secrets are redacted.
//!
//! A closure is a synchronous hook; implement the trait on a type for an asynchronous one.

use super::BoxFuture;
use http::{HeaderMap, Method, StatusCode};
use tollgate_policy::url::NormalizedUrl;

/// The request a `before_http` hook sees and may edit.
#[derive(Debug, Clone)]
pub struct HookRequest {
    method: Method,
    /// The normalised URL; assign a new one to rewrite the destination.
    pub url: NormalizedUrl,
    /// The headers as they will be sent (hop-by-hop and `Tollgate-*` already removed; any a
    /// hook adds of those kinds are removed again).
    pub headers: HeaderMap,
}

impl HookRequest {
    pub(crate) fn new(method: Method, url: NormalizedUrl, headers: HeaderMap) -> HookRequest {
        HookRequest {
            method,
            url,
            headers,
        }
    }

    pub fn method(&self) -> &Method {
        &self.method
    }
}

/// What a `before_http` hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookVerdict {
    Continue,
    /// Refuse the request with `policy_denied`; the reason is shown to the sandbox.
    Cancel(String),
}

/// A hook run before the request is sent.
pub trait BeforeHttp: Send + Sync + 'static {
    fn before_http<'a>(&'a self, request: &'a mut HookRequest) -> BoxFuture<'a, HookVerdict>;
}

impl<F> BeforeHttp for F
where
    F: Fn(&mut HookRequest) -> HookVerdict + Send + Sync + 'static,
{
    fn before_http<'a>(&'a self, request: &'a mut HookRequest) -> BoxFuture<'a, HookVerdict> {
        let verdict = self(request);
        Box::pin(std::future::ready(verdict))
    }
}

/// What an `after_http` hook sees: the upstream's answer to the final attempt.
#[derive(Debug, Clone)]
pub struct HookResponse {
    pub method: Method,
    pub url: NormalizedUrl,
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// A hook run when the upstream's response headers arrive, before they are relayed.
pub trait AfterHttp: Send + Sync + 'static {
    fn after_http<'a>(&'a self, response: &'a HookResponse) -> BoxFuture<'a, ()>;
}

impl<F> AfterHttp for F
where
    F: Fn(&HookResponse) + Send + Sync + 'static,
{
    fn after_http<'a>(&'a self, response: &'a HookResponse) -> BoxFuture<'a, ()> {
        self(response);
        Box::pin(std::future::ready(()))
    }
}
