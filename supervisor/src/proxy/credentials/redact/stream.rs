//! Redaction of a body that streams: echoed secrets replaced chunk by chunk, so that an event
//! stream or a gRPC call from a credential scope reaches the sandbox as it arrives instead of
//! being held until it ends (which an event stream never does).
//!
//! An upstream's chunks fall wherever they fall, a secret across two of them included. The
//! redactor searches as [`Needles::replace`] does over the whole body, leftmost match first,
//! and hands on every byte it has decided; it holds back only the bytes from the first place
//! where a secret may begin and the text runs out before it could tell ([`Needles::open_at`]),
//! at most the longest spelling of a secret less one byte. So an event that cannot be the start
//! of a secret is not delayed at all, and the output is the same, byte for byte, as redacting
//! the whole body at once (a property test below says so for any chunking). At the end of the
//! body what is held back is searched as the end of the text and handed on.
//!
//! gRPC frames each message with its length, so a replacement that changed the length would
//! break the stream: there ([`Replacement::SameLength`]) every byte of a match becomes `*`.

use super::{Needles, REDACTED};
use bytes::{Bytes, BytesMut};

/// What a secret found in a streamed body becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replacement {
    /// [`REDACTED`], whatever the secret's length.
    Text,
    /// As many `*` as the secret's spelling had bytes (length-prefixed messages: gRPC).
    SameLength,
}

/// One body's streaming redactor.
pub(crate) struct StreamRedactor {
    needles: Needles,
    replacement: Replacement,
    /// Bytes received but not decided yet: a secret may begin in them.
    held: Bytes,
    /// How many secrets were replaced so far.
    found: usize,
}

impl StreamRedactor {
    pub fn new(needles: Needles, replacement: Replacement) -> StreamRedactor {
        StreamRedactor {
            needles,
            replacement,
            held: Bytes::new(),
            found: 0,
        }
    }

    /// What it searches for (the trailers of its body are searched for the same).
    pub fn needles(&self) -> &Needles {
        &self.needles
    }

    /// Whether the body keeps its length ([`Replacement::SameLength`]).
    pub fn keeps_length(&self) -> bool {
        self.replacement == Replacement::SameLength
    }

    /// How many secrets were replaced so far.
    pub fn found(&self) -> usize {
        self.found
    }

