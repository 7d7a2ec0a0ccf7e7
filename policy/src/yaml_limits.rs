//! The shape limits of a policy file — nesting depth, and node count with aliases expanded —
//! checked event by event with an early stop, before the file is parsed in full.
//!
//! Why a separate pass: serde_yaml collects every event of a document before deserialising
//! it, and libyaml (underneath) scans a flow collection by walking its stack of possible
//! simple keys, one per open `[` or `{`, for every token. `x: [[[[…]]]]` therefore costs
//! tokens × depth: 25 000 levels took 1.3 s and 100 000 took 20 s in a release build (83 s in a
//! debug build), all before serde_yaml's own recursion limit of 128 could refuse the
//! document. This pass runs the *same* libyaml parser (no second parser whose reading could
//! differ) one event at a time and stops at the first event past a limit. A simple key is
//! looked for at most one line or 1024 characters ahead, so when the pass stops at depth 65
//! the scanner has opened at most about a thousand more levels: the cost is linear in what
//! was read. Block nesting (`- - - -`) is linear in libyaml but deeper than any policy, so
//! it is refused by the same limit.
//!
//! Aliases (`*a` repeats what `&a` anchored) are counted as what they expand to: serde_yaml
//! replays the anchored events for every alias (it stops at 100 × the event count, which
//! still lets a few hundred bytes of nested aliases — "billion laughs" — replay tens of
//! millions of nodes, each replay of any size). Each anchor's node count and height are
//! recorded when it closes, and an alias adds them where it stands, so both limits hold for
//! the expanded document.

use std::collections::HashMap;
use std::ffi::CStr;
use std::mem::MaybeUninit;

use unsafe_libyaml as unsafe_sys;

/// Deepest nesting of mappings and sequences a policy may use. The schema needs 5 levels
/// (`network.allow[i].rules[j].method`); 64 leaves room for any layout and none for abuse.
pub const MAX_DEPTH: usize = 64;

/// Most nodes (scalars, mappings, sequences; aliases counted as what they repeat) a policy
/// may hold. A 1 MiB file without aliases holds at most about 512 Ki nodes (`[1,1,1,…]`), so
/// this never refuses a file for its size alone, and aliases can at most double the work.
pub const MAX_NODES: u64 = 1 << 20;

/// A limit the document breaks, with the 1-based position of the event that broke it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Checks `text` against [`MAX_DEPTH`] and [`MAX_NODES`]. A syntax error ends the pass
/// without complaint: serde_yaml reports it, with its position, and it sees exactly the
/// events this pass accepted before the error.
pub fn check(text: &str) -> Result<(), Exceeded> {
    let mut parser = Parser::new(text.as_bytes());
    let mut shape = Shape::default();
    while let Some(event) = parser.next() {
        shape.add(event)?;
    }
    Ok(())
}

/// What the pass needs of one event.
enum Event {
    Start { anchor: Option<Vec<u8>> },
    End,
    Scalar { anchor: Option<Vec<u8>> },
    Alias { anchor: Vec<u8> },
    Other,
}

struct Located {
    event: Event,
    line: usize,
    column: usize,
}

/// An open mapping or sequence.
struct Open {
    anchor: Option<Vec<u8>>,
    /// `Shape::nodes` before this collection began.
    nodes_before: u64,
    /// The deepest level reached inside it so far (its own level at least).
    deepest: usize,
}

/// The expanded size and height of an anchored node.
#[derive(Clone, Copy)]
struct Anchored {
    nodes: u64,
    /// Levels of nesting it adds where it is repeated: 0 for a scalar.
    height: usize,
}

#[derive(Default)]
struct Shape {
    nodes: u64,
    open: Vec<Open>,
    anchors: HashMap<Vec<u8>, Anchored>,
}

