//! A faithful stand-in for the provider, on loopback: the five endpoints, signature
//! and timestamp checks, deterministic records of every documented shape, fault
//! injection, and counters that let tests prove what was and was not sent.
//!
//! Tests start it in-process with [`Simulator::start`] on port 0; `otp-reconcile
//! simulate` runs the same server as a process. Its `/_sim/*` routes read the stats
//! and change faults, scripts and the cost switch at run time.
//!
//! It does not depend on `otp-reconcile`: the signing rule, the endpoints and the body
//! checks are written here from the provider's pages, so that a mistake in the client
//! fails a test instead of being made on both sides.

mod auth;
mod draw;
pub mod faults;
mod handlers;
pub mod records;
mod server;
mod state;
pub mod stats;

pub use auth::SimClock;
pub use faults::{Fault, FaultRates, Faults, parse_script};
pub use records::{COST_DELTA, CostChange, Lookup, NOT_FOUND_PREFIX, RecordConfig, Served};
pub use stats::{LoggedRequest, StatsSnapshot};

use secrecy::SecretString;
use state::State;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
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
    pub clock: SimClock,
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
            clock: SimClock::default(),
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
        let seed = config.seed;
        let state = Arc::new(State::new(config));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::serve(
            listener,
            handlers::router(state.clone()),
            shutdown.clone(),
        ));
        tracing::info!(%addr, seed, "simulator listening");
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
