//! The resolver on real sockets bound on 127.0.0.1 in the test process: UDP and TCP by
//! hand with std sockets, `dig` as a real client, the bounds, and the counters, exactly.

use super::{DnsStats, StubResolver, IDLE_TIMEOUT, MAX_TCP_CONNECTIONS};
use crate::dns::SyntheticNames;
use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tollgate_policy::Policy;

/// Only a guard against a hung test: every read below is answered or closed long before.
const FAILSAFE: Duration = Duration::from_secs(30);

/// A resolver for `allow: [https://api.example.com]` on fresh loopback sockets.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    resolver: Option<StubResolver>,
    names: Arc<SyntheticNames>,
    udp: SocketAddr,
    tcp: SocketAddr,
}

impl Fixture {
    fn start() -> Fixture {
        Fixture::on(
            UdpSocket::bind("127.0.0.1:0").expect("udp"),
            std::net::TcpListener::bind("127.0.0.1:0").expect("tcp"),
        )
    }

    /// UDP and TCP on the same port number, as `dig -p` needs.
    fn start_on_one_port() -> Fixture {
        for _ in 0..100 {
            let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
            if let Ok(udp) = UdpSocket::bind(tcp.local_addr().unwrap()) {
                return Fixture::on(udp, tcp);
            }
        }
        panic!("no port free for both UDP and TCP");
    }

    fn on(udp: UdpSocket, tcp: std::net::TcpListener) -> Fixture {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (udp_address, tcp_address) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let policy = Policy::from_yaml(
            "t.yaml",
            "version: 1\nteam: acme\nnetwork:\n  allow: [https://api.example.com]\n",
        )
        .expect("policy");
        let names = Arc::new(SyntheticNames::new());
        let resolver = StubResolver::start(
            runtime.handle(),
            udp,
            tcp,
            Arc::clone(&names),
            Arc::new(policy),
        )
        .expect("start");
        Fixture {
            runtime,
            resolver: Some(resolver),
            names,
            udp: udp_address,
            tcp: tcp_address,
        }
    }

    fn stats(&self) -> DnsStats {
        self.resolver.as_ref().expect("running").stats()
    }

    fn shutdown(&mut self) -> DnsStats {
        let resolver = self.resolver.take().expect("running");
        self.runtime.block_on(resolver.shutdown())
    }
}

fn stats(queries: u64, answered: u64, refused: u64) -> DnsStats {
    DnsStats {
        queries,
        answered,
        refused,
    }
}

fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::new(id, hickory_proto::op::MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    message.to_vec().expect("encode")
}

fn udp_client() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("client");
    socket.set_read_timeout(Some(FAILSAFE)).unwrap();
    socket
}

fn udp_ask(socket: &UdpSocket, resolver: SocketAddr, message: &[u8]) -> Message {
    socket.send_to(message, resolver).expect("send");
    let mut buffer = [0u8; 4096];
    let (length, from) = socket.recv_from(&mut buffer).expect("a response");
    assert_eq!(
        from, resolver,
        "the response comes from the resolver's socket"
    );
    Message::from_vec(&buffer[..length]).expect("parses")
}

fn tcp_client(resolver: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(resolver).expect("connect");
    stream.set_read_timeout(Some(FAILSAFE)).unwrap();
    stream
}

fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(message.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(message);
    out
}

fn tcp_read(stream: &mut TcpStream) -> Message {
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).expect("a length");
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut message).expect("the message");
    Message::from_vec(&message).expect("parses")
}

/// Whether the server closed `stream`: a read ends (EOF or reset) instead of waiting.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Ok(_) => false,
        Err(e) => panic!("no close within the failsafe: {e}"),
    }
}

fn address(response: &Message) -> Option<Ipv4Addr> {
    match response.answers.as_slice() {
        [] => None,
        [record] => match &record.data {
            RData::A(a) => Some(a.0),
            other => panic!("not an A record: {other:?}"),
        },
        more => panic!("{} answers", more.len()),
    }
}