    /// How many bytes are held back, waiting for the next chunk.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes the next chunk of the body and returns what can be handed on now (possibly
    /// nothing); the rest is held for the next chunk or [`StreamRedactor::finish`].
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        let text = if self.held.is_empty() {
            chunk
        } else {
            let mut joined = BytesMut::with_capacity(self.held.len() + chunk.len());
            joined.extend_from_slice(&self.held);
            joined.extend_from_slice(&chunk);
            joined.freeze()
        };
        self.redact(text, false)
    }

    /// The body ended: what was held back, searched as the end of the text.
    pub fn finish(&mut self) -> Bytes {
        let text = std::mem::take(&mut self.held);
        self.redact(text, true)
    }

    /// Decides `text` from its start: every match replaced, every other byte handed on, up to
    /// the first place that cannot be decided before more text comes (unless `end`).
    fn redact(&mut self, text: Bytes, end: bool) -> Bytes {
        // From here on every place has the bytes a decision may need after it.
        let window = self.needles.longest_spelling();
        let undecided_from = text.len().saturating_sub(window);
        let mut out: Option<BytesMut> = None;
        let mut copied = 0;
        let mut at = 0;
        while at < text.len() {
            if !end && at >= undecided_from && self.needles.open_at(&text, at) {
                break;
            }
            match self.needles.match_at(&text, at) {
                Some(length) => {
                    let buffer = out.get_or_insert_with(|| BytesMut::with_capacity(text.len()));
                    buffer.extend_from_slice(&text[copied..at]);
                    match self.replacement {
                        Replacement::Text => buffer.extend_from_slice(REDACTED.as_bytes()),
                        Replacement::SameLength => buffer.resize(buffer.len() + length, b'*'),
                    }
                    self.found += 1;
                    at += length;
                    copied = at;
                }
                None => at += 1,
            }
        }
        self.held = text.slice(at..);
        match out {
            None => text.slice(..at),
            Some(mut buffer) => {
                buffer.extend_from_slice(&text[copied..at]);
                buffer.freeze()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn needles(secrets: &[&str]) -> Needles {
        Needles::new(secrets.iter().map(|s| s.as_bytes().to_vec()).collect())
    }

    /// The body fed in `chunks`, everything handed on joined, with what each push returned.
    fn stream(needles: &Needles, mode: Replacement, chunks: &[&[u8]]) -> (Vec<u8>, Vec<Bytes>) {
        let mut redactor = StreamRedactor::new(needles.clone(), mode);
        let mut pieces: Vec<Bytes> = chunks
            .iter()
            .map(|c| redactor.push(Bytes::copy_from_slice(c)))
            .collect();
        pieces.push(redactor.finish());
        assert_eq!(redactor.held(), 0);
        (pieces.concat(), pieces)
    }

    fn whole(needles: &Needles, body: &[u8]) -> Vec<u8> {
        needles
            .replace(body, REDACTED.as_bytes())
            .unwrap_or_else(|| body.to_vec())
    }

    #[test]
    fn a_secret_split_across_chunks_is_found() {
        let n = needles(&["s3cret-token"]);
        let (out, pieces) = stream(&n, Replacement::Text, &[b"a=s3cr", b"et-to", b"ken;b"]);
        assert_eq!(out, b"a=[redacted by tollgate];b");
        // `a=` is handed on at once; `s3cr` waits for the rest.
        assert_eq!(pieces[0], "a=");
        // Its escaped spelling, split inside an escape.
        let (out, _) = stream(&n, Replacement::Text, &[b"x s3cret%", b"2Dtoken y"]);
        assert_eq!(out, b"x [redacted by tollgate] y");
        let (out, _) = stream(&n, Replacement::Text, &[b"s3cret\\u", b"002dtoken"]);
        assert_eq!(out, b"[redacted by tollgate]");
    }

    #[test]
    fn text_that_cannot_begin_a_secret_is_not_held_back() {
        let n = needles(&["s3cret-token"]);
        let mut redactor = StreamRedactor::new(n, Replacement::Text);
        assert_eq!(
            redactor.push(Bytes::from_static(b"data: one\n\n")),
            "data: one\n\n"
        );
        assert_eq!(redactor.held(), 0);
        // A near miss is handed on as soon as it cannot be a secret any more.
        assert_eq!(redactor.push(Bytes::from_static(b"s3cre")), "");
        assert_eq!(redactor.push(Bytes::from_static(b"x")), "s3crex");
        // An escape the text ends inside is held until it is read whole.
        assert_eq!(redactor.push(Bytes::from_static(b"50%")), "50");
        assert_eq!(redactor.push(Bytes::from_static(b"25 off")), "%25 off");
    }

    #[test]
    fn overlapping_secrets_take_the_longest_at_the_leftmost_place() {
        let n = needles(&["tok", "Bearer tok", "toke"]);
        let body: &[u8] = b"Bearer tok, toke, tok, Bearer+to";
        for split in 0..=body.len() {
            let (out, _) = stream(&n, Replacement::Text, &[&body[..split], &body[split..]]);
            assert_eq!(out, whole(&n, body), "split at {split}");
        }
        assert_eq!(
            String::from_utf8(whole(&n, body)).unwrap(),
            "[redacted by tollgate], [redacted by tollgate], [redacted by tollgate], Bearer+to"
        );
    }

    #[test]
    fn a_secret_at_the_very_end_is_found_when_the_body_ends() {
        let n = needles(&["tok3n"]);
        let (out, pieces) = stream(&n, Replacement::Text, &[b"last: tok", b"3n"]);
        assert_eq!(out, b"last: [redacted by tollgate]");
        // Spelled out whole, it needs no more text: it goes with the push that completed it.
        assert_eq!(pieces[1], "[redacted by tollgate]");
        // A prefix of a secret at the end is not a secret: handed on when the body ends.
        let (out, pieces) = stream(&n, Replacement::Text, &[b"last: tok3"]);
        assert_eq!(out, b"last: tok3");
        assert_eq!(pieces[0], "last: ");
        assert_eq!(pieces[1], "tok3");
    }

    #[test]
    fn empty_chunks_and_no_needles_change_nothing() {
        let n = needles(&["tok3n"]);
        let (out, _) = stream(&n, Replacement::Text, &[b"", b"a tok", b"", b"3n b", b""]);
        assert_eq!(out, b"a [redacted by tollgate] b");
        let none = needles(&[]);
        let (out, pieces) = stream(&none, Replacement::Text, &[b"tok3n", b""]);
        assert_eq!(out, b"tok3n");
        assert_eq!(pieces[0], "tok3n");
    }

    #[test]
    fn same_length_keeps_every_byte_count() {
        let n = needles(&["s3cret/x"]);
        let body: &[u8] = b"\x00\x00\x00\x00\x14id=s3cret%2Fx;s3cret\\/x!";
        let (out, _) = stream(&n, Replacement::SameLength, &[&body[..9], &body[9..]]);
        assert_eq!(out.len(), body.len());
        assert_eq!(
            out,
            b"\x00\x00\x00\x00\x14id=**********;*********!".to_vec()
        );
        let mut redactor = StreamRedactor::new(n, Replacement::SameLength);
        redactor.push(Bytes::copy_from_slice(body));
        redactor.finish();
        assert_eq!(redactor.found(), 2);
    }

    proptest! {
        /// Streaming in any chunks gives what redacting the whole body gives.
        #[test]
        fn streaming_equals_whole_body_redaction(
            body in proptest::collection::vec(
                prop_oneof![
                    Just(b'a'), Just(b'b'), Just(b'%'), Just(b'\\'), Just(b'+'), Just(b' '),
                    Just(b'u'), Just(b'0'), Just(b'2'), Just(b'6'), Just(b'/'), any::<u8>(),
                ],
                0..120,
            ),
            secrets in proptest::collection::vec("[ab /%\\\\]{1,4}", 1..4),
            cuts in proptest::collection::vec(0usize..120, 0..8),
        ) {
            let mut body = body;
            // Plant real spellings so matches are common.
            for secret in &secrets {
                body.extend_from_slice(secret.as_bytes());
                body.extend_from_slice(b"%61\\u0062+");
            }
            let n = Needles::new(secrets.iter().map(|s| s.as_bytes().to_vec()).collect());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut from = 0;
            for cut in cuts {
                chunks.push(&body[from..cut]);
                from = cut;
            }
            chunks.push(&body[from..]);
            let (out, _) = stream(&n, Replacement::Text, &chunks);
            prop_assert_eq!(out, whole(&n, &body));
            let (same, _) = stream(&n, Replacement::SameLength, &chunks);
            prop_assert_eq!(same.len(), body.len());
        }
    }
}
