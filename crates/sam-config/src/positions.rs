//! Where each key and value of a YAML document sits, so that problems found on the parsed
//! value can be reported with a line and column.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// Render a path as a dotted key: `training.scheduler.kind`, `model.freeze[1]`.
pub(crate) fn dotted(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Split a dotted key (as produced by [`dotted`]) back into a path.
pub(crate) fn parse_dotted(key: &str) -> Vec<Seg> {
    let mut path = Vec::new();
    for part in key.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if !name.is_empty() {
            path.push(Seg::Key(name.to_owned()));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some(end) = stripped.find(']') else { break };
            if let Ok(i) = stripped[..end].parse() {
                path.push(Seg::Index(i));
            }
            rest = &stripped[end + 1..];
        }
    }
    path
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub(crate) const START: Pos = Pos { line: 1, column: 1 };

    fn from_marker(m: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Pos {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// Positions of the nodes of one YAML document.
#[derive(Debug, Default)]
pub(crate) struct PositionIndex {
    /// Position of each node's value.
    values: HashMap<Vec<Seg>, Pos>,
    /// Position of the key that introduces each mapping entry.
    keys: HashMap<Vec<Seg>, Pos>,
}

impl PositionIndex {
    /// Index `text`; an unparsable document gives an empty index (every lookup then falls
    /// back to the start of the file).
    pub(crate) fn build(text: &str) -> Self {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut b, false).is_err() {
            return Self::default();
        }
        b.index
    }

    /// Where the value at `path` starts; for a path not in the document (a defaulted
    /// value), where its nearest ancestor's key is.
    pub(crate) fn value(&self, path: &[Seg]) -> Pos {
        self.values
            .get(path)
            .copied()
            .unwrap_or_else(|| self.key(path))
    }

    /// Where the key of the entry at `path` starts; for a sequence item, the item; for a
    /// path not in the document, the nearest ancestor's key (the start of the file at the
    /// top level).
    pub(crate) fn key(&self, path: &[Seg]) -> Pos {
        (1..=path.len())
            .rev()
            .find_map(|n| {
                let p = &path[..n];
                self.keys.get(p).or_else(|| self.values.get(p)).copied()
            })
            .unwrap_or(Pos::START)
    }
}

impl PositionIndex {
    /// The path and position of the entry named `name` that starts last in the file (the
    /// later of two duplicate keys: the index keeps the last occurrence of each path).
    pub(crate) fn last_key_named(&self, name: &str) -> Option<(Vec<Seg>, Pos)> {
        self.keys
            .iter()
            .filter(|(p, _)| matches!(p.last(), Some(Seg::Key(k)) if k == name))
            .max_by_key(|(_, pos)| (pos.line, pos.column))
            .map(|(p, pos)| (p.clone(), *pos))
    }
}

enum Frame {
    Map {
        path: Vec<Seg>,
        pending_key: Option<(String, Pos)>,
    },
    Seq {
        path: Vec<Seg>,
        next: usize,
    },
    /// A complex (non-scalar) mapping key; its contents are skipped.
    Skip {
        depth: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    index: PositionIndex,
    done: bool,
}

impl Builder {
    /// The path of a node that starts now, registering it with its parent. `None` when the
    /// node is a mapping key (or inside a skipped key).
    fn place(&mut self, ev: &Event, pos: Pos) -> Option<Vec<Seg>> {
        match self.stack.last_mut() {
            None => Some(Vec::new()),
            Some(Frame::Skip { .. }) => None,
            Some(Frame::Seq { path, next }) => {
                let mut p = path.clone();
                p.push(Seg::Index(*next));
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, pending_key }) => match pending_key.take() {
                Some((key, key_pos)) => {
                    let mut p = path.clone();
                    p.push(Seg::Key(key));
                    self.index.keys.insert(p.clone(), key_pos);
                    Some(p)
                }
                None => {
                    // This node is a key.
                    let key = match ev {
                        Event::Scalar(s, ..) => s.clone(),
                        _ => String::from("?"),
                    };
                    *pending_key = Some((key, pos));
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.done {
            return;
        }
        let pos = Pos::from_marker(mark);
        if let Some(Frame::Skip { depth }) = self.stack.last_mut() {
            match ev {
                Event::MappingStart(..) | Event::SequenceStart(..) => *depth += 1,
                Event::MappingEnd | Event::SequenceEnd => {
                    *depth -= 1;
                    if *depth == 0 {
                        self.stack.pop();
                    }
                }
                _ => {}
            }
            return;
        }
        match ev {
            Event::Scalar(..) | Event::Alias(..) => {
                if let Some(p) = self.place(&ev, pos) {
                    self.index.values.insert(p, pos);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                match self.place(&ev, pos) {
                    Some(p) => {
                        self.index.values.insert(p.clone(), pos);
                        self.stack.push(if is_map {
                            Frame::Map {
                                path: p,
                                pending_key: None,
                            }
                        } else {
                            Frame::Seq { path: p, next: 0 }
                        });
                    }
                    None => {
                        // A collection used as a mapping key: keep the placeholder key and
                        // skip its contents.
                        self.stack.push(Frame::Skip { depth: 1 });
                    }
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::DocumentEnd => self.done = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Seg {
        Seg::Key(s.into())
    }

    #[test]
    fn keys_and_values_have_their_lines_and_columns() {
        let text = "a: 1\nb:\n  c: x\n  d:\n    - 5\n    - {e: 6}\nf: [1, 2]\n";
        let idx = PositionIndex::build(text);
        assert_eq!(idx.key(&[k("a")]), Pos { line: 1, column: 1 });
        assert_eq!(idx.value(&[k("a")]), Pos { line: 1, column: 4 });
        assert_eq!(idx.key(&[k("b"), k("c")]), Pos { line: 3, column: 3 });
        assert_eq!(idx.value(&[k("b"), k("c")]), Pos { line: 3, column: 6 });
        assert_eq!(
            idx.value(&[k("b"), k("d"), Seg::Index(1), k("e")]),
            Pos {
                line: 6,
                column: 11
            }
        );
        assert_eq!(
            idx.value(&[k("f"), Seg::Index(1)]),
            Pos { line: 7, column: 8 }
        );
        // Unknown paths fall back to the nearest known ancestor.
        assert_eq!(
            idx.value(&[k("b"), k("c"), k("zz")]),
            Pos { line: 3, column: 3 }
        );
        assert_eq!(
            idx.key(&[k("b"), k("d"), Seg::Index(0)]),
            Pos { line: 5, column: 7 }
        );
        assert_eq!(idx.value(&[k("nope")]), Pos { line: 1, column: 1 });
    }

    #[test]
    fn dotted_keys_round_trip() {
        let p = vec![k("model"), k("freeze"), Seg::Index(1)];
        assert_eq!(dotted(&p), "model.freeze[1]");
        assert_eq!(parse_dotted("model.freeze[1]"), p);
        assert_eq!(parse_dotted(""), Vec::<Seg>::new());
    }
}
