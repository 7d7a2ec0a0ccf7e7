//! The stub resolver's rules, one by one, and what it does with hostile messages: every
//! query is built byte by byte, every response read back with hickory's decoder.

use super::{answer, refuse_oversized, Outcome, Reply, MAX_MESSAGE, TTL};
use crate::dns::SyntheticNames;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RData};
use proptest::prelude::*;
use std::net::Ipv4Addr;
use tollgate_policy::model::Network;
use tollgate_policy::Policy;

const A: u16 = 1;
const MX: u16 = 15;
const TXT: u16 = 16;
const AAAA: u16 = 28;
const ANY: u16 = 255;
const IN: u16 = 1;
const CH: u16 = 3;

fn network(section: &str) -> Network {
    let yaml = format!("version: 1\nteam: acme\nnetwork:\n{section}");
    Policy::from_yaml("t.yaml", &yaml)
        .expect("policy")
        .network
        .expect("network")
}

fn allow_api() -> Network {
    network("  allow:\n    - https://api.example.com/v1\n    - host: '*.svc.example.org'\n      ports: [8443]\n    - host: bücher.example\n    - host: 10.1.2.3\n      allowed_ips: [10.1.2.0/24]\n")
}

/// A name on the wire from its labels, uncompressed, ending in the root label.
fn wire_name(labels: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for label in labels {
        out.push(u8::try_from(label.len()).expect("short label"));
        out.extend_from_slice(label);
    }
    out.push(0);
    out
}

fn dotted(name: &str) -> Vec<u8> {
    let labels: Vec<&[u8]> = name
        .trim_end_matches('.')
        .split('.')
        .map(str::as_bytes)
        .collect();
    wire_name(&labels)
}

/// A header: ID 0x1234, the given flags byte (QR, opcode, AA, TC, RD), and the counts.
fn header(flags: u8, qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
    let mut out = vec![0x12, 0x34, flags, 0x00];
    for count in [qd, an, ns, ar] {
        out.extend_from_slice(&count.to_be_bytes());
    }
    out
}

const RD: u8 = 0x01;

/// A standard query (RD set) for one name on the wire.
fn query_wire(name: &[u8], qtype: u16, class: u16) -> Vec<u8> {
    let mut out = header(RD, 1, 0, 0, 0);
    out.extend_from_slice(name);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&class.to_be_bytes());
    out
}

fn query(name: &str, qtype: u16) -> Vec<u8> {
    query_wire(&dotted(name), qtype, IN)
}

/// An OPT record for the additional section: root name, payload, version, no options.
fn opt(payload: u16, version: u8) -> Vec<u8> {
    let mut out = vec![0x00, 0x00, 41];
    out.extend_from_slice(&payload.to_be_bytes());
    out.extend_from_slice(&[0, version, 0, 0, 0, 0]);
    out
}

fn with_edns(mut query: Vec<u8>, opts: &[Vec<u8>]) -> Vec<u8> {
    query[11] = u8::try_from(opts.len()).expect("few");
    for record in opts {
        query.extend_from_slice(record);
    }
    query
}

fn reply(network: Option<&Network>, names: &SyntheticNames, query: &[u8]) -> (Message, Outcome) {
    let Reply { message, outcome } = answer(query, network, names).expect("a response");
    assert!(message.len() <= 512, "{} bytes", message.len());
    let response = Message::from_vec(&message).expect("the response parses");
    assert_eq!(response.id, 0x1234);
    assert_eq!(response.message_type, MessageType::Response);
    (response, outcome)
}

fn addresses(response: &Message) -> Vec<Ipv4Addr> {
    response
        .answers
        .iter()
        .map(|record| match &record.data {
            RData::A(a) => a.0,
            other => panic!("not an A record: {other:?}"),
        })
        .collect()
}

#[track_caller]
fn assert_code(
    network: Option<&Network>,
    query: &[u8],
    code: ResponseCode,
    outcome: Outcome,
) -> Message {
    let names = SyntheticNames::new();
    let (response, got) = reply(network, &names, query);
    assert_eq!(response.response_code, code, "{response:?}");
    assert_eq!(got, outcome);
    assert!(response.answers.is_empty(), "{response:?}");
    assert_eq!(names.len(), 0, "no address was handed out");
    response
}

