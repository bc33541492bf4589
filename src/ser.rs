//! Durations as humans write them ("2m", "1h 30m") in JSON: pass parameters and
//! summaries are read by people first.

use serde::Serializer;
use serde::ser::SerializeSeq;
use std::time::Duration;

fn text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&text(*d))
}

pub fn optional_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&text(*d)),
        None => s.serialize_none(),
    }
}

pub fn durations<S: Serializer>(ds: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(ds.len()))?;
    for d in ds {
        seq.serialize_element(&text(*d))?;
    }
    seq.end()
}