impl Shape {
    fn add(&mut self, located: Located) -> Result<(), Exceeded> {
        let exceeded = |message: String| Exceeded {
            line: located.line,
            column: located.column,
            message,
        };
        let depth = self.open.len();
        match located.event {
            Event::Start { anchor } => {
                if depth + 1 > MAX_DEPTH {
                    return Err(exceeded(format!(
                        "the document nests deeper than {MAX_DEPTH} levels of mappings and \
                         sequences; a policy needs a handful"
                    )));
                }
                self.open.push(Open {
                    anchor,
                    nodes_before: self.nodes,
                    deepest: depth + 1,
                });
                self.count(1).map_err(exceeded)?;
            }
            Event::End => {
                if let Some(closed) = self.open.pop() {
                    if let Some(parent) = self.open.last_mut() {
                        parent.deepest = parent.deepest.max(closed.deepest);
                    }
                    if let Some(name) = closed.anchor {
                        let anchored = Anchored {
                            nodes: self.nodes - closed.nodes_before,
                            height: closed.deepest - depth + 1,
                        };
                        self.anchors.insert(name, anchored);
                    }
                }
            }
            Event::Scalar { anchor } => {
                if let Some(name) = anchor {
                    self.anchors.insert(
                        name,
                        Anchored {
                            nodes: 1,
                            height: 0,
                        },
                    );
                }
                self.count(1).map_err(exceeded)?;
            }
            Event::Alias { anchor } => {
                // An unknown alias is an error serde_yaml reports; it repeats nothing here.
                let repeated = self.anchors.get(&anchor).copied().unwrap_or(Anchored {
                    nodes: 1,
                    height: 0,
                });
                if depth + repeated.height > MAX_DEPTH {
                    return Err(exceeded(format!(
                        "this alias repeats a node {} levels deep here, deeper than {MAX_DEPTH} \
                         levels of mappings and sequences",
                        depth + repeated.height
                    )));
                }
                if let Some(parent) = self.open.last_mut() {
                    parent.deepest = parent.deepest.max(depth + repeated.height);
                }
                self.count(repeated.nodes).map_err(exceeded)?;
            }
            Event::Other => {}
        }
        Ok(())
    }

    fn count(&mut self, nodes: u64) -> Result<(), String> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > MAX_NODES {
            return Err(format!(
                "the document holds more than {MAX_NODES} nodes with its aliases expanded; a \
                 policy is far smaller (aliases repeating aliases multiply)"
            ));
        }
        Ok(())
    }
}

/// libyaml's event parser over a string, one event at a time.
struct Parser<'a> {
    /// Boxed: libyaml keeps a pointer to the parser itself (its read handler's data).
    sys: Box<MaybeUninit<unsafe_sys::yaml_parser_t>>,
    done: bool,
    _input: &'a [u8],
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8]) -> Self {
        let mut parser = Parser {
            sys: Box::new(MaybeUninit::uninit()),
            done: false,
            _input: input,
        };
        let raw = parser.sys.as_mut_ptr();
        // SAFETY: `raw` points to a boxed, never-moved parser struct; initialize fills it in
        // (it fails only if its first buffers cannot be allocated). The input outlives the
        // parser (`'a`), which libyaml reads in place.
        unsafe {
            if unsafe_sys::yaml_parser_initialize(raw).fail {
                // Nothing was allocated that needs deleting; the pass sees no events.
                parser.done = true;
                return parser;
            }
            unsafe_sys::yaml_parser_set_encoding(raw, unsafe_sys::YAML_UTF8_ENCODING);
            unsafe_sys::yaml_parser_set_input_string(raw, input.as_ptr(), input.len() as u64);
        }
        parser
    }

    /// The next event, or `None` at the end of the stream or at a syntax error.
    fn next(&mut self) -> Option<Located> {
        if self.done {
            return None;
        }
        let raw = self.sys.as_mut_ptr();
        let mut event = MaybeUninit::<unsafe_sys::yaml_event_t>::uninit();
        // SAFETY: the parser was initialised and its input set; `yaml_parser_parse` fills
        // `event` when it succeeds, and the event is read (anchor strings copied) before
        // `yaml_event_delete` frees what it owns.
        unsafe {
            if unsafe_sys::yaml_parser_parse(raw, event.as_mut_ptr()).fail {
                self.done = true;
                return None;
            }
            let event = event.as_mut_ptr();
            let mark = (*event).start_mark;
            let kind = match (*event).type_ {
                unsafe_sys::YAML_STREAM_END_EVENT => {
                    self.done = true;
                    Event::Other
                }
                unsafe_sys::YAML_SEQUENCE_START_EVENT => Event::Start {
                    anchor: anchor((*event).data.sequence_start.anchor),
                },
                unsafe_sys::YAML_MAPPING_START_EVENT => Event::Start {
                    anchor: anchor((*event).data.mapping_start.anchor),
                },
                unsafe_sys::YAML_SEQUENCE_END_EVENT | unsafe_sys::YAML_MAPPING_END_EVENT => {
                    Event::End
                }
                unsafe_sys::YAML_SCALAR_EVENT => Event::Scalar {
                    anchor: anchor((*event).data.scalar.anchor),
                },
                unsafe_sys::YAML_ALIAS_EVENT => Event::Alias {
                    anchor: anchor((*event).data.alias.anchor).unwrap_or_default(),
                },
                _ => Event::Other,
            };
            unsafe_sys::yaml_event_delete(event);
            Some(Located {
                event: kind,
                line: usize::try_from(mark.line)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1),
                column: usize::try_from(mark.column)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1),
            })
        }
    }
}

