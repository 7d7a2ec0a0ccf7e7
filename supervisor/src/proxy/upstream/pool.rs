//! Reused upstream connections, per authority and decided address: idle HTTP/1.1
//! connections whose response finished cleanly, taken one request at a time, and one shared
//! HTTP/2 connection that concurrent requests use together.
//!
//! Reuse never widens what may be dialed: a request takes a pooled connection only when
//! its own decision lists that connection's address, and connections are never shared
//! between host names. A connection dialed for a WebSocket handshake is never pooled.
//!
//! One HTTP/2 connection per key, as browsers keep: hyper queues streams beyond the peer's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` until one ends, so the peer's limit is never exceeded.
//! It is put in the pool as soon as its handshake is done (so requests arriving meanwhile
//! share it) and leaves it when closed (the upstream's `GOAWAY`, an error, a ping unanswered)
//! or idle for [`IDLE_FOR_AT_MOST`].
//!
//! Which protocol an HTTPS origin speaks is known only once a handshake is done, so while
//! one dial to an origin is under way, further requests to it wait for that dial
//! ([`Pool::dial_turn`]) rather than each opening a connection: a burst of requests to an
//! HTTP/2 upstream shares one connection from the start. Origins seen to speak HTTP/1.1,
//! which cannot share, do not wait.

use crate::audit::Protocol;
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Idle HTTP/1.1 connections kept per authority and address.
const MAX_IDLE_PER_KEY: usize = 64;
/// An idle connection older than this is closed rather than reused (upstreams time idle
/// keep-alive connections out too; nginx after 75 s).
const IDLE_FOR_AT_MOST: Duration = Duration::from_secs(30);
/// How long a pooled HTTP/1.1 connection may take to report ready before a fresh one is
/// dialed.
const READY_WITHIN: Duration = Duration::from_millis(50);

/// A connection as the pool hands it out and takes it back.
pub(crate) use super::exchange::Sender;

type Http1 = http1::SendRequest<Full<Bytes>>;
type Http2 = http2::SendRequest<Full<Bytes>>;

/// Which connections a request may reuse.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// `scheme://authority` of the request.
    pub origin: String,
    /// The decided address the connection was dialed to.
    pub peer: SocketAddr,
}

struct Idle {
    sender: Http1,
    since: Instant,
}

struct Multiplexed {
    sender: Http2,
    last_used: Instant,
}

#[derive(Default)]
struct Connections {
    idle: Vec<Idle>,
    shared: Option<Multiplexed>,
}

/// What the pool knows of an origin, whatever address it was dialed at.
#[derive(Default)]
struct Origin {
    /// What its last handshake chose.
    speaks: Option<Protocol>,
    /// A dial under way (its turn's sender is dropped when it ends).
    dialing: Option<watch::Receiver<()>>,
}

#[derive(Default)]
pub(crate) struct Pool {
    keys: Mutex<HashMap<Key, Connections>>,
    origins: Mutex<HashMap<String, Origin>>,
}

/// Whether a request that found no pooled connection may dial now.
pub(crate) enum Turn<'a> {
    /// Dial: the origin speaks HTTP/1.1 (or plain `http`), nothing to share.
    Free,
    /// Dial, holding the turn until the handshake is done; requests to the origin wait.
    Mine(DialTurn<'a>),
    /// Another request is dialing the origin: wait for it, then look in the pool again.
    Wait(DialUnderWay),
}

/// The one dial under way to an origin; its end (handshake done, failed or abandoned)
/// wakes the requests waiting for it.
pub(crate) struct DialTurn<'a> {
    pool: &'a Pool,
    origin: String,
    _done: watch::Sender<()>,
}

impl Drop for DialTurn<'_> {
    fn drop(&mut self) {
        if let Some(origin) = self.pool.origins().get_mut(&self.origin) {
            origin.dialing = None;
        }
    }
}

pub(crate) struct DialUnderWay(watch::Receiver<()>);

impl DialUnderWay {
    /// Until the dial has ended.
    pub async fn ended(mut self) {
        // The turn's sender never sends: `changed` returns when it is dropped.
        let _ = self.0.changed().await;
    }
}

