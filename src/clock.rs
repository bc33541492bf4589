//! Time, injectable: production uses the system clock; tests shift it to provoke
//! a stale `Timestamp` or to age sends without waiting.

use chrono::{DateTime, Duration, Utc};
use std::sync::Arc;

/// A source of "now". Passed in wherever a test needs to control time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The machine's clock shifted by a fixed amount: a clock that runs fast or slow.
#[derive(Debug, Clone, Copy)]
pub struct SkewedClock(pub Duration);

impl Clock for SkewedClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.0
    }
}

/// `t + d`, saturating at the end of time instead of panicking on an absurd duration.
pub fn after(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t - d`, saturating at the start of time.
pub fn before(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The shared handle most code holds.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock as a shared handle.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}
