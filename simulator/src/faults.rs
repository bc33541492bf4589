//! Fault injection: latency, a request-rate limit answered with 429, and faults drawn
//! by rate or taken from scripted sequences.
//!
//! Rate-drawn faults are a hash of (seed, endpoint, id, how many requests that id has
//! made), so which request of an id fails does not depend on arrival order.

use crate::draw::Draw;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One thing the simulator can do instead of answering normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Fault {
    /// Answer normally.
    Ok,
    /// An HTTP error status with a short non-JSON body (500, 503, 401, 404...).
    Http(u16),
    /// HTTP 429 with `Retry-After` in seconds.
    TooManyRequests { retry_after: u64 },
    /// Close the connection without answering.
    Drop,
    /// Hold the request for the stall time, then close without answering.
    Stall,
    /// HTTP 200 with a body that is not JSON.
    Malformed,
    /// HTTP 200 with the real answer cut in half.
    Truncated,
    /// Status 0 with a record whose first money field is `"1e5"` (or, without one, a
    /// verification time that is not a time): an answer that cannot be read.
    BadRecord,
    /// Status 0 with the real answer padded past 2 MiB.
    Oversized,
    /// HTTP 200 with this provider status code (-1, -2, -14, -16, -18, -22...).
    Status(i64),
    /// Status 0 with a record of about 1 MB (under the client's 1 MiB cap) holding
    /// 340,000 empty sms attempts: an answer built to cost memory.
    HugeRecord,
    /// Status 0 with the record's first money field (sms `pay`, call `cost`, else
    /// `matched`) written twice, the second time as `"99.99"`.
    DuplicateKey,
    /// The answer with `status` written twice: `{"status":"0","status":"-1",...}`.
    DuplicateStatus,
    /// Status 0 with the record turned back to still sending (`matched` 1, every sms
    /// status -1, every call without a hang-up): less final than it was.
    Regressed,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Ok => f.write_str("ok"),
            Fault::Http(code) => write!(f, "{code}"),
            Fault::TooManyRequests { retry_after } => write!(f, "429:{retry_after}"),
            Fault::Drop => f.write_str("drop"),
            Fault::Stall => f.write_str("stall"),
            Fault::Malformed => f.write_str("malformed"),
            Fault::Truncated => f.write_str("truncated"),
            Fault::BadRecord => f.write_str("bad-record"),
            Fault::Oversized => f.write_str("oversized"),
            Fault::Status(code) => write!(f, "{code}"),
            Fault::HugeRecord => f.write_str("huge-record"),
            Fault::DuplicateKey => f.write_str("duplicate-key"),
            Fault::DuplicateStatus => f.write_str("duplicate-status"),
            Fault::Regressed => f.write_str("regressed"),
        }
    }
}

impl FromStr for Fault {
    type Err = String;

    /// `ok`, `drop`, `stall`, `malformed`, `truncated`, an HTTP status (`500`),
    /// `429` or `429:SECONDS`, or a provider status code (`-16`, `0` is `ok`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Ok(match s {
            "ok" | "0" => Fault::Ok,
            "drop" => Fault::Drop,
            "stall" => Fault::Stall,
            "malformed" => Fault::Malformed,
            "truncated" => Fault::Truncated,
            "bad-record" => Fault::BadRecord,
            "oversized" => Fault::Oversized,
            "huge-record" => Fault::HugeRecord,
            "duplicate-key" => Fault::DuplicateKey,
            "duplicate-status" => Fault::DuplicateStatus,
            "regressed" => Fault::Regressed,
            "429" => Fault::TooManyRequests { retry_after: 1 },
            _ => {
                if let Some(secs) = s.strip_prefix("429:") {
                    let retry_after = secs
                        .parse()
                        .map_err(|_| format!("bad Retry-After in {s:?}"))?;
                    Fault::TooManyRequests { retry_after }
                } else if let Some(code) = s.strip_prefix('-') {
                    let code: i64 = code.parse().map_err(|_| format!("unknown fault {s:?}"))?;
                    Fault::Status(-code)
                } else {
                    match s.parse::<u16>() {
                        Ok(code) if (100..600).contains(&code) => Fault::Http(code),
                        _ => {
                            return Err(format!(
                                "unknown fault {s:?}: use ok, drop, stall, malformed, truncated, \
                             bad-record, oversized, huge-record, duplicate-key, \
                             duplicate-status, regressed, an HTTP status, 429:SECONDS or a \
                             provider code like -16"
                            ));
                        }
                    }
                }
            }
        })
    }
}

impl TryFrom<String> for Fault {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Fault> for String {
    fn from(f: Fault) -> String {
        f.to_string()
    }
}

/// Parses a comma-separated list of faults (`-16,ok,500`).
pub fn parse_script(list: &str) -> Result<Vec<Fault>, String> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// How often each fault happens, and the timing knobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Added to every answer.
    pub latency_ms: u64,
    /// Up to this much more, drawn per request.
    pub jitter_ms: u64,
    /// Above this many requests per second (with `rate_burst`), answer 429.
    pub rate_limit: Option<u32>,
    pub rate_burst: Option<u32>,
    /// How long a stall holds the request (longer than the client's timeout).
    pub stall_ms: Option<u64>,
    /// `Retry-After` of rate-drawn 429s, in seconds.
    pub retry_after_secs: Option<u64>,
    /// Shares of requests (0..1) answered with each fault, drawn per request.
    pub rates: FaultRates,
}

