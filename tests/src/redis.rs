//! A real `redis-server` for the quota tests: on a loopback port, no persistence, stopped
//! (and its files removed) when dropped.
//!
//! Each server is Debian's `redis-server` (scripts/bootstrap.sh installs it) started from a
//! configuration file in a root-only directory of its own (below [`crate::OUTPUT_ROOT`], so
//! no sandbox sees the password or the keys), on a port the kernel just handed out. Variants:
//! plain, `requirepass`, and TLS-only (`tls-port`, `port 0`) with a leaf for `127.0.0.1`
//! issued by a test CA. [`RedisServer::stop`] kills it as a crash would (SIGKILL) and
//! [`RedisServer::restart`] brings it back on the same port with an empty store, which is how
//! the failure tests take Redis away in the middle of an execution and give it back.

use std::{
    fs,
    io::Read as _,
    net::{Ipv4Addr, TcpListener},
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{certs, unique, OUTPUT_ROOT};

/// Debian's packaged server and client.
const REDIS_SERVER: &str = "/usr/bin/redis-server";
const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// How long a server may take to answer its first `PING` (it starts in milliseconds).
const READY_LIMIT: Duration = Duration::from_secs(15);
/// How often readiness is polled.
const READY_POLL: Duration = Duration::from_millis(20);
/// Fresh ports tried when another process takes the chosen one before the server binds it.
const PORT_ATTEMPTS: usize = 10;

/// One `redis-server` process the test owns.
pub struct RedisServer {
    /// Root-only directory holding the configuration, log, certificates and working files.
    dir: PathBuf,
    port: u16,
    password: Option<String>,
    tls: Option<certs::Certificates>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        RedisServer::launch(None, false)
    }

    /// Starts a server that requires `password` (`requirepass`).
    pub fn with_password(password: &str) -> RedisServer {
        assert!(
            !password.is_empty() && !password.contains(['"', '\\', '\n', ' ']),
            "test passwords are plain words (they go into redis.conf unquoted)"
        );
        RedisServer::launch(Some(password.to_string()), false)
    }

    /// Starts a TLS-only server (`tls-port`, no plain port) with a certificate for
    /// `127.0.0.1` issued by a test CA; [`RedisServer::ca_file`] is that CA.
    pub fn with_tls() -> RedisServer {
        RedisServer::launch(None, true)
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` with TLS), with the password if one is set.
    pub fn url(&self) -> String {
        self.url_for(self.password.as_deref())
    }

    /// The same URL with another password (for the wrong-password case).
    pub fn url_with_password(&self, password: &str) -> String {
        self.url_for(Some(password))
    }

    /// The test CA's PEM file, for `--redis-ca` (TLS servers only).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|tls| tls.ca.clone())
    }

    /// The loopback port the server listens on (plain or TLS).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (SIGKILL, waited for): the port refuses connections until
    /// [`RedisServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same configuration (empty state), and
    /// waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        // No persistence, but remove anything a previous run left in its working directory.
        let _ = fs::remove_file(self.dir.join("dump.rdb"));
        if let Err(failure) = self.spawn_and_wait() {
            panic!(
                "redis-server did not come back on 127.0.0.1:{}: {failure}",
                self.port
            );
        }
    }

    /// Runs `redis-cli` against the server with `args`; its stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self
            .cli_command(args)
            .output()
            .expect("run redis-cli (scripts/bootstrap.sh installs redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Makes the directory and configuration, then starts the server on a fresh port,
    /// trying another when something else bound the one chosen first.
    fn launch(password: Option<String>, tls: bool) -> RedisServer {
        let dir = Path::new(OUTPUT_ROOT).join(unique("redis"));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .expect("create the redis directory");
        // A client dialing `rediss://127.0.0.1` checks an IP address SAN.
        let tls = tls.then(|| certs::make_certificates(&dir, &["127.0.0.1"]));
        let mut server = RedisServer {
            dir,
            port: 0,
            password,
            tls,
            child: None,
        };
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(failure) if failure.contains("Address already in use") => {
                    failures.push(failure)
                }
                Err(failure) => panic!("redis-server did not start: {failure}"),
            }
        }
        panic!("redis-server found no free port in {PORT_ATTEMPTS} attempts: {failures:?}");
    }

    /// Writes the configuration for the current port, starts the process and waits until it
    /// answers `PING`; on failure the process is gone and the error carries its log.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let config = self.dir.join("redis.conf");
        fs::write(&config, self.config()).expect("write redis.conf");
        fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).expect("chmod redis.conf");
        let log = self.dir.join("redis.log");
        let _ = fs::remove_file(&log);
        let child = Command::new(REDIS_SERVER)
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server (scripts/bootstrap.sh installs redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!("it exited ({status}): {}", read_log(&log)));
            }
            if self.answers_ping() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "no PONG within {READY_LIMIT:?}: {}",
                    read_log(&log)
                ));
            }
            std::thread::sleep(READY_POLL);
        }
    }

    /// The server's configuration: loopback only, no persistence, its own directory.
    fn config(&self) -> String {
        let dir = self.dir.display();
        let mut config = format!(
            "bind 127.0.0.1\n\
             daemonize no\n\
             save \"\"\n\
             appendonly no\n\
             dir {dir}\n\
             logfile {dir}/redis.log\n\
             databases 1\n"
        );
        match &self.tls {
            None => config.push_str(&format!("port {}\n", self.port)),
            Some(tls) => config.push_str(&format!(
                "port 0\n\
                 tls-port {}\n\
                 tls-cert-file {}\n\
                 tls-key-file {}\n\
                 tls-ca-cert-file {}\n\
                 tls-auth-clients no\n",
                self.port,
                tls.cert.display(),
                tls.key.display(),
                tls.ca.display()
            )),
        }
        if let Some(password) = &self.password {
            config.push_str(&format!("requirepass {password}\n"));
        }
        config
    }

    /// True once the server answers `PING` (`PONG`).
    fn answers_ping(&self) -> bool {
        self.cli_command(&["PING"])
            .output()
            .map(|out| out.status.success() && out.stdout.starts_with(b"PONG"))
            .unwrap_or(false)
    }

    /// `redis-cli` aimed at this server; the password goes through `REDISCLI_AUTH`, not argv.
    fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(REDIS_CLI);
        command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null());
        if let Some(tls) = &self.tls {
            command.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        match &self.password {
            Some(password) => command.env("REDISCLI_AUTH", password),
            None => command.env_remove("REDISCLI_AUTH"),
        };
        command.args(args);
        command
    }

    fn url_for(&self, password: Option<&str>) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match password {
            Some(password) => format!(
                "{scheme}://:{}@127.0.0.1:{}",
                percent_encode(password),
                self.port
            ),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A port the kernel just handed out on 127.0.0.1 (released for the server to bind; a race
/// with another process is caught by [`RedisServer::launch`]'s retry).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind a loopback port")
}

/// The server's log, for a failure message.
fn read_log(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(log) {
        let _ = file.read_to_string(&mut text);
    }
    if text.is_empty() {
        "(empty log)".to_string()
    } else {
        text
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (a URL's userinfo).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_server_answers_stops_and_restarts_on_its_port() {
        let mut server = RedisServer::start();
        assert_eq!(server.cli(&["SET", "k", "v"]), "OK");
        assert_eq!(server.cli(&["GET", "k"]), "v");
        let port = server.port();
        server.stop();
        assert!(
            std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
            "a stopped server's port refuses connections"
        );
        server.restart();
        assert_eq!(server.port(), port);
        assert_eq!(server.cli(&["EXISTS", "k"]), "0", "a restart is empty");
        assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    }

    #[test]
    fn password_server_refuses_other_passwords() {
        let server = RedisServer::with_password("s3cret");
        assert_eq!(server.cli(&["PING"]), "PONG");
        assert_eq!(
            server.url(),
            format!("redis://:s3cret@127.0.0.1:{}", server.port())
        );
        let out = Command::new(REDIS_CLI)
            .args(["-h", "127.0.0.1", "-p", &server.port().to_string(), "PING"])
            .env("REDISCLI_AUTH", "wrong")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("WRONGPASS") || said.contains("NOAUTH"),
            "{said}"
        );
    }

    #[test]
    fn tls_server_needs_its_ca() {
        let server = RedisServer::with_tls();
        assert_eq!(server.cli(&["PING"]), "PONG");
        assert!(server.url().starts_with("rediss://127.0.0.1:"));
        let ca = server.ca_file().expect("a TLS server has a CA");
        assert!(ca.exists());
        // A plain-text client is not answered.
        let out = Command::new(REDIS_CLI)
            .args(["-h", "127.0.0.1", "-p", &server.port().to_string(), "PING"])
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&out.stdout).contains("PONG"));
    }

    #[test]
    fn drop_removes_the_process_and_files() {
        let server = RedisServer::start();
        let dir = server.dir.clone();
        let pid = server.child.as_ref().unwrap().id();
        drop(server);
        assert!(!dir.exists());
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