#[test]
fn an_allowed_name_gets_a_synthetic_address_with_the_question_echoed() {
    let net = allow_api();
    let names = SyntheticNames::new();
    let (response, outcome) = reply(Some(&net), &names, &query("API.Example.com", A));
    assert_eq!(outcome, Outcome::Answered);
    assert_eq!(response.response_code, ResponseCode::NoError);
    assert_eq!(response.op_code, OpCode::Query);
    assert!(response.authoritative && response.recursion_available);
    assert!(response.recursion_desired, "RD is copied");
    assert!(!response.truncation);
    assert_eq!(addresses(&response), vec![Ipv4Addr::new(127, 77, 0, 1)]);
    let record = &response.answers[0];
    assert_eq!(record.ttl, TTL);
    assert_eq!(record.dns_class, DNSClass::IN);
    // The question and the answer's owner come back as asked (0x20 case checks pass).
    assert_eq!(response.queries.len(), 1);
    assert_eq!(response.queries[0].name().to_ascii(), "API.Example.com.");
    assert_eq!(record.name.to_ascii(), "API.Example.com.");
    // The table holds the normalised name.
    assert_eq!(
        names.name_of(Ipv4Addr::new(127, 77, 0, 1)).as_deref(),
        Some("api.example.com")
    );
}

#[test]
fn spellings_of_one_name_get_one_address_and_new_names_the_next() {
    let net = allow_api();
    let names = SyntheticNames::new();
    let first = addresses(&reply(Some(&net), &names, &query("api.example.com", A)).0);
    let again = addresses(&reply(Some(&net), &names, &query("API.EXAMPLE.COM.", A)).0);
    assert_eq!(first, again);
    let wildcard = addresses(&reply(Some(&net), &names, &query("a.svc.example.org", A)).0);
    assert_eq!(wildcard, vec![Ipv4Addr::new(127, 77, 0, 2)]);
    // IDNA as in URLs: the UTF-8 label and its punycode are one name.
    let unicode = wire_name(&["bücher".as_bytes(), b"example"]);
    let idn = addresses(&reply(Some(&net), &names, &query_wire(&unicode, A, IN)).0);
    let puny = addresses(&reply(Some(&net), &names, &query("xn--bcher-kva.example", A)).0);
    assert_eq!(idn, vec![Ipv4Addr::new(127, 77, 0, 3)]);
    assert_eq!(idn, puny);
    assert_eq!(
        names.name_of(Ipv4Addr::new(127, 77, 0, 3)).as_deref(),
        Some("xn--bcher-kva.example")
    );
    assert_eq!(names.len(), 3);
}

#[test]
fn other_types_for_an_allowed_name_get_no_data_and_no_address() {
    let net = allow_api();
    for qtype in [AAAA, TXT, MX, ANY, 65] {
        let response = assert_code(
            Some(&net),
            &query("api.example.com", qtype),
            ResponseCode::NoError,
            Outcome::NoData,
        );
        assert_eq!(u16::from(response.queries[0].query_type()), qtype);
    }
}

#[test]
fn names_the_policy_cannot_allow_are_nxdomain_for_every_type() {
    let net = allow_api();
    for name in [
        "denied.test",
        "example.com",
        "www.api.example.com",
        "svc.example.org",
        "a.b.svc.example.org",
        // Data in the labels of a TXT query: refused, nothing handed out, nothing forwarded.
        "c2VjcmV0LXRva2VuLTEyMzQ1.exfil.attacker.example",
    ] {
        for qtype in [A, AAAA, TXT, ANY] {
            assert_code(
                Some(&net),
                &query(name, qtype),
                ResponseCode::NXDomain,
                Outcome::Refused,
            );
        }
    }
    // The network off: every name.
    assert_code(
        None,
        &query("api.example.com", A),
        ResponseCode::NXDomain,
        Outcome::Refused,
    );
    // The root.
    assert_code(
        Some(&net),
        &query_wire(&[0], A, IN),
        ResponseCode::NXDomain,
        Outcome::Refused,
    );
}

#[test]
fn addresses_spelt_as_names_are_nxdomain_even_when_an_ip_entry_allows_them() {
    let net = allow_api();
    let all = network("  allow_all: true\n");
    for name in [
        "10.1.2.3",
        "10.1.2.3.",
        "0x0a.1.2.3",
        "167838211",
        "127.1",
        "1.2.3.4",
    ] {
        for policy in [&net, &all] {
            assert_code(
                Some(policy),
                &query(name, A),
                ResponseCode::NXDomain,
                Outcome::Refused,
            );
        }
    }
}