#[test]
fn udp_queries_are_answered_and_counted_exactly() {
    let mut fixture = Fixture::start();
    let client = udp_client();
    // No header: dropped, but counted as a query. The next response proves it was read
    // (one socket, one loop, in order).
    client.send_to(&[1, 2, 3, 4, 5], fixture.udp).unwrap();
    let a = udp_ask(
        &client,
        fixture.udp,
        &query(1, "api.example.com.", RecordType::A),
    );
    assert_eq!(a.id, 1);
    assert_eq!(address(&a), Some(Ipv4Addr::new(127, 77, 0, 1)));
    let aaaa = udp_ask(
        &client,
        fixture.udp,
        &query(2, "api.example.com.", RecordType::AAAA),
    );
    assert_eq!(
        (aaaa.response_code, address(&aaaa)),
        (ResponseCode::NoError, None)
    );
    let txt = udp_ask(
        &client,
        fixture.udp,
        &query(3, "bGVhaw.denied.test.", RecordType::TXT),
    );
    assert_eq!(txt.response_code, ResponseCode::NXDomain);
    let denied = udp_ask(
        &client,
        fixture.udp,
        &query(4, "denied.test.", RecordType::A),
    );
    assert_eq!(denied.response_code, ResponseCode::NXDomain);
    // Over 4096 bytes: REFUSED.
    let mut big = query(5, "api.example.com.", RecordType::A);
    big.resize(5000, 0);
    let refused = udp_ask(&client, fixture.udp, &big);
    assert_eq!(refused.response_code, ResponseCode::Refused);
    assert_eq!(fixture.stats(), stats(6, 1, 3));
    assert_eq!(fixture.names.len(), 1);
    assert_eq!(fixture.shutdown(), stats(6, 1, 3));
}

#[test]
fn tcp_answers_several_queries_per_connection_in_order() {
    let mut fixture = Fixture::start();
    let mut stream = tcp_client(fixture.tcp);
    // Three queries in one write.
    let mut burst = framed(&query(1, "api.example.com.", RecordType::A));
    burst.extend(framed(&query(2, "denied.test.", RecordType::A)));
    burst.extend(framed(&query(3, "API.EXAMPLE.COM.", RecordType::A)));
    stream.write_all(&burst).unwrap();
    let first = tcp_read(&mut stream);
    let second = tcp_read(&mut stream);
    let third = tcp_read(&mut stream);
    assert_eq!((first.id, second.id, third.id), (1, 2, 3));
    assert_eq!(address(&first), Some(Ipv4Addr::new(127, 77, 0, 1)));
    assert_eq!(second.response_code, ResponseCode::NXDomain);
    assert_eq!(address(&third), address(&first));
    // A message over 4096 bytes is read past and refused; the connection goes on.
    let mut big = query(4, "api.example.com.", RecordType::A);
    big.resize(6000, 0);
    stream.write_all(&framed(&big)).unwrap();
    assert_eq!(tcp_read(&mut stream).response_code, ResponseCode::Refused);
    stream
        .write_all(&framed(&query(5, "api.example.com.", RecordType::AAAA)))
        .unwrap();
    let nodata = tcp_read(&mut stream);
    assert_eq!(
        (nodata.id, nodata.response_code),
        (5, ResponseCode::NoError)
    );
    assert_eq!(fixture.stats(), stats(5, 2, 2));
    // A message without a header closes the connection.
    stream.write_all(&framed(&[0, 1, 2])).unwrap();
    assert!(closed_by_server(&mut stream));
    assert_eq!(fixture.shutdown(), stats(6, 2, 2));
}

#[test]
fn tcp_connections_over_the_limit_are_closed() {
    let mut fixture = Fixture::start();
    // Each of the first 16 is answered once, so each is being served.
    let mut served: Vec<TcpStream> = (0..MAX_TCP_CONNECTIONS)
        .map(|i| {
            let mut stream = tcp_client(fixture.tcp);
            let id = u16::try_from(i).unwrap();
            stream
                .write_all(&framed(&query(id, "api.example.com.", RecordType::A)))
                .unwrap();
            assert_eq!(tcp_read(&mut stream).id, id);
            stream
        })
        .collect();
    let mut extra = tcp_client(fixture.tcp);
    assert!(
        closed_by_server(&mut extra),
        "the 17th connection is closed"
    );
    // The 16 are still served.
    for (i, stream) in served.iter_mut().enumerate() {
        let id = 100 + u16::try_from(i).unwrap();
        stream
            .write_all(&framed(&query(id, "api.example.com.", RecordType::A)))
            .unwrap();
        assert_eq!(tcp_read(stream).id, id);
    }
    // Once one closes, a new connection gets its place (as soon as the server has seen
    // the close: until then new ones are closed, so try a bounded number of times).
    drop(served.pop());
    let replacement = (0..1000).find_map(|_| {
        let mut stream = tcp_client(fixture.tcp);
        stream
            .write_all(&framed(&query(7, "api.example.com.", RecordType::A)))
            .ok()?;
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).ok().map(|_| ())
    });
    assert!(
        replacement.is_some(),
        "a freed place is given to a new connection"
    );
    let final_stats = fixture.shutdown();
    assert_eq!(final_stats.answered, final_stats.queries);
    assert!(final_stats.queries >= 33, "{final_stats:?}");
}