impl Pool {
    /// A connection to `origin` at one of `addresses`, in their order: the shared HTTP/2
    /// connection if one is open, else a ready idle HTTP/1.1 one.
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
            if let Some(sender) = self.multiplexed(&key) {
                return Some((key, Sender::Http2(sender)));
            }
            while let Some(mut sender) = self.pop(&key) {
                let ready = sender.is_ready()
                    || matches!(
                        tokio::time::timeout(READY_WITHIN, sender.ready()).await,
                        Ok(Ok(()))
                    );
                if ready {
                    return Some((key, Sender::Http1(sender)));
                }
            }
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Connections>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn origins(&self) -> std::sync::MutexGuard<'_, HashMap<String, Origin>> {
        self.origins.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request to `origin` that found nothing in the pool dials now or waits for
    /// a dial under way (see the module's docs).
    pub fn dial_turn(&self, origin: &str) -> Turn<'_> {
        if !origin.starts_with("https://") {
            return Turn::Free;
        }
        let mut origins = self.origins();
        let entry = origins.entry(origin.to_owned()).or_default();
        if entry.speaks == Some(Protocol::Http1) {
            return Turn::Free;
        }
        if let Some(dialing) = &entry.dialing {
            return Turn::Wait(DialUnderWay(dialing.clone()));
        }
        let (done, dialing) = watch::channel(());
        entry.dialing = Some(dialing);
        Turn::Mine(DialTurn {
            pool: self,
            origin: origin.to_owned(),
            _done: done,
        })
    }

    /// A clone of the key's open HTTP/2 connection; a closed or long idle one is dropped.
    fn multiplexed(&self, key: &Key) -> Option<Http2> {
        let mut keys = self.lock();
        let connections = keys.get_mut(key)?;
        let entry = connections.shared.as_mut()?;
        if entry.sender.is_closed() || entry.last_used.elapsed() >= IDLE_FOR_AT_MOST {
            connections.shared = None;
            return None;
        }
        entry.last_used = Instant::now();
        Some(entry.sender.clone())
    }

    fn pop(&self, key: &Key) -> Option<Http1> {
        let mut keys = self.lock();
        let list = &mut keys.get_mut(key)?.idle;
        while let Some(entry) = list.pop() {
            if !entry.sender.is_closed() && entry.since.elapsed() < IDLE_FOR_AT_MOST {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Notes a fresh connection's protocol for its origin (not a WebSocket handshake's,
    /// which offered `http/1.1` alone), and offers an HTTP/2 one for concurrent use. An open
    /// one already shared for the key is kept (the new one serves its own request and closes
    /// when that is done), so the key keeps one.
    pub fn connected(&self, key: &Key, sender: &Sender) {
        if let Sender::Upgrade(_) = sender {
            return;
        }
        if let Some(origin) = self.origins().get_mut(&key.origin) {
            origin.speaks = Some(sender.protocol());
        }
        let Sender::Http2(sender) = sender else {
            return;
        };
        let mut keys = self.lock();
        let connections = keys.entry(key.clone()).or_default();
        let open = connections
            .shared
            .as_ref()
            .is_some_and(|entry| !entry.sender.is_closed());
        if !open {
            connections.shared = Some(Multiplexed {
                sender: sender.clone(),
                last_used: Instant::now(),
            });
        }
    }

    /// Stops sharing the key's HTTP/2 connection (it refused a stream or is going away):
    /// requests already on it finish there, the next ones get a fresh connection.
    pub fn evict(&self, key: &Key, sender: &Sender) {
        if let Sender::Http2(_) = sender {
            if let Some(connections) = self.lock().get_mut(key) {
                connections.shared = None;
            }
        }
    }

    /// Takes a connection back after its response was read to the end: an HTTP/1.1 one is
    /// kept for reuse; an HTTP/2 one is shared from its handshake on and needs nothing; one
    /// dialed for a WebSocket handshake is closed.
    pub fn put(&self, key: Key, sender: Sender) {
        let Sender::Http1(sender) = sender else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        let mut keys = self.lock();
        let list = &mut keys.entry(key).or_default().idle;
        list.retain(|entry| !entry.sender.is_closed());
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes every pooled connection (an HTTP/2 one once its open streams end).
    pub fn clear(&self) {
        self.lock().clear();
        self.origins().clear();
    }
}
