//! `otp-reconcile simulate`: the provider simulator as a process.

use crate::config;
use crate::exit::Exit;
use anyhow::Context;
use clap::Args;
use otp_reconcile_simulator::{
    CostChange, DEMO_API_KEY, DEMO_API_SECRET, FaultRates, Faults, RecordConfig, SimConfig,
    Simulator, parse_script,
};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Port on 127.0.0.1 (0 picks a free one and prints it).
    #[arg(long, env = "SIM_PORT", default_value_t = 18080)]
    pub port: u16,

    /// Seed for every record and drawn fault.
    #[arg(long, env = "SIM_SEED", default_value_t = 7)]
    pub seed: u64,

    /// The key it accepts (default: the demo key).
    #[arg(long, env = "PROVIDER_API_KEY", default_value = DEMO_API_KEY, hide_env_values = true)]
    pub api_key: String,

    /// A file with the secret it accepts. Or PROVIDER_API_SECRET; default: the demo secret.
    #[arg(long, env = config::SECRET_FILE_ENV)]
    pub api_secret_file: Option<PathBuf>,

    /// Latency added to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Up to this much more latency, drawn per request.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Answer 429 with Retry-After above this many requests per second.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Burst allowed above the rate limit (default: one second's worth).
    #[arg(long)]
    pub rate_burst: Option<u32>,
    /// How long a stall holds a request before closing it.
    #[arg(long, default_value_t = 30_000)]
    pub stall_ms: u64,
    /// Retry-After of drawn 429s, in seconds.
    #[arg(long, default_value_t = 1)]
    pub retry_after_secs: u64,

    /// Share of requests answered HTTP 500.
    #[arg(long, default_value_t = 0.0)]
    pub http_500: f64,
    /// Share answered HTTP 503.
    #[arg(long, default_value_t = 0.0)]
    pub http_503: f64,
    /// Share answered HTTP 429.
    #[arg(long, default_value_t = 0.0)]
    pub http_429: f64,
    /// Share whose connection is closed unanswered.
    #[arg(long, default_value_t = 0.0)]
    pub drop: f64,
    /// Share held past the client's timeout, then closed.
    #[arg(long, default_value_t = 0.0)]
    pub stall: f64,
    /// Share answered with a body that is not JSON.
    #[arg(long, default_value_t = 0.0)]
    pub malformed: f64,
    /// Share answered with the JSON cut in half.
    #[arg(long, default_value_t = 0.0)]
    pub truncated: f64,
    /// Share answered with a record whose money does not parse ("1e5").
    #[arg(long, default_value_t = 0.0)]
    pub bad_record: f64,
    /// Share answered with more than 2 MiB.
    #[arg(long, default_value_t = 0.0)]
    pub oversized: f64,
    /// Share answered with a record of about 1 MB holding 340,000 empty sms attempts.
    #[arg(long, default_value_t = 0.0)]
    pub huge_record: f64,
    /// Share answered with a record whose first money field is written twice.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_key: f64,
    /// Share answered with `status` written twice ({"status":"0","status":"-1",...}).
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_status: f64,
    /// Share answered with the record turned back to still sending.
    #[arg(long, default_value_t = 0.0)]
    pub regressed: f64,
    /// Share answered with another HTTP status and a non-JSON body, as CODE=SHARE
    /// (repeatable: 400=1 for a misbehaving proxy).
    #[arg(long = "http", value_parser = parse_http_share)]
    pub https: Vec<(u16, f64)>,
    /// Share answered with a provider status code, as CODE=SHARE (repeatable: -18=0.01).
    #[arg(long = "status", value_parser = parse_status_share, allow_hyphen_values = true)]
    pub statuses: Vec<(i64, f64)>,
    /// Faults for the first requests in order, e.g. "-16,ok,500,drop,stall,malformed".
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub script: String,

    /// Share of ids that answer matched 3 (no such id).
    #[arg(long, default_value_t = 0.02)]
    pub not_found_share: f64,
    /// Ids with this prefix answer matched 3.
    #[arg(long, default_value = otp_reconcile_simulator::NOT_FOUND_PREFIX)]
    pub not_found_prefix: String,
    /// Share of ids still sending when first fetched.
    #[arg(long, default_value_t = 0.10)]
    pub sending_share: f64,
    /// Answers such an id gives while still sending.
    #[arg(long, default_value_t = 1)]
    pub sending_fetches: u32,
    /// Share of records whose cost the switch changes.
    #[arg(long, default_value_t = 0.0)]
    pub cost_change_share: f64,
    /// Which set of records the switch picks.
    #[arg(long, default_value_t = 0)]
    pub cost_change_epoch: u32,

    /// Stop by itself after this long (default: until SIGINT or SIGTERM).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub exit_after: Option<Duration>,
}

