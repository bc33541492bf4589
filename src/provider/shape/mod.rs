//! An answer's JSON text read into a tree ([`Json`]) in one pass, its shape checked on
//! the way, so that an answer built to hurt is refused while it is read and no second
//! pass over the text is needed to check it.
//!
//! It refuses duplicate keys anywhere (`{"pay":"0.0051","pay":"99.99"}`: which one is
//! meant is not ours to guess), a record with more attempts than allowed, and an answer
//! holding more JSON values than a record of that many attempts could need. Nesting is
//! bounded by serde_json's own recursion limit (128), which is kept.
//!
//! The checks run as values are met, in the order of the text, and stop at the first
//! refusal or syntax error: what is refused, and where, is what a separate pass over the
//! text before reading it refused.

mod build;
mod tally;

use crate::record::json::Json;
use build::{Node, Reading, Role};
use serde::de::DeserializeSeed;
use std::fmt;
use tally::Tally;

/// What one answer may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Attempts (sms, call and sna together) in one record.
    pub max_attempts: usize,
}

impl Limits {
    /// JSON values one answer may hold: [`VALUES_PER_ATTEMPT`] per allowed attempt,
    /// plus [`VALUES_BASE`] for the envelope and the verification outcome.
    ///
    /// The values are counted as the tree is built: an answer over the cap has built up
    /// to this many values before it is refused (at the default cap, 11,000 values,
    /// under a megabyte of tree; a few MB at a cap of several hundred attempts). The
    /// answer's size cap (`--max-answer-bytes`) bounds it as well.
    pub fn max_values(self) -> usize {
        self.max_attempts
            .saturating_mul(VALUES_PER_ATTEMPT)
            .saturating_add(VALUES_BASE)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// The default cap on attempts per record (`--max-record-attempts`).
pub const DEFAULT_MAX_ATTEMPTS: usize = 100;
/// JSON values allowed per attempt (an sms attempt has about 20 fields).
pub const VALUES_PER_ATTEMPT: usize = 100;
/// JSON values allowed beside the attempts.
pub const VALUES_BASE: usize = 1_000;

/// Why an answer's shape is refused. `at` is where (`data.sms[0]`), empty at the top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    DuplicateKey { key: String, at: String },
    TooManyAttempts { limit: usize },
    TooManyValues { limit: usize },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::DuplicateKey { key, at } if at.is_empty() => {
                write!(f, "duplicate key `{key}` in the answer")
            }
            Refused::DuplicateKey { key, at } => write!(f, "duplicate key `{key}` in `{at}`"),
            Refused::TooManyAttempts { limit } => write!(
                f,
                "the record holds more than {limit} attempts (the cap, --max-record-attempts)"
            ),
            Refused::TooManyValues { limit } => write!(
                f,
                "the answer holds more than {limit} JSON values (100 per allowed attempt, \
                 --max-record-attempts)"
            ),
        }
    }
}

/// Why an answer was not read into a tree.
#[derive(Debug)]
pub(crate) enum Unread {
    /// Its shape is refused.
    Refused(Refused),
    /// It is not one JSON value as read here (a syntax error, trailing text, nesting
    /// beyond the recursion limit, invalid UTF-8 or a lone surrogate in a string). The
    /// caller reads it the lenient way instead, which says what is wrong with it.
    NotJson,
}

/// Reads `body`, one JSON value and nothing after it, into a tree borrowing from it.
pub(crate) fn read(body: &[u8], limits: Limits) -> Result<Json<'_>, Unread> {
    // Read as bytes, serde_json checks each string's UTF-8 on its own; a text checked
    // whole first is read without that. A text that is not UTF-8 is read as bytes, so
    // that what comes before its first bad byte is checked all the same.
    match std::str::from_utf8(body) {
        Ok(text) => read_from(serde_json::Deserializer::from_str(text), limits),
        Err(_) => read_from(serde_json::Deserializer::from_slice(body), limits),
    }
}

fn read_from<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    limits: Limits,
) -> Result<Json<'de>, Unread> {
    let mut reading = Reading::new(Tally::new(limits));
    let read = Node::new(&mut reading, Role::Top)
        .deserialize(&mut de)
        .and_then(|tree| de.end().map(|()| tree));
    match (read, reading.tally.into_refused()) {
        (Ok(tree), _) => Ok(tree),
        (Err(_), Some(refused)) => Err(Unread::Refused(refused)),
        (Err(_), None) => Err(Unread::NotJson),
    }
}

#[cfg(test)]
mod tests;
