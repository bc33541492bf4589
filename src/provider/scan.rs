//! A look at an answer's shape before anything is built from it: one pass over the JSON
//! text that allocates (almost) nothing, so that an answer built to hurt is refused
//! before it costs memory.
//!
//! It refuses duplicate keys anywhere (`{"pay":"0.0051","pay":"99.99"}`: which one is
//! meant is not ours to guess), a record with more attempts than allowed, and an answer
//! holding more JSON values than a record of that many attempts could need.

use crate::record::json::Key;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// What one answer may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Attempts (sms, call and sna together) in one record.
    pub max_attempts: usize,
}

impl Limits {
    /// JSON values one answer may hold: [`VALUES_PER_ATTEMPT`] per allowed attempt,
    /// plus [`VALUES_BASE`] for the envelope and the verification outcome.
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

/// Checks `body`. `Ok(())` also for text that is not JSON: reading the envelope says
/// what is wrong with it.
pub fn check(body: &[u8], limits: Limits) -> Result<(), Refused> {
    let mut state = State {
        limits,
        values: 0,
        attempts: 0,
        refused: None,
        keys: Vec::new(),
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = Node {
        state: &mut state,
        role: Role::Top,
    }
    .deserialize(&mut de);
    match (result, state.refused) {
        (Err(_), Some(refused)) => Err(refused),
        _ => Ok(()),
    }
}

struct State<'de> {
    limits: Limits,
    values: usize,
    attempts: usize,
    /// Set when the scan stops on purpose; the serde error then only unwinds.
    refused: Option<Refused>,
    /// The keys seen so far in each object being read, innermost last: one buffer for
    /// the whole answer instead of a set per object.
    keys: Vec<Cow<'de, str>>,
}

/// Beyond this many keys, an object's keys are also looked up in a set of their own:
/// a linear search stays cheaper below it.
const KEYS_SEARCHED_IN_LINE: usize = 32;

impl State<'_> {
    fn refuse<E: de::Error>(&mut self, refused: Refused) -> E {
        self.refused = Some(refused);
        E::custom("refused")
    }

    fn count<E: de::Error>(&mut self) -> Result<(), E> {
        self.values += 1;
        if self.values > self.limits.max_values() {
            let limit = self.limits.max_values();
            return Err(self.refuse(Refused::TooManyValues { limit }));
        }
        Ok(())
    }

    fn attempt<E: de::Error>(&mut self) -> Result<(), E> {
        self.attempts += 1;
        if self.attempts > self.limits.max_attempts {
            let limit = self.limits.max_attempts;
            return Err(self.refuse(Refused::TooManyAttempts { limit }));
        }
        Ok(())
    }

    /// On the way out of a refusal, adds this level to where it happened.
    fn locate(&mut self, segment: impl FnOnce() -> String) {
        if let Some(Refused::DuplicateKey { at, .. }) = &mut self.refused {
            let segment = segment();
            *at = match (at.is_empty(), segment.starts_with('[')) {
                (true, _) => segment,
                (false, true) => format!("{segment}{at}"),
                (false, false) if at.starts_with('[') => format!("{segment}{at}"),
                (false, false) => format!("{segment}.{at}"),
            };
        }
    }
}

/// Where a value sits, as far as attempts are concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The whole answer.
    Top,
    /// The answer's `data`.
    Data,
    /// `data.sms`, `data.call` or `data.sna`: an attempt or a list of them.
    Attempts,
    /// One element of such a list.
    Attempt,
    Other,
}

struct Node<'s, 'de> {
    state: &'s mut State<'de>,
    role: Role,
}

