//! A faithful stand-in for the provider, on loopback: the five endpoints, signature
//! and timestamp checks, deterministic records of every documented shape, fault
//! injection, and counters that let tests prove what was and was not sent.
//!
//! Tests start it in-process with [`Simulator::start`] on port 0; `otp-reconcile
//! simulate` runs the same server as a process. Its `/_sim/*` routes read the stats
//! and change faults, scripts and the cost switch at run time.

mod draw;
pub mod faults;
mod handlers;
pub mod records;
mod server;
pub mod stats;

pub use faults::{Fault, FaultRates, Faults, parse_script};
pub use records::{COST_DELTA, CostChange, Lookup, NOT_FOUND_PREFIX, RecordConfig, Served};
pub use stats::{LoggedRequest, StatsSnapshot};

use crate::clock::{self, SharedClock};
use faults::Scripts;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use secrecy::SecretString;
use stats::Stats;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The key the simulator and the demo use when none is configured.
pub const DEMO_API_KEY: &str = "demo-key";
/// The secret the simulator and the demo use when none is configured.
pub const DEMO_API_SECRET: &str = "demo-secret";

/// Everything the simulator is started with.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// 0 picks a free port.
    pub port: u16,
    pub api_key: String,
    pub api_secret: SecretString,
    pub records: RecordConfig,
    pub faults: Faults,
    /// Faults for the first requests, whatever their id.
    pub script: Vec<Fault>,
    /// A `Timestamp` further than this from the simulator's clock answers -16.
    pub timestamp_window_secs: i64,
    pub clock: SharedClock,
}

impl SimConfig {
    /// The demo key and secret, no faults, default records.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            port: 0,
            api_key: DEMO_API_KEY.to_owned(),
            api_secret: SecretString::from(DEMO_API_SECRET),
            records: RecordConfig::default(),
            faults: Faults::default(),
            script: Vec::new(),
            timestamp_window_secs: 300,
            clock: clock::system(),
        }
    }
}

/// Could not start the simulator.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on 127.0.0.1:{port}")]
pub struct StartError {
    port: u16,
    #[source]
    source: std::io::Error,
}

/// The simulator's shared state.
pub(crate) struct State {
    seed: u64,
    api_key: String,
    api_secret: SecretString,
    timestamp_window_secs: i64,
    clock: SharedClock,
    records: RwLock<RecordConfig>,
    faults: RwLock<Arc<Faults>>,
    limiter: RwLock<Option<Arc<DefaultDirectRateLimiter>>>,
    scripts: Mutex<Scripts>,
    stats: Mutex<Stats>,
}

impl State {
    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn scripts(&self) -> MutexGuard<'_, Scripts> {
        self.scripts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn records(&self) -> RwLockReadGuard<'_, RecordConfig> {
        self.records.read().unwrap_or_else(|p| p.into_inner())
    }

    fn faults(&self) -> Arc<Faults> {
        self.faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_faults(&self, faults: Faults) {
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
    fn rate_limited(&self) -> Option<u64> {
        let limiter = self
            .limiter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let not_until = limiter.check().err()?;
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        Some(wait.as_secs_f64().ceil().max(1.0) as u64)
    }

    fn set_cost_change(&self, change: CostChange) {
        self.records
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .cost_change = change;
    }

    fn reset(&self) {
        *self.stats() = Stats::default();
        self.scripts().clear();
    }
}

/// Starts simulators.
pub struct Simulator;

impl Simulator {
    /// Binds 127.0.0.1 and serves in the background until the handle is shut down
    /// or dropped.
    pub async fn start(config: SimConfig) -> Result<SimHandle, StartError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, config.port))
            .await
            .map_err(|source| StartError {
                port: config.port,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError {
            port: config.port,
            source,
        })?;
        let state = Arc::new(State {
            seed: config.seed,
            api_key: config.api_key,
            api_secret: config.api_secret,
            timestamp_window_secs: config.timestamp_window_secs,
            clock: config.clock,
            records: RwLock::new(config.records),
            faults: RwLock::new(Arc::new(Faults::default())),
            limiter: RwLock::new(None),
            scripts: Mutex::new(Scripts::default()),
            stats: Mutex::new(Stats::default()),
        });
        state.set_faults(config.faults);
        state.scripts().push(None, config.script);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::serve(
            listener,
            handlers::router(state.clone()),
            shutdown.clone(),
        ));
        tracing::info!(%addr, seed = config.seed, "simulator listening");
        Ok(SimHandle {
            addr,
            state,
            shutdown,
            task: Some(task),
        })
    }
}

/// A running simulator. Dropping it stops the server.
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `PROVIDER_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seed(&self) -> u64 {
        self.state.seed
    }

    /// What has been received so far, with the per-id maps.
    pub fn stats(&self) -> StatsSnapshot {
        self.state.stats().snapshot(true)
    }

    /// The last requests received (up to 10,000), optionally only those about `key`
    /// (a verificationId, `order:ID`, `otp:ID`, `sms:ID` or `APP:MCC`).
    pub fn requests(&self, key: Option<&str>) -> Vec<LoggedRequest> {
        self.state.stats().log(key)
    }

    /// Replaces the faults (latency, rate limit, rates).
    pub fn set_faults(&self, faults: Faults) {
        self.state.set_faults(faults);
    }

    /// Queues faults for the next requests about `key`, or any request with `None`.
    pub fn script(&self, key: Option<&str>, faults: impl IntoIterator<Item = Fault>) {
        self.state.scripts().push(key.map(str::to_owned), faults);
    }

    /// Switches the cost of a share of records (see [`CostChange`]).
    pub fn set_cost_change(&self, change: CostChange) {
        self.state.set_cost_change(change);
    }

    /// True when the current cost switch changes this record.
    pub fn cost_changed(&self, lookup: Lookup) -> bool {
        self.state.records().cost_changed(self.state.seed, lookup)
    }

    /// The record the simulator serves for `lookup` after `answered` earlier answers,
    /// without counting a fetch.
    pub fn record(&self, lookup: Lookup, answered: u32) -> Served {
        self.state
            .records()
            .serve(self.state.seed, lookup, answered)
    }

    /// The final record the simulator serves for `lookup`, without counting a fetch.
    pub fn final_record(&self, lookup: Lookup) -> Served {
        self.record(lookup, u32::MAX)
    }

    /// Clears the stats and the scripts.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Stops serving and closes every connection.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
