//! From YAML to a checked [`JobSpec`], and the located errors a bad spec gets: file,
//! line, column and field of each problem.

use std::fmt;

use super::{JobSpec, Limits, Locator};

/// One problem with a spec, located in its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub source_name: String,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field (`phases[1].steps`), empty for the whole document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.source_name, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.message)
    }
}

/// Every problem found in one spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "{}", lines.join("\n"))
    }
}

/// Parses and checks a spec within the default [`Limits`]. `source_name` is what errors
/// call the file.
pub fn parse(yaml: &str, source_name: &str) -> Result<JobSpec, SpecErrors> {
    parse_within(yaml, source_name, &Limits::default())
}

/// Parses and checks a spec within `limits`.
pub fn parse_within(yaml: &str, source_name: &str, limits: &Limits) -> Result<JobSpec, SpecErrors> {
    if yaml.len() > limits.spec_bytes {
        return Err(SpecErrors(vec![SpecError {
            source_name: source_name.into(),
            line: 1,
            column: 1,
            field: String::new(),
            message: format!(
                "the spec is {} bytes; at most {} are read",
                yaml.len(),
                limits.spec_bytes
            ),
        }]));
    }
    let spec: JobSpec = serde_yaml::from_str(yaml).map_err(|e| from_serde(&e, source_name))?;
    let locator = Locator::new(yaml);
    let problems = spec.problems(limits);
    if problems.is_empty() {
        return Ok(spec);
    }
    Err(SpecErrors(
        problems
            .into_iter()
            .map(|(field, message)| locator.error(source_name, &field, message))
            .collect(),
    ))
}

/// serde_yaml says "phases[0]: unknown field `x`, expected ... at line 5 column 3".
fn from_serde(error: &serde_yaml::Error, source_name: &str) -> SpecErrors {
    let (line, column) = error
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let text = error.to_string();
    let text = match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    let (field, message) = match text.split_once(": ") {
        Some((field, rest)) if !field.contains(' ') => (field.to_string(), rest.to_string()),
        _ => (String::new(), text),
    };
    let message = excerpt(&explain_negative(&message).unwrap_or(message));
    SpecErrors(vec![SpecError {
        source_name: source_name.into(),
        line,
        column,
        field,
        message,
    }])
}

/// At most a short excerpt of a message that may quote the input.
fn excerpt(message: &str) -> String {
    const MOST: usize = 200;
    match message.char_indices().nth(MOST) {
        Some((cut, _)) => format!("{}... ({} bytes)", &message[..cut], message.len()),
        None => message.to_string(),
    }
}

/// serde's "invalid type: integer `-5`, expected u64" says it the hard way.
fn explain_negative(message: &str) -> Option<String> {
    let value = message.strip_prefix("invalid type: integer `-")?;
    let (digits, rest) = value.split_once('`')?;
    rest.contains("expected u")
        .then(|| format!("must not be negative, got `-{digits}`"))
}
