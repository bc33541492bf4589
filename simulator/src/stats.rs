//! What the simulator received and answered, for tests to prove what was and was not
//! sent. Served at `GET /_sim/stats`; the last requests at `GET /_sim/requests`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// How many requests the log keeps.
const LOG_CAPACITY: usize = 10_000;

/// Counts for one record id (`order:` prefixed for orderId lookups).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchCount {
    /// Requests about this id, whatever they were answered.
    pub requests: u64,
    /// Complete record answers (status 0).
    pub answered: u64,
    /// Of those, answers with the final record.
    #[serde(rename = "final")]
    pub final_answers: u64,
}

/// Counts for one postback (`otp:ID` or `sms:ID`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostbackCount {
    pub received: u64,
    /// Answered with status 0.
    pub acknowledged: u64,
}

/// One `/otp/backfillRate` post.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatePost {
    pub body: Value,
    /// The status answered, or the fault's name.
    pub answer: String,
}

/// What was received more than once where once was expected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Duplicates {
    /// Ids served their final record more than once.
    pub final_fetches: Vec<String>,
    /// Postbacks acknowledged more than once.
    pub postbacks: Vec<String>,
    /// Identical rate bodies (every field, callbackTime included) acknowledged more
    /// than once. A body does not name its window, so two windows with the same
    /// numbers posted in the same second also land here: the job's ledger is what
    /// proves a window was posted once.
    pub backfill_rates: Vec<Value>,
}

/// One logged request: what arrived and what it was answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedRequest {
    pub endpoint: String,
    pub key: String,
    pub timestamp: Option<String>,
    pub sign: Option<String>,
    pub answer: String,
}

/// The stats as served.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub total_requests: u64,
    /// Requests per endpoint name (`unknown` for other paths).
    pub requests: BTreeMap<String, u64>,
    /// Per endpoint: how many were answered with each status code or fault.
    pub answers: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per record id.
    pub fetches: BTreeMap<String, FetchCount>,
    /// Per postback, keyed `otp:ID` / `sms:ID`.
    pub postbacks: BTreeMap<String, PostbackCount>,
    pub backfill_rates: Vec<RatePost>,
    pub duplicates: Duplicates,
}

impl StatsSnapshot {
    /// Requests made to one endpoint.
    pub fn requests_to(&self, endpoint: &str) -> u64 {
        self.requests.get(endpoint).copied().unwrap_or(0)
    }

    /// How many of an endpoint's answers were `answer` (a status code or a fault name).
    pub fn answered(&self, endpoint: &str, answer: &str) -> u64 {
        self.answers
            .get(endpoint)
            .and_then(|a| a.get(answer))
            .copied()
            .unwrap_or(0)
    }
}

/// The live counters behind the snapshot.
#[derive(Debug, Default)]
pub struct Stats {
    total: u64,
    requests: HashMap<&'static str, u64>,
    answers: HashMap<&'static str, HashMap<String, u64>>,
    fetches: HashMap<String, FetchCount>,
    postbacks: HashMap<String, PostbackCount>,
    rates: Vec<RatePost>,
    log: VecDeque<LoggedRequest>,
}

impl Stats {
    /// Counts an arriving request; answers how many earlier requests had this key.
    pub fn arrived(&mut self, endpoint: &'static str, key: &str, postback: bool) -> u64 {
        self.total += 1;
        *self.requests.entry(endpoint).or_default() += 1;
        if postback {
            let count = self.postbacks.entry(key.to_owned()).or_default();
            count.received += 1;
            count.received - 1
        } else {
            let count = self.fetches.entry(key.to_owned()).or_default();
            count.requests += 1;
            count.requests - 1
        }
    }

    /// Complete record answers served so far for `key`.
    pub fn answered_records(&self, key: &str) -> u32 {
        self.fetches
            .get(key)
            .map_or(0, |c| u32::try_from(c.answered).unwrap_or(u32::MAX))
    }

    pub fn served_record(&mut self, key: &str, final_answer: bool) {
        let count = self.fetches.entry(key.to_owned()).or_default();
        count.answered += 1;
        count.final_answers += u64::from(final_answer);
    }

    pub fn acknowledged(&mut self, key: &str) {
        self.postbacks
            .entry(key.to_owned())
            .or_default()
            .acknowledged += 1;
    }

    pub fn rate_posted(&mut self, body: Value, answer: &str) {
        self.rates.push(RatePost {
            body,
            answer: answer.to_owned(),
        });
    }

    /// Records how a request was answered.
    pub fn answered(&mut self, endpoint: &'static str, logged: LoggedRequest) {
        *self
            .answers
            .entry(endpoint)
            .or_default()
            .entry(logged.answer.clone())
            .or_default() += 1;
        if self.log.len() == LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(logged);
    }

    /// The logged requests, oldest first, optionally only those about `key`.
    pub fn log(&self, key: Option<&str>) -> Vec<LoggedRequest> {
        self.log
            .iter()
            .filter(|r| key.is_none_or(|k| r.key == k))
            .cloned()
            .collect()
    }

    pub fn snapshot(&self, detail: bool) -> StatsSnapshot {
        let mut rate_acks: HashMap<String, (u64, &Value)> = HashMap::new();
        for post in self.rates.iter().filter(|p| p.answer == "0") {
            rate_acks
                .entry(post.body.to_string())
                .or_insert((0, &post.body))
                .0 += 1;
        }
        let mut duplicates = Duplicates {
            final_fetches: self
                .fetches
                .iter()
                .filter(|(_, c)| c.final_answers > 1)
                .map(|(k, _)| k.clone())
                .collect(),
            postbacks: self
                .postbacks
                .iter()
                .filter(|(_, c)| c.acknowledged > 1)
                .map(|(k, _)| k.clone())
                .collect(),
            backfill_rates: rate_acks
                .into_values()
                .filter(|(n, _)| *n > 1)
                .map(|(_, body)| body.clone())
                .collect(),
        };
        duplicates.final_fetches.sort();
        duplicates.postbacks.sort();
        StatsSnapshot {
            total_requests: self.total,
            requests: self
                .requests
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            answers: self
                .answers
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        v.iter().map(|(a, n)| (a.clone(), *n)).collect(),
                    )
                })
                .collect(),
            fetches: if detail {
                self.fetches.iter().map(|(k, v)| (k.clone(), *v)).collect()
            } else {
                BTreeMap::new()
            },
            postbacks: if detail {
                self.postbacks
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect()
            } else {
                BTreeMap::new()
            },
            backfill_rates: if detail {
                self.rates.clone()
            } else {
                Vec::new()
            },
            duplicates,
        }
    }
}