impl<'de> DeserializeSeed<'de> for Node<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.state.count()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.state.count()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.state.count()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.state.count()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.state.count()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.state.count()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.state.count()?;
        let role = match self.role {
            Role::Attempts => Role::Attempt,
            _ => Role::Other,
        };
        let mut index = 0usize;
        loop {
            let next = seq.next_element_seed(Node {
                state: &mut *self.state,
                role,
            });
            match next {
                Ok(Some(())) => index += 1,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.state.locate(|| format!("[{index}]"));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.state.count()?;
        // A single object where a list of attempts may be is one attempt.
        if matches!(self.role, Role::Attempts | Role::Attempt) {
            self.state.attempt()?;
        }
        // This object's keys are `keys[start..]`; once there are many, also in `many`.
        let start = self.state.keys.len();
        let mut many: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(Key(key)) = map.next_key()? {
            let seen = match &many {
                Some(set) => set.contains(&key),
                None => self.state.keys[start..].contains(&key),
            };
            if seen {
                let key = key.into_owned();
                return Err(self.state.refuse(Refused::DuplicateKey {
                    key,
                    at: String::new(),
                }));
            }
            let role = match (self.role, key.as_ref()) {
                (Role::Top, "data") => Role::Data,
                (Role::Data, "sms" | "call" | "sna") => Role::Attempts,
                _ => Role::Other,
            };
            if let Err(e) = map.next_value_seed(Node {
                state: &mut *self.state,
                role,
            }) {
                self.state.locate(|| key.clone().into_owned());
                return Err(e);
            }
            // What the value held was taken off the buffer when it was read.
            match &mut many {
                Some(set) => {
                    set.insert(key);
                }
                None if self.state.keys.len() - start >= KEYS_SEARCHED_IN_LINE => {
                    let mut set: HashSet<_> = self.state.keys.drain(start..).collect();
                    set.insert(key);
                    many = Some(set);
                }
                None => self.state.keys.push(key),
            }
        }
        self.state.keys.truncate(start);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Result<(), Refused> {
        check(text.as_bytes(), Limits::default())
    }

    #[test]
    fn duplicate_keys_are_refused_where_they_are() {
        assert_eq!(
            scan(r#"{"status":"0","status":"-1"}"#),
            Err(Refused::DuplicateKey {
                key: "status".into(),
                at: String::new()
            })
        );
        let nested =
            r#"{"status":"0","data":{"sms":[{"pay":"1"},{"pay":"0.0051","pay":"99.99"}]}}"#;
        let refused = scan(nested).unwrap_err();
        assert_eq!(
            refused,
            Refused::DuplicateKey {
                key: "pay".into(),
                at: "data.sms[1]".into()
            }
        );
        assert_eq!(refused.to_string(), "duplicate key `pay` in `data.sms[1]`");
        // An escaped key is the same key.
        assert!(scan(r#"{"a":1,"\u0061":2}"#).is_err());
        assert_eq!(scan(r#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#), Ok(()));
    }

    #[test]
    fn duplicate_keys_are_found_in_objects_of_any_size() {
        for n in [2, KEYS_SEARCHED_IN_LINE, KEYS_SEARCHED_IN_LINE + 1, 100] {
            let keys: Vec<String> = (0..n)
                .map(|i| format!(r#""k{i}":{{"a":1,"b":2}}"#))
                .collect();
            let unique = format!("{{{}}}", keys.join(","));
            assert_eq!(scan(&unique), Ok(()), "{n} keys");
            for dup in [0, n - 1] {
                let twice = format!(r#"{{{},"k{dup}":0,"z":1}}"#, keys.join(","));
                assert_eq!(
                    scan(&twice),
                    Err(Refused::DuplicateKey {
                        key: format!("k{dup}"),
                        at: String::new()
                    }),
                    "{n} keys, k{dup} twice"
                );
            }
            // The same keys in sibling and nested objects are no duplicates.
            let nested = format!(r#"{{"x":{unique},"y":{unique},"k0":{unique}}}"#);
            assert_eq!(scan(&nested), Ok(()), "{n} keys, nested");
        }
        let inner = r#"{"x":{"k0":1},"k0":{"k0":{"k0":1,"k0":2}}}"#;
        assert_eq!(
            scan(inner),
            Err(Refused::DuplicateKey {
                key: "k0".into(),
                at: "k0.k0".into()
            })
        );
    }

    #[test]
    fn attempts_are_capped_in_lists_and_as_single_objects() {
        let limits = Limits { max_attempts: 3 };
        let list = |n: usize| {
            format!(
                r#"{{"status":"0","data":{{"sms":[{}],"call":{{}}}}}}"#,
                vec!["{}"; n].join(",")
            )
        };
        assert_eq!(check(list(2).as_bytes(), limits), Ok(()));
        assert_eq!(
            check(list(3).as_bytes(), limits),
            Err(Refused::TooManyAttempts { limit: 3 })
        );
        // Elsewhere, objects are not attempts.
        let elsewhere = format!(r#"{{"x":[{}]}}"#, ["{}"; 10].join(","));
        assert_eq!(check(elsewhere.as_bytes(), limits), Ok(()));
    }

    #[test]
    fn values_are_capped() {
        let limits = Limits { max_attempts: 1 };
        let many = format!(r#"{{"x":[{}]}}"#, vec!["0"; 2_000].join(","));
        assert_eq!(
            check(many.as_bytes(), limits),
            Err(Refused::TooManyValues { limit: 1_100 })
        );
    }

    #[test]
    fn what_is_not_json_is_left_to_the_envelope() {
        for text in ["", "<html>", r#"{"status":"0","da"#, "[1,2"] {
            assert_eq!(scan(text), Ok(()), "{text:?}");
        }
    }
}
