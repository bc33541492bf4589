//! The separate pass over the answer's text that checked its shape before the tree was
//! built (until the checks moved into [`super::super::read`]), kept as it was (but for
//! where a duplicate key is located, now built by the same rule) as the
//! reference the tests compare the single pass with: the same answers must be refused
//! for the same reasons, at the same places.

use super::super::tally::enclose;
use super::super::{Limits, Refused};
use crate::record::json::Key;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// Checks `body`. `Ok(())` also for text that is not JSON: reading the envelope says
/// what is wrong with it.
pub(super) fn check(body: &[u8], limits: Limits) -> Result<(), Refused> {
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

    /// On the way out of a refusal, adds this level to where it happened (by the
    /// single pass's own rule: the dot after an index, once missing here, was fixed in
    /// both at once).
    fn locate(&mut self, segment: impl FnOnce() -> String) {
        if let Some(Refused::DuplicateKey { at, .. }) = &mut self.refused {
            enclose(at, segment());
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
