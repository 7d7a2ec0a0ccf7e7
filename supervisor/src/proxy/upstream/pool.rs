//! Keep-alive upstream connections: an HTTP/1.1 connection whose response finished cleanly
//! is kept for the next request to the same authority at the same decided address.
//!
//! Reuse never widens what may be dialed: a request takes a pooled connection only when
//! its own decision lists that connection's address, and connections are never shared
//! between host names.

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Idle connections kept per authority and address.
const MAX_IDLE_PER_KEY: usize = 64;
/// An idle connection older than this is closed rather than reused (upstreams time idle
/// keep-alive connections out too; nginx after 75 s).
const IDLE_FOR_AT_MOST: Duration = Duration::from_secs(30);
/// How long a pooled connection may take to report ready before a fresh one is dialed.
const READY_WITHIN: Duration = Duration::from_millis(50);

pub(crate) type Sender = SendRequest<Full<Bytes>>;

/// Which connections a request may reuse.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// `scheme://authority` of the request.
    pub origin: String,
    /// The decided address the connection was dialed to.
    pub peer: SocketAddr,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
}

impl Pool {
    /// A ready connection to `origin` at one of `addresses`, in their order.
    pub async fn take(
        &self,
        origin: &str,
        port: u16,
        addresses: &[IpAddr],
    ) -> Option<(Key, Sender)> {
        for address in addresses {
            let key = Key {
                origin: origin.to_owned(),
                peer: SocketAddr::new(*address, port),
            };
            while let Some(mut sender) = self.pop(&key) {
                let ready = sender.is_ready()
                    || matches!(
                        tokio::time::timeout(READY_WITHIN, sender.ready()).await,
                        Ok(Ok(()))
                    );
                if ready {
                    return Some((key, sender));
                }
            }
        }
        None
    }

    fn pop(&self, key: &Key) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(entry) = list.pop() {
            if !entry.sender.is_closed() && entry.since.elapsed() < IDLE_FOR_AT_MOST {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Keeps `sender` for reuse (its response has been read to the end).
    pub fn put(&self, key: Key, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key).or_default();
        list.retain(|entry| !entry.sender.is_closed());
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
