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

/// The machine's clock moved on by hand: tests advance it to reach a deadline (a
/// stage's share of `--max-runtime`) at a point they choose, not by waiting.
#[derive(Debug, Default)]
pub struct AdjustableClock {
    ahead_ms: std::sync::atomic::AtomicI64,
}

impl AdjustableClock {
    /// Moves the clock `d` ahead.
    pub fn advance(&self, d: std::time::Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.ahead_ms
            .fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for AdjustableClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::milliseconds(self.ahead_ms.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Waits until `clock` reads `deadline` or later, looking at it at least every
/// `every` (so a clock moved ahead is noticed within that).
pub async fn sleep_until(clock: &dyn Clock, deadline: DateTime<Utc>, every: std::time::Duration) {
    loop {
        let left = (deadline - clock.now()).to_std().unwrap_or_default();
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(every)).await;
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