#[test]
fn labels_the_host_parser_would_read_differently_are_nxdomain() {
    let net = allow_api();
    let nx = |name: &[u8]| {
        assert_code(
            Some(&net),
            &query_wire(name, A, IN),
            ResponseCode::NXDomain,
            Outcome::Refused,
        )
    };
    // A dot inside a label is not two labels.
    nx(&wire_name(&[b"api.example", b"com"]));
    // Percent-escapes, which the URL host parser would decode.
    nx(&wire_name(&[b"%61pi", b"example", b"com"]));
    // Bytes that are not UTF-8, NUL, spaces, a wildcard label, a slash.
    nx(&wire_name(&[b"\xff\xfe", b"example", b"com"]));
    nx(&wire_name(&[b"api\0", b"example", b"com"]));
    nx(&wire_name(&[b"a i", b"example", b"com"]));
    nx(&wire_name(&[b"*", b"svc", b"example", b"org"]));
    nx(&wire_name(&[b"a/b", b"svc", b"example", b"org"]));
}

#[test]
fn allow_all_answers_public_style_names_and_refuses_local_ones() {
    let all = network("  allow_all: true\n");
    let names = SyntheticNames::new();
    for (i, name) in ["example.com", "deep.sub.example.org", "under_score.example"]
        .iter()
        .enumerate()
    {
        let (response, outcome) = reply(Some(&all), &names, &query(name, A));
        assert_eq!(outcome, Outcome::Answered, "{name}");
        let octet = u8::try_from(i + 1).expect("few");
        assert_eq!(addresses(&response), vec![Ipv4Addr::new(127, 77, 0, octet)]);
    }
    for name in [
        "localhost",
        "intranet",
        "a.localhost",
        "printer.local",
        "4.3.2.1.in-addr.arpa",
        "b.a.9.8.ip6.arpa",
    ] {
        assert_code(
            Some(&all),
            &query(name, A),
            ResponseCode::NXDomain,
            Outcome::Refused,
        );
    }
}

#[test]
fn a_full_table_gets_servfail_and_known_names_keep_their_address() {
    let all = network("  allow_all: true\n");
    let names = SyntheticNames::new();
    for i in 0..SyntheticNames::CAPACITY {
        names.address_for(&format!("n{i}.example")).expect("room");
    }
    let (response, outcome) = reply(Some(&all), &names, &query("new.example", A));
    assert_eq!(response.response_code, ResponseCode::ServFail);
    assert_eq!(outcome, Outcome::Refused);
    assert!(response.answers.is_empty());
    let (response, outcome) = reply(Some(&all), &names, &query("n0.example", A));
    assert_eq!(outcome, Outcome::Answered);
    assert_eq!(addresses(&response), vec![Ipv4Addr::new(127, 77, 0, 1)]);
    // NODATA needs no address: still NODATA.
    let (_, outcome) = reply(Some(&all), &names, &query("new.example", AAAA));
    assert_eq!(outcome, Outcome::NoData);
}

#[test]
fn opcodes_other_than_query_are_not_implemented() {
    let net = allow_api();
    for opcode in [1u8, 2, 4, 5, 6, 15] {
        let mut message = query("api.example.com", A);
        message[2] = (opcode << 3) | RD;
        let response = assert_code(Some(&net), &message, ResponseCode::NotImp, Outcome::Refused);
        assert_eq!(u8::from(response.op_code), opcode);
        assert!(response.queries.is_empty(), "header only");
    }
}

#[test]
fn other_classes_and_question_counts_are_refused() {
    let net = allow_api();
    for class in [CH, 4, ANY, 254] {
        let response = assert_code(
            Some(&net),
            &query_wire(&dotted("api.example.com"), A, class),
            ResponseCode::Refused,
            Outcome::Refused,
        );
        assert_eq!(response.queries.len(), 1, "the question is echoed");
    }
    // `version.bind CH TXT`, the classic fingerprinting probe.
    assert_code(
        Some(&net),
        &query_wire(&dotted("version.bind"), TXT, CH),
        ResponseCode::Refused,
        Outcome::Refused,
    );
    // No question.
    assert_code(
        Some(&net),
        &header(RD, 0, 0, 0, 0),
        ResponseCode::Refused,
        Outcome::Refused,
    );
    // Two questions, both for allowed names.
    let mut two = header(RD, 2, 0, 0, 0);
    for _ in 0..2 {
        two.extend_from_slice(&dotted("api.example.com"));
        two.extend_from_slice(&A.to_be_bytes());
        two.extend_from_slice(&IN.to_be_bytes());
    }
    assert_code(Some(&net), &two, ResponseCode::Refused, Outcome::Refused);
    // 65535 questions claimed by a 12-byte datagram: refused on the header, nothing read.
    assert_code(
        Some(&net),
        &header(RD, u16::MAX, 0, 0, 0),
        ResponseCode::Refused,
        Outcome::Refused,
    );
}

