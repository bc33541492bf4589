//! The visitor that builds an answer's tree, holding each value to the [`Tally`] as it
//! is met and refusing duplicate keys in each object.

use super::Refused;
use super::tally::Tally;
use crate::record::json::{Json, Key, NUMBER_TOKEN};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// Where a value sits, as far as attempts are concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
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

impl Role {
    /// The role of the value under `key` in an object of this role.
    fn of_key(self, key: &str) -> Role {
        match (self, key) {
            (Role::Top, "data") => Role::Data,
            (Role::Data, "sms" | "call" | "sna") => Role::Attempts,
            _ => Role::Other,
        }
    }

    /// The role of an element of a list of this role.
    fn of_element(self) -> Role {
        match self {
            Role::Attempts => Role::Attempt,
            _ => Role::Other,
        }
    }
}

/// Beyond this many keys, an object's keys are also looked up in a set: a linear
/// search of its entries stays cheaper below it.
pub(super) const KEYS_SEARCHED_IN_LINE: usize = 32;

/// What the reading of one answer keeps from value to value: the tally, and the
/// entries and items of the objects and lists being read, innermost last. One buffer
/// for the whole answer, from which each finished object or list is moved out at its
/// exact size: a vector grown per object cost a few reallocations for each.
pub(super) struct Reading<'de> {
    pub(super) tally: Tally,
    entries: Vec<(Cow<'de, str>, Json<'de>)>,
    items: Vec<Json<'de>>,
}

/// Room for the entries of the objects open at once in a record (the envelope's, the
/// data's and an attempt's: about 35) and for the items of its lists, taken once
/// rather than grown from nothing in every answer.
const ENTRIES_AT_ONCE: usize = 64;
const ITEMS_AT_ONCE: usize = 8;

impl Reading<'_> {
    pub(super) fn new(tally: Tally) -> Self {
        Self {
            tally,
            entries: Vec::with_capacity(ENTRIES_AT_ONCE),
            items: Vec::with_capacity(ITEMS_AT_ONCE),
        }
    }
}

/// One value to read, and the reading it is part of.
pub(super) struct Node<'s, 'de> {
    reading: &'s mut Reading<'de>,
    role: Role,
}

impl<'s, 'de> Node<'s, 'de> {
    pub(super) fn new(reading: &'s mut Reading<'de>, role: Role) -> Self {
        Self { reading, role }
    }

    fn child(&mut self, role: Role) -> Node<'_, 'de> {
        Node {
            reading: &mut *self.reading,
            role,
        }
    }

    /// serde_json (with `arbitrary_precision`) hands a number that is no 64-bit integer
    /// as a map of one entry, its text under [`NUMBER_TOKEN`]: counted as two values,
    /// the map and its text, as every map is.
    fn number<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Json<'de>, A::Error> {
        match map.next_value_seed(self.child(Role::Other))? {
            Json::String(text) => Ok(Json::Number(text)),
            other => Err(de::Error::invalid_type(
                de::Unexpected::Other(other.kind()),
                &"a number's text",
            )),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_, 'de> {
    type Value = Json<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, 'de> {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json<'de>, E> {
        self.reading.tally.value()?;
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Json<'de>, E> {
        self.reading.tally.value()?;
        Ok(Json::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Json<'de>, E> {
        self.reading.tally.value()?;
        Ok(Json::Number(Cow::Owned(n.to_string())))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Json<'de>, E> {
        self.reading.tally.value()?;
        Ok(Json::Number(Cow::Owned(n.to_string())))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Json<'de>, E> {
        self.reading.tally.value()?;
        Ok(Json::Number(Cow::Owned(n.to_string())))
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Json<'de>, E> {
        self.reading.tally.value()?;
        Ok(Json::String(Cow::Borrowed(s)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Json<'de>, E> {
        self.reading.tally.value()?;
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Json<'de>, E> {
        self.reading.tally.value()?;
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Json<'de>, A::Error> {
        self.reading.tally.value()?;
        let role = self.role.of_element();
        let start = self.reading.items.len();
        // Counted here: after an error, the buffer also holds what the lists inside
        // this one had read.
        let mut index = 0usize;
        loop {
            match seq.next_element_seed(self.child(role)) {
                Ok(Some(item)) => {
                    self.reading.items.push(item);
                    index += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    self.reading.tally.locate(|| format!("[{index}]"));
                    return Err(e);
                }
            }
        }
        Ok(Json::Array(self.reading.items.drain(start..).collect()))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Json<'de>, A::Error> {
        self.reading.tally.value()?;
        // A single object where a list of attempts may be is one attempt.
        if matches!(self.role, Role::Attempts | Role::Attempt) {
            self.reading.tally.attempt()?;
        }
        // This object's entries are `entries[start..]`; once there are many, their keys
        // are also in `many`, to look them up without a linear search.
        let start = self.reading.entries.len();
        let mut many: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(Key(key)) = map.next_key()? {
            let entries = &self.reading.entries[start..];
            if entries.is_empty() && key == NUMBER_TOKEN {
                return self.number(map);
            }
            let seen = match &many {
                Some(set) => set.contains(&key),
                None => entries.iter().any(|(k, _)| *k == key),
            };
            if seen {
                let key = key.into_owned();
                return Err(self.reading.tally.refuse(Refused::DuplicateKey {
                    key,
                    at: String::new(),
                }));
            }
            let role = self.role.of_key(&key);
            let value = match map.next_value_seed(self.child(role)) {
                Ok(value) => value,
                Err(e) => {
                    self.reading.tally.locate(|| key.into_owned());
                    return Err(e);
                }
            };
            let entries = &self.reading.entries[start..];
            match &mut many {
                Some(set) => {
                    set.insert(key.clone());
                }
                None if entries.len() >= KEYS_SEARCHED_IN_LINE => {
                    let mut set: HashSet<_> = entries.iter().map(|(k, _)| k.clone()).collect();
                    set.insert(key.clone());
                    many = Some(set);
                }
                None => {}
            }
            self.reading.entries.push((key, value));
        }
        Ok(Json::Object(self.reading.entries.drain(start..).collect()))
    }
}
