//! The HTTP/1.1 server tollgate speaks to the sandbox, on its connections to the proxy and
//! inside intercepted tunnels whose client did not pick `h2` (those get `http2`): hyper with
//! the header read timeout (also the keep-alive idle timeout), the 16 KiB header limit and
//! CONNECT upgrades, and the framing witness on the raw bytes, which tells each request
//! whether its head was ambiguous. Each request carries its connection's [`Delivery`] (in
//! its extensions), so that a relayed body cut short can first make sure the client has
//! every byte before the cut.

mod delivery;
mod witness;

pub(crate) use delivery::Delivery;
pub(crate) use witness::Verdicts;

use super::body::ProxyBody;
use super::ConnContext;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use witness::Witnessed;

/// Request heads (request line and headers) larger than this get 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Serves HTTP/1.1 on `stream` until it closes or the proxy shuts down: hyper with the
/// header read timeout (also the keep-alive idle timeout) and the 16 KiB header limit,
/// the framing witness on the raw bytes. `route(context, request, ambiguous_framing)`
/// answers each request.
pub(crate) async fn serve_http<S, R, F>(context: ConnContext, stream: S, route: R)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: Fn(ConnContext, Request<Incoming>, bool) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let settings = context.shared.settings.clone();
    let mut stop = context.shutdown.clone();
    let guard = context.guard.clone();
    let delivery = Arc::new(delivery::Delivery::default());
    let stream = delivery::Tracked::new(
        Witnessed::new(stream, context.framing.clone()),
        delivery.clone(),
    );
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(delivery.clone());
        // For work that outlives the response (a WebSocket session): the guard, the
        // shutdown signal and the connection's slot.
        request.extensions_mut().insert(context.clone());
        let context = context.clone();
        let ambiguous = context.framing.next() == Some(true);
        let answer = route(context, request, ambiguous);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!("client connection ended: {error}");
            }
        }
        _ = crate::proxy::stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(settings.shutdown_grace, connection).await;
        }
    }
    drop(guard);
}