fn parse_status_share(s: &str) -> Result<(i64, f64), String> {
    let (code, share) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected CODE=SHARE, like -18=0.01"))?;
    let code = code
        .trim()
        .parse()
        .map_err(|_| format!("{code:?} is not a status code"))?;
    let share = share
        .trim()
        .parse()
        .map_err(|_| format!("{share:?} is not a share"))?;
    Ok((code, share))
}

fn parse_http_share(s: &str) -> Result<(u16, f64), String> {
    let (code, share) = parse_status_share(s)?;
    match u16::try_from(code) {
        Ok(code) if (100..600).contains(&code) => Ok((code, share)),
        _ => Err(format!("{code} is not an HTTP status")),
    }
}

impl SimulateArgs {
    fn config(&self) -> Result<SimConfig, config::ConfigError> {
        let shares = [
            self.http_500,
            self.http_503,
            self.http_429,
            self.drop,
            self.stall,
            self.malformed,
            self.truncated,
            self.not_found_share,
            self.sending_share,
            self.cost_change_share,
            self.huge_record,
            self.duplicate_key,
            self.duplicate_status,
            self.regressed,
        ];
        if shares
            .iter()
            .chain(self.statuses.iter().map(|(_, s)| s))
            .chain(self.https.iter().map(|(_, s)| s))
            .any(|s| !(0.0..=1.0).contains(s))
        {
            return Err(config::ConfigError::Invalid(
                "every share must be between 0 and 1".into(),
            ));
        }
        let secret = match config::api_secret_from_env(self.api_secret_file.as_deref()) {
            Err(config::ConfigError::MissingSecret) => SecretString::from(DEMO_API_SECRET),
            other => other?,
        };
        let script = parse_script(&self.script).map_err(config::ConfigError::Invalid)?;
        Ok(SimConfig {
            port: self.port,
            // An empty PROVIDER_API_KEY (set but blank) means the demo key, as an unset one does.
            api_key: if self.api_key.trim().is_empty() {
                DEMO_API_KEY.to_owned()
            } else {
                self.api_key.trim().to_owned()
            },
            api_secret: secret,
            records: RecordConfig {
                not_found_share: self.not_found_share,
                not_found_prefix: self.not_found_prefix.clone(),
                sending_share: self.sending_share,
                sending_fetches: self.sending_fetches,
                cost_change: CostChange {
                    share: self.cost_change_share,
                    epoch: self.cost_change_epoch,
                },
            },
            faults: Faults {
                latency_ms: self.latency_ms,
                jitter_ms: self.jitter_ms,
                rate_limit: self.rate_limit,
                rate_burst: self.rate_burst,
                stall_ms: Some(self.stall_ms),
                retry_after_secs: Some(self.retry_after_secs),
                rates: FaultRates {
                    http_500: self.http_500,
                    http_503: self.http_503,
                    http_429: self.http_429,
                    drop: self.drop,
                    stall: self.stall,
                    malformed: self.malformed,
                    truncated: self.truncated,
                    bad_record: self.bad_record,
                    oversized: self.oversized,
                    huge_record: self.huge_record,
                    duplicate_key: self.duplicate_key,
                    duplicate_status: self.duplicate_status,
                    regressed: self.regressed,
                    status: self.statuses.iter().copied().collect::<BTreeMap<_, _>>(),
                    http: self.https.iter().copied().collect::<BTreeMap<_, _>>(),
                },
            },
            script,
            ..SimConfig::new(self.seed)
        })
    }
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<Exit> {
    let sim = Simulator::start(args.config()?)
        .await
        .context("cannot start the simulator")?;
    // The address on stdout, alone on its line, for scripts that start it on port 0.
    println!("{}", sim.base_url());
    let stop = async {
        match args.exit_after {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = stop => {}
        _ = crate::shutdown::signalled() => {}
    }
    sim.shutdown().await;
    Ok(Exit::Done)
}