/// Shares of requests answered with each fault.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultRates {
    pub http_500: f64,
    pub http_503: f64,
    pub http_429: f64,
    pub drop: f64,
    pub stall: f64,
    pub malformed: f64,
    pub truncated: f64,
    pub bad_record: f64,
    pub oversized: f64,
    pub huge_record: f64,
    pub duplicate_key: f64,
    pub duplicate_status: f64,
    pub regressed: f64,
    /// Provider status codes by share, e.g. {"-18": 0.01}.
    pub status: BTreeMap<i64, f64>,
    /// Other HTTP statuses by share (a non-JSON body), e.g. {"400": 1.0}.
    pub http: BTreeMap<u16, f64>,
}

impl Faults {
    pub fn stall(&self) -> Duration {
        Duration::from_millis(self.stall_ms.unwrap_or(30_000))
    }

    /// The latency for one request.
    pub fn latency(&self, draw: &Draw) -> Duration {
        Duration::from_millis(self.latency_ms + draw.below("jitter", self.jitter_ms + 1))
    }

    /// The fault, if any, drawn for one request.
    pub fn draw(&self, draw: &Draw) -> Fault {
        let r = &self.rates;
        let retry_after = self.retry_after_secs.unwrap_or(1);
        let table = [
            (r.http_500, Fault::Http(500)),
            (r.http_503, Fault::Http(503)),
            (r.http_429, Fault::TooManyRequests { retry_after }),
            (r.drop, Fault::Drop),
            (r.stall, Fault::Stall),
            (r.malformed, Fault::Malformed),
            (r.truncated, Fault::Truncated),
            (r.bad_record, Fault::BadRecord),
            (r.oversized, Fault::Oversized),
            (r.huge_record, Fault::HugeRecord),
            (r.duplicate_key, Fault::DuplicateKey),
            (r.duplicate_status, Fault::DuplicateStatus),
            (r.regressed, Fault::Regressed),
        ];
        let statuses = r
            .status
            .iter()
            .map(|(code, share)| (*share, Fault::Status(*code)))
            .chain(
                r.http
                    .iter()
                    .map(|(code, share)| (*share, Fault::Http(*code))),
            );
        let u = draw.unit("fault");
        let mut acc = 0.0;
        for (share, fault) in table.into_iter().chain(statuses) {
            acc += share.max(0.0);
            if u < acc {
                return fault;
            }
        }
        Fault::Ok
    }
}

/// Scripted sequences: faults taken in order, for one id or for any request.
#[derive(Debug, Default)]
pub struct Scripts {
    any: VecDeque<Fault>,
    by_key: HashMap<String, VecDeque<Fault>>,
}

impl Scripts {
    /// Appends faults for `key` (an id), or for any request when `key` is `None`.
    pub fn push(&mut self, key: Option<String>, faults: impl IntoIterator<Item = Fault>) {
        match key {
            Some(key) => self.by_key.entry(key).or_default().extend(faults),
            None => self.any.extend(faults),
        }
    }

    /// The next scripted fault for a request about `key`: that id's script first.
    pub fn next(&mut self, key: &str) -> Option<Fault> {
        if let Some(queue) = self.by_key.get_mut(key) {
            let fault = queue.pop_front();
            if queue.is_empty() {
                self.by_key.remove(key);
            }
            if fault.is_some() {
                return fault;
            }
        }
        self.any.pop_front()
    }

    pub fn clear(&mut self) {
        self.any.clear();
        self.by_key.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_print_back() {
        let script = parse_script(
            "ok,500,503,429,429:3,drop,stall,malformed,truncated,bad-record,oversized,-1,-2,-14,-16,-18,-22,\
             huge-record,duplicate-key,duplicate-status,regressed,400",
        )
        .unwrap();
        let printed: Vec<String> = script.iter().map(ToString::to_string).collect();
        assert_eq!(
            printed.join(","),
            "ok,500,503,429:1,429:3,drop,stall,malformed,truncated,bad-record,oversized,-1,-2,-14,-16,-18,-22,\
             huge-record,duplicate-key,duplicate-status,regressed,400"
        );
        assert!(parse_script("boom").is_err());
        assert!(parse_script("700").is_err());
    }

    #[test]
    fn drawn_faults_follow_their_rates() {
        let faults = Faults {
            rates: FaultRates {
                http_500: 0.1,
                malformed: 0.05,
                ..FaultRates::default()
            },
            ..Faults::default()
        };
        let mut counts = HashMap::new();
        for i in 0..20_000 {
            *counts
                .entry(faults.draw(&Draw::new(9, format!("k{i}"))))
                .or_insert(0) += 1;
        }
        assert!((1_700..2_300).contains(&counts[&Fault::Http(500)]));
        assert!((800..1_200).contains(&counts[&Fault::Malformed]));
    }

    #[test]
    fn latency_is_the_base_plus_at_most_the_jitter() {
        let faults = Faults {
            latency_ms: 150,
            jitter_ms: 50,
            ..Faults::default()
        };
        let drawn: Vec<u128> = (0..2_000)
            .map(|i| faults.latency(&Draw::new(9, format!("k{i}"))).as_millis())
            .collect();
        assert!(drawn.iter().all(|ms| (150..=200).contains(ms)));
        // The whole range is used, both ends included.
        assert!(drawn.contains(&150) && drawn.contains(&200));
    }

    #[test]
    fn an_ids_script_comes_before_the_shared_one() {
        let mut s = Scripts::default();
        s.push(None, [Fault::Http(500)]);
        s.push(Some("a".into()), [Fault::Status(-16), Fault::Ok]);
        assert_eq!(s.next("b"), Some(Fault::Http(500)));
        assert_eq!(s.next("a"), Some(Fault::Status(-16)));
        assert_eq!(s.next("a"), Some(Fault::Ok));
        assert_eq!(s.next("a"), None);
    }
}