#[test]
fn idle_and_slow_tcp_connections_are_closed_after_the_idle_timeout() {
    let fixture = Fixture::start();
    assert_eq!(IDLE_TIMEOUT, Duration::from_secs(10));
    // One connection sends nothing; one sends half a length prefix; one half a message.
    let mut silent = tcp_client(fixture.tcp);
    let mut half_prefix = tcp_client(fixture.tcp);
    half_prefix.write_all(&[0]).unwrap();
    let mut half_message = tcp_client(fixture.tcp);
    let whole = framed(&query(1, "api.example.com.", RecordType::A));
    half_message.write_all(&whole[..whole.len() / 2]).unwrap();
    for stream in [&mut silent, &mut half_prefix, &mut half_message] {
        assert!(closed_by_server(stream));
    }
    assert_eq!(fixture.stats(), stats(0, 0, 0));
}

#[test]
fn shutdown_stops_both_loops_and_every_connection() {
    let mut fixture = Fixture::start();
    let mut stream = tcp_client(fixture.tcp);
    stream
        .write_all(&framed(&query(1, "api.example.com.", RecordType::A)))
        .unwrap();
    assert_eq!(tcp_read(&mut stream).id, 1);
    let client = udp_client();
    udp_ask(
        &client,
        fixture.udp,
        &query(2, "denied.test.", RecordType::A),
    );
    assert_eq!(fixture.shutdown(), stats(2, 1, 1));
    assert!(closed_by_server(&mut stream), "open connections are closed");
    let refused = TcpStream::connect(fixture.tcp).expect_err("the listener is closed");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    // The UDP socket is closed too: its port can be bound again.
    UdpSocket::bind(fixture.udp).expect("the UDP port is free again");
}

/// `dig` output: the status line's code and the answers of `+short`-like lines.
fn dig(fixture: &Fixture, args: &[&str]) -> (String, Vec<String>) {
    let output = Command::new("dig")
        .arg("@127.0.0.1")
        .args(["-p", &fixture.udp.port().to_string()])
        .args(["+tries=1", "+time=10", "+noall", "+comments", "+answer"])
        .args(args)
        .output()
        .expect("dig runs (bind9-dnsutils, installed by scripts/bootstrap.sh)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "dig {args:?}: {text}");
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no status in {text}"))
        .to_owned();
    let answers = text
        .lines()
        .filter(|line| !line.starts_with(';') && !line.trim().is_empty())
        .map(|line| line.split_whitespace().last().unwrap_or("").to_owned())
        .collect();
    (status, answers)
}

#[test]
fn dig_gets_synthetic_answers_over_udp_and_tcp() {
    let mut fixture = Fixture::start_on_one_port();
    let (status, answers) = dig(&fixture, &["api.example.com", "A"]);
    assert_eq!(
        (status.as_str(), answers),
        ("NOERROR", vec!["127.77.0.1".to_owned()])
    );
    let (status, answers) = dig(&fixture, &["+tcp", "API.example.com.", "A"]);
    assert_eq!(
        (status.as_str(), answers),
        ("NOERROR", vec!["127.77.0.1".to_owned()])
    );
    let (status, answers) = dig(&fixture, &["api.example.com", "AAAA"]);
    assert_eq!((status.as_str(), answers.len()), ("NOERROR", 0));
    let (status, answers) = dig(&fixture, &["secret-data.denied.test", "TXT"]);
    assert_eq!((status.as_str(), answers.len()), ("NXDOMAIN", 0));
    let (status, _) = dig(&fixture, &["+tcp", "version.bind", "TXT", "CH"]);
    assert_eq!(status, "REFUSED");
    assert_eq!(fixture.shutdown(), stats(5, 2, 2));
}
