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

/// One value to read, and the tally it counts toward.
pub(super) struct Node<'s> {
    tally: &'s mut Tally,
    role: Role,
}

impl<'s> Node<'s> {
    pub(super) fn new(tally: &'s mut Tally, role: Role) -> Self {
        Self { tally, role }
    }

    fn child(&mut self, role: Role) -> Node<'_> {
        Node {
            tally: &mut *self.tally,
            role,
        }
    }

    /// serde_json (with `arbitrary_precision`) hands a number that is no 64-bit integer
    /// as a map of one entry, its text under [`NUMBER_TOKEN`]: counted as two values,
    /// the map and its text, as every map is.
    fn number<'de, A: MapAccess<'de>>(mut self, mut map: A) -> Result<Json<'de>, A::Error> {
        match map.next_value_seed(self.child(Role::Other))? {
            Json::String(text) => Ok(Json::Number(text)),
            other => Err(de::Error::invalid_type(
                de::Unexpected::Other(other.kind()),
                &"a number's text",
            )),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Json<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json<'de>, E> {
        self.tally.value()?;
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Json<'de>, E> {
        self.tally.value()?;
        Ok(Json::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Json<'de>, E> {
        self.tally.value()?;
        Ok(Json::Number(Cow::Owned(n.to_string())))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Json<'de>, E> {
        self.tally.value()?;
        Ok(Json::Number(Cow::Owned(n.to_string())))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Json<'de>, E> {
        self.tally.value()?;
        Ok(Json::Number(Cow::Owned(n.to_string())))
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Json<'de>, E> {
        self.tally.value()?;
        Ok(Json::String(Cow::Borrowed(s)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Json<'de>, E> {
        self.tally.value()?;
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Json<'de>, E> {
        self.tally.value()?;
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Json<'de>, A::Error> {
        self.tally.value()?;
        let role = self.role.of_element();
        let mut items = Vec::new();
        loop {
            match seq.next_element_seed(self.child(role)) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Json::Array(items)),
                Err(e) => {
                    let index = items.len();
                    self.tally.locate(|| format!("[{index}]"));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Json<'de>, A::Error> {
        self.tally.value()?;
        // A single object where a list of attempts may be is one attempt.
        if matches!(self.role, Role::Attempts | Role::Attempt) {
            self.tally.attempt()?;
        }
        let mut entries: Vec<(Cow<'de, str>, Json<'de>)> = Vec::new();
        // The keys again once there are many, to look them up without a linear search.
        let mut many: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(Key(key)) = map.next_key()? {
            if entries.is_empty() && key == NUMBER_TOKEN {
                return self.number(map);
            }
            let seen = match &many {
                Some(set) => set.contains(&key),
                None => entries.iter().any(|(k, _)| *k == key),
            };
            if seen {
                let key = key.into_owned();
                return Err(self.tally.refuse(Refused::DuplicateKey {
                    key,
                    at: String::new(),
                }));
            }
            let role = self.role.of_key(&key);
            let value = match map.next_value_seed(self.child(role)) {
                Ok(value) => value,
                Err(e) => {
                    self.tally.locate(|| key.into_owned());
                    return Err(e);
                }
            };
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
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}