#[test]
fn no_header_or_a_response_gets_no_answer() {
    let net = allow_api();
    let names = SyntheticNames::new();
    for short in [
        &[][..],
        &[0x12],
        &[0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0],
    ] {
        assert_eq!(answer(short, Some(&net), &names), None);
    }
    let mut response = query("api.example.com", A);
    response[2] |= 0x80;
    assert_eq!(answer(&response, Some(&net), &names), None);
    assert_eq!(refuse_oversized(&response), None);
    assert_eq!(names.len(), 0);
}

#[test]
fn a_readable_header_with_a_broken_body_is_formerr() {
    let net = allow_api();
    let formerr = |message: &[u8]| {
        let response = assert_code(Some(&net), message, ResponseCode::FormErr, Outcome::Refused);
        assert!(response.queries.is_empty());
    };
    // The header promises a question that is not there, or is cut short.
    formerr(&header(RD, 1, 0, 0, 0));
    let whole = query("api.example.com", A);
    for cut in [13, 16, whole.len() - 4, whole.len() - 1] {
        formerr(&whole[..cut]);
    }
    // A label length past the end; the reserved label types 0x40 and 0x80.
    let mut past = header(RD, 1, 0, 0, 0);
    past.extend_from_slice(&[63, b'a', b'b']);
    formerr(&past);
    for reserved in [0x40u8, 0x80] {
        let mut message = header(RD, 1, 0, 0, 0);
        message.extend_from_slice(&[reserved, 0, 0, 1, 0, 1]);
        formerr(&message);
    }
    // Records promised in the other sections that are not there.
    let mut more = query("api.example.com", A);
    more[6..12].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    formerr(&more);
}

#[test]
fn compression_pointers_to_self_forward_and_in_loops_are_formerr() {
    let net = allow_api();
    let with_name = |name: &[u8]| {
        let mut message = header(RD, 1, 0, 0, 0);
        message.extend_from_slice(name);
        message.extend_from_slice(&A.to_be_bytes());
        message.extend_from_slice(&IN.to_be_bytes());
        message
    };
    // The name at offset 12 points at offset 12.
    let to_self = with_name(&[0xc0, 12]);
    // Forward, past the pointer.
    let forward = with_name(&[0xc0, 20, 0, 0, 0, 0, 0, 0, 3, b'c', b'o', b'm', 0]);
    // A label, then a pointer back to that label: a loop through one label.
    let looped = with_name(&[1, b'a', 0xc0, 12]);
    // Past the end of the message.
    let beyond = with_name(&[0xc3, 0xff]);
    for message in [to_self, forward, looped, beyond] {
        assert_code(
            Some(&net),
            &message,
            ResponseCode::FormErr,
            Outcome::Refused,
        );
    }
}

#[test]
fn names_over_255_bytes_are_formerr_and_the_longest_answer_fits_512_bytes() {
    let all = network("  allow_all: true\n");
    let label = [b'a'; 63];
    // 4 × 64 + 1 = 257 bytes on the wire.
    let long = wire_name(&[&label, &label, &label, &label]);
    assert_code(
        Some(&all),
        &query_wire(&long, A, IN),
        ResponseCode::FormErr,
        Outcome::Refused,
    );
    // Many one-letter labels, 300 bytes.
    let many: Vec<&[u8]> = std::iter::repeat_n(&b"a"[..], 150).collect();
    assert_code(
        Some(&all),
        &query_wire(&wire_name(&many), A, IN),
        ResponseCode::FormErr,
        Outcome::Refused,
    );
    // The longest name the parsers take (253 characters): answered, with EDNS, in one
    // datagram a plain 512-byte client accepts (`reply` checks the size).
    let last = [b'b'; 61];
    let longest = wire_name(&[&label, &label, &label, &last]);
    let names = SyntheticNames::new();
    let message = with_edns(query_wire(&longest, A, IN), &[opt(4096, 0)]);
    let (response, outcome) = reply(Some(&all), &names, &message);
    assert_eq!(outcome, Outcome::Answered);
    assert_eq!(addresses(&response), vec![Ipv4Addr::new(127, 77, 0, 1)]);
    assert_eq!(
        names.name_of(Ipv4Addr::new(127, 77, 0, 1)).map(|n| n.len()),
        Some(253)
    );
}