/// Copies a NUL-terminated anchor name (null: no anchor).
///
/// # Safety
/// `name` is null or points to a NUL-terminated string owned by a live event.
unsafe fn anchor(name: *const u8) -> Option<Vec<u8>> {
    if name.is_null() {
        return None;
    }
    // SAFETY: the caller's contract.
    Some(unsafe { CStr::from_ptr(name.cast()) }.to_bytes().to_vec())
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        // SAFETY: the parser was initialised (`done` before any parse means initialize
        // failed, and then there is nothing to free: libyaml zeroes the struct first).
        unsafe { unsafe_sys::yaml_parser_delete(self.sys.as_mut_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_flow(levels: usize) -> String {
        format!("x: {}{}\n", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn ordinary_documents_pass() {
        check("version: 1\nteam: a\nnetwork:\n  allow:\n    - host: a.example\n      rules:\n        - {method: GET, path: /x}\n").unwrap();
        check(&nested_flow(MAX_DEPTH - 1)).unwrap();
        // Anchors used as a document's author would.
        check("a: &r [{method: GET, path: /x}]\nb: *r\nc: *r\n").unwrap();
    }

    #[test]
    fn the_first_event_past_the_depth_is_refused_with_its_position() {
        let error = check(&nested_flow(MAX_DEPTH)).unwrap_err();
        assert_eq!(
            (error.line, error.column),
            (1, 4 + MAX_DEPTH - 1),
            "{error:?}"
        );
        assert!(error.message.contains("64 levels"), "{error:?}");
        let block = format!("x:\n{}1\n", "- ".repeat(MAX_DEPTH));
        let error = check(&block).unwrap_err();
        assert_eq!(error.line, 2, "{error:?}");
    }

    #[test]
    fn aliases_count_as_what_they_repeat() {
        // Nine aliases of nine aliases of …: 9^7 scalars from a few hundred bytes.
        let mut laughs = String::from("a0: &a0 [l, l, l, l, l, l, l, l, l]\n");
        for i in 1..8 {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            laughs.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let error = check(&laughs).unwrap_err();
        assert!(error.message.contains("aliases"), "{error:?}");
        assert_eq!(error.line, 7, "{error:?}");
        // An alias of a deep node, placed deep, is as deep as both.
        let half = MAX_DEPTH / 2 + 1;
        let deep = format!(
            "a: &d {}{}\nb: {}*d{}\n",
            "[".repeat(half),
            "]".repeat(half),
            "[".repeat(half),
            "]".repeat(half)
        );
        let error = check(&deep).unwrap_err();
        assert!(error.message.contains("alias"), "{error:?}");
    }

    #[test]
    fn syntax_errors_are_left_to_serde_yaml() {
        check("a: [1, 2\nb: {").unwrap();
        check("\u{0}\u{1}").unwrap();
        check("").unwrap();
    }
}
