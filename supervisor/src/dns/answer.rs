//! One DNS message in, at most one response out: the stub resolver's rules as a pure
//! function of the query, the policy's network section and the execution's name table.
//!
//! The rules (contract of #11, `docs/policy.md` "Transparent egress"):
//!
//! * a name the policy could allow ([`Network::could_allow_host`], after the same host
//!   normalisation as URLs: case, IDNA, one trailing dot): `A` → its synthetic address,
//!   TTL 300; `AAAA` and every other type → NOERROR without an answer (NODATA);
//! * any other name, any type → NXDOMAIN (labels the host parser refuses included);
//! * the table is full → SERVFAIL;
//! * opcode other than QUERY → NOTIMP; not exactly one question, class other than IN, or a
//!   message over [`MAX_MESSAGE`] bytes → REFUSED; a message whose header can be read but
//!   not the rest → FORMERR; EDNS of a version other than 0 → BADVERS;
//! * fewer than 12 bytes (no header) or a response (QR set) → no answer at all, so two
//!   resolvers can never be set talking to each other.
//!
//! The question count is checked on the header before the message is parsed, so a 12-byte
//! datagram claiming 65535 questions costs nothing. Every answer is the question plus at
//! most one A record, with names compressed: under 512 bytes even for a 255-byte name, so
//! truncation is never needed.

use super::names::SyntheticNames;
use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tollgate_policy::model::Network;
use tollgate_policy::url::UrlHost;

/// Longest message the resolver reads; longer ones are refused. A query is one name (at
/// most 255 bytes) and an OPT record: nothing legitimate comes close.
pub const MAX_MESSAGE: usize = 4096;
/// TTL of a synthetic answer: addresses are stable for the execution, so a client may
/// cache them as long as it likes; five minutes is the common default.
pub const TTL: u32 = 300;
/// The UDP payload the resolver advertises in its OPT record (RFC 9715's safe size).
const ADVERTISED_PAYLOAD: u16 = 1232;

/// What a response told the client, for the resolver's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An A record with a synthetic address.
    Answered,
    /// NOERROR without an answer: the name exists, not for this type.
    NoData,
    /// NXDOMAIN, REFUSED, NOTIMP, FORMERR, SERVFAIL or BADVERS.
    Refused,
}

/// A response to send back to the asker, and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message: Vec<u8>,
    pub outcome: Outcome,
}

/// The response to `query`, or `None` for a datagram that gets none (no header, or itself
/// a response). `network` is the policy's network section (`None`: the network is off,
/// every name is NXDOMAIN).
pub fn answer(query: &[u8], network: Option<&Network>, names: &SyntheticNames) -> Option<Reply> {
    let header = read_header(query)?;
    if query.len() > MAX_MESSAGE {
        return Some(refusal(&header, ResponseCode::Refused));
    }
    if header.op_code != OpCode::Query {
        return Some(refusal(&header, ResponseCode::NotImp));
    }
    if header.counts.queries != 1 {
        return Some(refusal(&header, ResponseCode::Refused));
    }
    let Ok(request) = Message::from_vec(query) else {
        return Some(refusal(&header, ResponseCode::FormErr));
    };
    let question = request.queries.first()?.clone();
    let mut response = Message::new(request.id, MessageType::Response, request.op_code);
    response.metadata = response_metadata(&request.metadata);
    response.add_query(question.clone());
    if let Some(asked) = &request.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(ADVERTISED_PAYLOAD);
        response.set_edns(edns);
        if asked.version() != 0 {
            return Some(finish(response, ResponseCode::BADVERS, Outcome::Refused));
        }
    }
    if question.query_class() != DNSClass::IN {
        return Some(finish(response, ResponseCode::Refused, Outcome::Refused));
    }
    let allowed = network.and_then(|network| {
        normalised_name(question.name())
            .filter(|name| network.could_allow_host(&UrlHost::Domain(name.clone())))
    });
    let Some(name) = allowed else {
        tracing::debug!(
            name = %question.name().to_ascii(),
            qtype = %question.query_type(),
            "dns: NXDOMAIN for a name the policy cannot allow"
        );
        return Some(finish(response, ResponseCode::NXDomain, Outcome::Refused));
    };
    if question.query_type() != RecordType::A {
        return Some(finish(response, ResponseCode::NoError, Outcome::NoData));
    }
    let Some(address) = names.address_for(&name) else {
        return Some(finish(response, ResponseCode::ServFail, Outcome::Refused));
    };
    response.add_answer(Record::from_rdata(
        question.name().clone(),
        TTL,
        RData::A(A(address)),
    ));
    Some(finish(response, ResponseCode::NoError, Outcome::Answered))
}

/// REFUSED for a message longer than [`MAX_MESSAGE`] of which only `head` (its first bytes,
/// at least the 12 of the header) was read; `None` if not even the header is there.
pub fn refuse_oversized(head: &[u8]) -> Option<Reply> {
    let header = read_header(head)?;
    Some(refusal(&header, ResponseCode::Refused))
}

/// The header of a query, or `None` for fewer than 12 bytes or a response.
fn read_header(message: &[u8]) -> Option<Header> {
    let header = Header::read(&mut BinDecoder::new(message)).ok()?;
    (header.message_type == MessageType::Query).then_some(header)
}

/// ID, opcode, RD and CD copied; AA because the resolver is the authority for every name
/// the sandbox sees; RA so clients that check it take the answer as final.
fn response_metadata(request: &Metadata) -> Metadata {
    let mut metadata = Metadata::response_from_request(request);
    metadata.authoritative = true;
    metadata.recursion_available = true;
    metadata
}

/// A response that is the header alone: for messages whose question was not read.
fn refusal(request: &Header, code: ResponseCode) -> Reply {
    let mut response = Message::new(request.id, MessageType::Response, request.op_code);
    response.metadata = response_metadata(&request.metadata);
    finish(response, code, Outcome::Refused)
}

fn finish(mut response: Message, code: ResponseCode, outcome: Outcome) -> Reply {
    response.metadata.response_code = code;
    match response.to_vec() {
        Ok(message) => Reply { message, outcome },
        // Unreachable: the response holds at most the question read from the query and one
        // A record. Should it happen, the asker still hears SERVFAIL, not silence.
        Err(_) => {
            let mut message = vec![0u8; 12];
            message[..2].copy_from_slice(&response.id.to_be_bytes());
            message[2] = 0x80; // QR
            message[3] = 0x80 | ResponseCode::ServFail.low(); // RA, SERVFAIL
            Reply {
                message,
                outcome: Outcome::Refused,
            }
        }
    }
}

/// The question's name as the policy's host parser normalises it, or `None` if it is no
/// host name: a label holding anything but letters, digits, `-`, `_` or non-ASCII text
/// (for IDNA), a label that is not UTF-8, or what `UrlHost::parse` refuses or reads as an
/// IP address. Labels are checked one by one first, so a dot or a `%` inside a label can
/// never make two labels, or another name, out of one.
fn normalised_name(name: &Name) -> Option<String> {
    let mut text = String::with_capacity(name.len());
    for label in name.iter() {
        let label = std::str::from_utf8(label).ok()?;
        let plain = |b: u8| !b.is_ascii() || b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if !label.bytes().all(plain) {
            return None;
        }
        if !text.is_empty() {
            text.push('.');
        }
        text.push_str(label);
    }
    match UrlHost::parse(&text) {
        Ok(UrlHost::Domain(normal)) => Some(normal),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
