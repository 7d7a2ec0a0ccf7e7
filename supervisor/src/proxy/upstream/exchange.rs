//! One HTTP/1.1 exchange over an upstream stream: hyper does the framing, tollgate chose the
//! socket (a fresh dial to a decided address, or a pooled connection to one).

use super::pool::Sender;
use super::transport::Upstream;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// Starts an HTTP/1.1 client connection on `stream`; the connection task runs until the
/// sender is dropped or the upstream closes.
pub(crate) async fn handshake(stream: Box<dyn Upstream>) -> Result<Sender, hyper::Error> {
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!("upstream connection ended: {error}");
        }
    });
    Ok(sender)
}

/// Sends `request` and waits for the response head.
pub(crate) async fn send(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, hyper::Error> {
    sender.send_request(request).await
}