#[test]
fn edns_is_answered_with_edns_and_other_versions_with_badvers() {
    let net = allow_api();
    let names = SyntheticNames::new();
    let message = with_edns(query("api.example.com", A), &[opt(4096, 0)]);
    let (response, outcome) = reply(Some(&net), &names, &message);
    assert_eq!(outcome, Outcome::Answered);
    let edns = response
        .edns
        .as_ref()
        .expect("an OPT record in the response");
    assert_eq!(edns.version(), 0);
    assert_eq!(edns.max_payload(), 1232);
    // Without EDNS in the query, none in the response.
    let (response, _) = reply(Some(&net), &names, &query("api.example.com", A));
    assert!(response.edns.is_none());
    // A version this resolver does not speak.
    let message = with_edns(query("api.example.com", A), &[opt(4096, 1)]);
    let (response, outcome) = reply(Some(&net), &names, &message);
    // BADVERS is 16 (which hickory reads back as BADSIG, the same number).
    assert_eq!(u16::from(response.response_code), 16);
    assert_eq!(outcome, Outcome::Refused);
    assert!(response.answers.is_empty());
    assert_eq!(response.edns.as_ref().map(|e| e.version()), Some(0));
    // Two OPT records.
    let message = with_edns(query("api.example.com", A), &[opt(4096, 0), opt(512, 0)]);
    assert_code(
        Some(&net),
        &message,
        ResponseCode::FormErr,
        Outcome::Refused,
    );
}

#[test]
fn messages_over_4096_bytes_are_refused() {
    let net = allow_api();
    let mut message = query("api.example.com", A);
    message.resize(MAX_MESSAGE + 1, 0);
    assert_code(
        Some(&net),
        &message,
        ResponseCode::Refused,
        Outcome::Refused,
    );
    // Exactly 4096 is read (the trailing zeros are ignored).
    message.truncate(MAX_MESSAGE);
    let names = SyntheticNames::new();
    assert_eq!(reply(Some(&net), &names, &message).1, Outcome::Answered);
    // What the TCP server does with a longer one: the header alone.
    let Reply { message, outcome } = refuse_oversized(&message[..12]).expect("a response");
    let response = Message::from_vec(&message).expect("parses");
    assert_eq!(response.response_code, ResponseCode::Refused);
    assert_eq!(outcome, Outcome::Refused);
    assert_eq!(refuse_oversized(&[0x12, 0x34]), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any bytes: no panic, and whatever comes back is a response to that ID.
    #[test]
    fn random_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let net = network("  allow_all: true\n");
        let names = SyntheticNames::new();
        if let Some(Reply { message, .. }) = answer(&bytes, Some(&net), &names) {
            let response = Message::from_vec(&message).expect("the response parses");
            prop_assert_eq!(response.message_type, MessageType::Response);
            prop_assert_eq!(&message[..2], &bytes[..2]);
        }
    }

    /// A real query with bytes overwritten: the cases that get past the header.
    #[test]
    fn mutated_queries_never_panic(
        edits in proptest::collection::vec((12usize..60, any::<u8>()), 1..8),
        cut in 12usize..70,
    ) {
        let net = allow_api();
        let names = SyntheticNames::new();
        let mut message = with_edns(query("a.svc.example.org", A), &[opt(1232, 0)]);
        for (at, byte) in edits {
            if let Some(slot) = message.get_mut(at) {
                *slot = byte;
            }
        }
        message.truncate(cut);
        if let Some(Reply { message: response, .. }) = answer(&message, Some(&net), &names) {
            let response = Message::from_vec(&response).expect("the response parses");
            prop_assert_eq!(response.id, 0x1234);
            prop_assert!(response.answers.len() <= 1);
        }
    }
}
