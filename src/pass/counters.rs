//! A pass's live counters, one group per stage, shared by the stage's tasks and read
//! once into the [`Summary`](super::Summary) at the end.

use crate::decide::Recheck;
use std::sync::atomic::{AtomicU64, Ordering};

/// One count, added to from any task.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every stage's counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub sends: SendCounters,
    pub conversions: ConversionCounters,
    pub rates: RateCounters,
}

/// The records stage's counters.
#[derive(Debug, Default)]
pub struct SendCounters {
    pub claimed: Counter,
    pub settled: Counter,
    pub still_sending: Counter,
    pub not_yet_visible: Counter,
    pub unreadable: Counter,
    pub transient: Counter,
    pub rejected: Counter,
    pub expired: Counter,
    pub released: Counter,
    pub lease_lost: Counter,
    pub records_changed: Counter,
    pub attempts_changed: Counter,
}

impl SendCounters {
    /// The counter of sends left for a later check for `why`.
    pub fn recheck(&self, why: Recheck) -> &Counter {
        match why {
            Recheck::StillSending => &self.still_sending,
            Recheck::NotYetVisible => &self.not_yet_visible,
            Recheck::Unreadable => &self.unreadable,
            Recheck::Transient => &self.transient,
        }
    }
}

/// The postbacks stage's counters.
#[derive(Debug, Default)]
pub struct ConversionCounters {
    pub claimed: Counter,
    pub sent: Counter,
    pub rejected: Counter,
    pub later: Counter,
    pub released: Counter,
    pub lease_lost: Counter,
    pub possibly_duplicated: Counter,
}

/// The rates stage's counters.
#[derive(Debug, Default)]
pub struct RateCounters {
    pub windows_changed: Counter,
    pub changed_after_post: Counter,
    pub claimed: Counter,
    pub sent: Counter,
    pub rejected: Counter,
    pub later: Counter,
    pub released: Counter,
}
