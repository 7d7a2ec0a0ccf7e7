//! A real `redis-server` for the quota tests: on a loopback port, no persistence, stopped
//! (and its files removed) when dropped.

/// One `redis-server` process the test owns.
pub struct RedisServer {
    _private: (),
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        todo!("redis harness owner")
    }

    /// Starts a server that requires `password` (`requirepass`).
    pub fn with_password(password: &str) -> RedisServer {
        let _ = password;
        todo!("redis harness owner")
    }

    /// Starts a TLS-only server (`tls-port`, no plain port) with a certificate for
    /// `127.0.0.1` issued by a test CA; [`RedisServer::ca_file`] is that CA.
    pub fn with_tls() -> RedisServer {
        todo!("redis harness owner")
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` with TLS), with the password if one is set.
    pub fn url(&self) -> String {
        todo!("redis harness owner")
    }

    /// The same URL with another password (for the wrong-password case).
    pub fn url_with_password(&self, password: &str) -> String {
        let _ = password;
        todo!("redis harness owner")
    }

    /// The test CA's PEM file, for `--redis-ca` (TLS servers only).
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        todo!("redis harness owner")
    }

    /// Stops the server (SIGKILL, waited for): the port refuses connections until
    /// [`RedisServer::restart`].
    pub fn stop(&mut self) {
        todo!("redis harness owner")
    }

    /// Starts it again on the same port with the same configuration (empty state), and
    /// waits until it answers.
    pub fn restart(&mut self) {
        todo!("redis harness owner")
    }

    /// Runs `redis-cli` against the server with `args`; its stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let _ = args;
        todo!("redis harness owner")
    }
}
