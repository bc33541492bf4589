//! The state every handler shares: the configuration a running simulator can change
//! (records, faults and their rate limiter, scripts) and what it has counted.

use crate::SimConfig;
use crate::auth::Auth;
use crate::faults::{Faults, Scripts};
use crate::records::{CostChange, RecordConfig};
use crate::stats::Stats;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

/// The simulator's shared state.
pub(crate) struct State {
    pub seed: u64,
    pub auth: Auth,
    records: RwLock<RecordConfig>,
    faults: RwLock<Arc<Faults>>,
    limiter: RwLock<Option<Arc<DefaultDirectRateLimiter>>>,
    scripts: Mutex<Scripts>,
    stats: Mutex<Stats>,
}

impl State {
    pub fn new(config: SimConfig) -> Self {
        let state = Self {
            seed: config.seed,
            auth: Auth {
                api_key: config.api_key,
                api_secret: config.api_secret,
                window_secs: config.timestamp_window_secs,
                clock: config.clock,
            },
            records: RwLock::new(config.records),
            faults: RwLock::new(Arc::new(Faults::default())),
            limiter: RwLock::new(None),
            scripts: Mutex::new(Scripts::default()),
            stats: Mutex::new(Stats::default()),
        };
        state.set_faults(config.faults);
        state.scripts().push(None, config.script);
        state
    }

    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn scripts(&self) -> MutexGuard<'_, Scripts> {
        self.scripts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn records(&self) -> RwLockReadGuard<'_, RecordConfig> {
        self.records.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn faults(&self) -> Arc<Faults> {
        self.faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        let limiter = faults.rate_limit.and_then(NonZeroU32::new).map(|rate| {
            let burst = faults.rate_burst.and_then(NonZeroU32::new).unwrap_or(rate);
            Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        *self.limiter.write().unwrap_or_else(|p| p.into_inner()) = limiter;
        *self.faults.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(faults);
    }

    /// `Some(seconds to wait)` when the request is over the configured rate.
    pub fn rate_limited(&self) -> Option<u64> {
        let limiter = self
            .limiter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let not_until = limiter.check().err()?;
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        Some(wait.as_secs_f64().ceil().max(1.0) as u64)
    }

    pub fn set_cost_change(&self, change: CostChange) {
        self.records
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .cost_change = change;
    }

    pub fn reset(&self) {
        *self.stats() = Stats::default();
        self.scripts().clear();
    }
}
