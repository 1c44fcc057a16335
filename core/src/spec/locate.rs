//! Where each field of a YAML document stands, so that a problem found after parsing
//! (an unknown data source, a step count of zero) still points at a line and column.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::SpecError;

/// Maps field paths (`phases[1].data[0]`) to 1-based (line, column).
#[derive(Debug, Default)]
pub struct Locator {
    spots: HashMap<String, (usize, usize)>,
}

impl Locator {
    pub fn new(yaml: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(yaml);
        // A document serde_yaml accepted also parses here; if not, errors fall back to 1:1.
        let _ = parser.load(&mut walker, false);
        Self {
            spots: walker.spots,
        }
    }

    /// The position of `field`, or of its nearest located parent.
    pub fn position(&self, field: &str) -> (usize, usize) {
        let mut path = field;
        loop {
            if let Some(spot) = self.spots.get(path) {
                return *spot;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => return self.spots.get("").copied().unwrap_or((1, 1)),
            }
        }
    }

    pub fn error(&self, source_name: &str, field: &str, message: String) -> SpecError {
        let (line, column) = self.position(field);
        SpecError {
            source_name: source_name.into(),
            line,
            column,
            field: field.into(),
            message,
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    spots: HashMap<String, (usize, usize)>,
}

impl Walker {
    /// The path of the node about to be read.
    fn child_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Map { path, key }) => {
                let key = key.as_deref().unwrap_or("");
                if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                }
            }
            Some(Frame::Seq { path, index }) => format!("{path}[{index}]"),
        }
    }

    /// A value was read: a map now waits for its next key, a sequence moves on.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }

    fn record(&mut self, path: &str, mark: Marker) {
        // yaml-rust2 counts lines from 1 and columns from 0.
        self.spots
            .entry(path.to_string())
            .or_insert((mark.line(), mark.col() + 1));
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map {
                    key: key @ None, ..
                }) = self.stack.last_mut()
                {
                    *key = Some(value);
                    return;
                }
                let path = self.child_path();
                self.record(&path, mark);
                self.value_done();
            }
            Event::MappingStart(..) => {
                let path = self.child_path();
                self.record(&path, mark);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.child_path();
                self.record(&path, mark);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}
