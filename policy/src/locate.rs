//! Maps each node of a YAML document to its line and column, by path (`network.allow[2].host`).
//!
//! serde_yaml reports locations for syntax and type errors but not for the semantic checks
//! done after deserialising (an unknown provider, a wildcard host). This index lets those
//! errors point at `FILE:LINE:COL` too. It is built from yaml-rust2's marked event stream,
//! and only consulted when there is an error to report.

use crate::error::{PolicyError, PolicyErrors};
use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Default)]
pub struct LocationIndex {
    nodes: HashMap<String, Location>,
}

impl LocationIndex {
    /// Indexes `text`; a document that does not parse yields an empty index (serde_yaml
    /// reports the syntax error with its own location).
    pub fn build(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return LocationIndex::default();
        }
        LocationIndex {
            nodes: builder.nodes,
        }
    }

    /// The location of `path`, or of its nearest indexed ancestor.
    pub fn find(&self, path: &str) -> Option<Location> {
        let mut path = path;
        loop {
            if let Some(location) = self.nodes.get(path) {
                return Some(*location);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

#[derive(Default)]
struct Builder {
    nodes: HashMap<String, Location>,
    stack: Vec<Frame>,
}

impl Builder {
    fn current_path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Map { key: Some(key) } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                }
                Frame::Map { key: None } => {}
                Frame::Seq { index } => path.push_str(&format!("[{index}]")),
            }
        }
        path
    }

    fn record(&mut self, mark: Marker) {
        let location = Location {
            line: mark.line(),
            column: mark.col() + 1,
        };
        self.nodes.insert(self.current_path(), location);
    }

    /// After a value node is complete, move the parent on to its next key or item.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) => *key = None,
            Some(Frame::Seq { index }) => *index += 1,
            None => {}
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None }))
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(value, ..) if self.expecting_key() => {
                if let Some(Frame::Map { key }) = self.stack.last_mut() {
                    *key = Some(value);
                }
                self.record(mark);
            }
            Event::Scalar(..) | Event::Alias(_) => {
                self.record(mark);
                self.value_done();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) if self.expecting_key() => {
                // A complex key: index nothing under it, but keep the frames balanced.
                if let Some(Frame::Map { key }) = self.stack.last_mut() {
                    *key = Some("?".into());
                }
                let frame = if matches!(event, Event::MappingStart(..)) {
                    Frame::Map { key: None }
                } else {
                    Frame::Seq { index: 0 }
                };
                self.stack.push(frame);
            }
            Event::MappingStart(..) => {
                self.record(mark);
                self.stack.push(Frame::Map { key: None });
            }
            Event::SequenceStart(..) => {
                self.record(mark);
                self.stack.push(Frame::Seq { index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

/// `(rule, message)` problems as policy errors of `file`, each at the line and column of its
/// rule in `text` (the policy's YAML; without it, the errors have no location).
pub fn locate(file: &str, text: Option<&str>, problems: Vec<(String, String)>) -> PolicyErrors {
    let index = text.map(LocationIndex::build).unwrap_or_default();
    PolicyErrors {
        file: file.to_owned(),
        errors: problems
            .into_iter()
            .map(|(path, message)| {
                let location = index.find(&path);
                PolicyError {
                    line: location.map(|l| l.line),
                    column: location.map(|l| l.column),
                    path,
                    message,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version: 1\nteam: acme\nnetwork:\n  allow:\n    - https://a.example\n    - host: \"*.example.com\"\n      allowed_ips: [10.0.0.0/8, 127.0.0.1/32]\n";

    #[test]
    fn finds_scalars_in_maps_and_sequences() {
        let index = LocationIndex::build(DOC);
        assert_eq!(index.find("team"), Some(Location { line: 2, column: 7 }));
        assert_eq!(
            index.find("network.allow[0]"),
            Some(Location { line: 5, column: 7 })
        );
        assert_eq!(
            index.find("network.allow[1].host"),
            Some(Location {
                line: 6,
                column: 13
            })
        );
        assert_eq!(
            index.find("network.allow[1].allowed_ips[1]"),
            Some(Location {
                line: 7,
                column: 33
            })
        );
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        let index = LocationIndex::build(DOC);
        assert_eq!(
            index.find("network.allow[1].ports"),
            index.find("network.allow[1]")
        );
        assert_eq!(index.find("nothing.here"), None);
    }

    #[test]
    fn broken_documents_index_nothing() {
        let index = LocationIndex::build("a: [1, 2\nb: {");
        assert_eq!(index.find("a"), None);
    }
}
