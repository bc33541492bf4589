//! Settings: typed, built once from flags and environment variables (12-factor),
//! validated here, and passed down. Each group of flags builds its part: where the
//! database is ([`DbArgs`]), how to reach the provider ([`ProviderArgs`] into
//! [`ProviderSettings`]), how a pass runs ([`PassArgs`] into [`PassSettings`]), the
//! range a command covers ([`RangeArgs`]). [`Settings`] is all of it for a pass that
//! calls the provider. The API secret is read from `PROVIDER_API_SECRET` or the file
//! named by `PROVIDER_API_SECRET_FILE`, never from a flag.

mod db;
mod pass;
mod provider;
mod range;

pub use db::DbArgs;
pub use pass::{Delays, PassArgs, PassSettings, default_owner};
pub use provider::{
    ProviderArgs, ProviderSettings, SECRET_ENV, SECRET_FILE_ENV, api_secret, api_secret_from_env,
    checked_base_url,
};
pub use range::RangeArgs;

use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// A setting that cannot be used. The message names the setting, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no API secret: set {SECRET_ENV} or {SECRET_FILE_ENV}")]
    MissingSecret,
    #[error("both {SECRET_ENV} and {SECRET_FILE_ENV} are set; keep one")]
    TwoSecrets,
    #[error("cannot read the API secret file {path}")]
    SecretFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API secret file {0} is empty")]
    EmptySecretFile(PathBuf),
    #[error("no API key: set PROVIDER_API_KEY or --api-key")]
    MissingKey,
    #[error("PROVIDER_BASE_URL {url:?} is not a URL")]
    BadUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error(
        "PROVIDER_BASE_URL {0} is plain http to a host that is not loopback; \
         use https, or pass --allow-insecure-http"
    )]
    InsecureHttp(String),
    #[error("PROVIDER_BASE_URL {0} must be http or https")]
    BadScheme(String),
    #[error("{0}")]
    Invalid(String),
}

/// What `run` and `replay` run with when they call the provider.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pass: PassSettings,
    pub provider: ProviderSettings,
    /// The database, with a pool large enough for the pass's writers.
    pub db: DbArgs,
    /// Where the pass's metrics are pushed, if anywhere.
    pub pushgateway: Option<Url>,
}

impl Settings {
    /// Adds to the pass's settings (`pass`, from `flags`) the provider's, then checks
    /// the lease against the request timeout: in that order, so the first error a
    /// command line shows is the same whatever else is wrong in it.
    pub fn new(
        pass: PassSettings,
        flags: &PassArgs,
        provider: &ProviderArgs,
        db: &DbArgs,
    ) -> Result<Self, ConfigError> {
        let provider = provider.settings()?;
        check_lease(pass.lease, provider.request_timeout)?;
        Ok(Self {
            db: db.with_at_least(pass.writers + 2),
            pushgateway: flags.pushgateway.clone(),
            pass,
            provider,
        })
    }
}

/// A lease must outlast this many request timeouts: renewed every third of it, it then
/// always has at least one request timeout left, so a request never outlives it.
pub const LEASE_TIMEOUTS: u32 = 3;

/// Refuses a lease too short for the requests made under it: zero, or shorter than
/// [`LEASE_TIMEOUTS`] request timeouts.
pub fn check_lease(lease: Duration, request_timeout: Duration) -> Result<(), ConfigError> {
    let least = request_timeout * LEASE_TIMEOUTS;
    if lease.is_zero() || lease < least {
        return Err(ConfigError::Invalid(format!(
            "--lease {} is too short: it must be at least {LEASE_TIMEOUTS} times \
             --request-timeout ({}), that is {} or more, so that no request outlives \
             the lease it is sent under",
            humantime::format_duration(lease),
            humantime::format_duration(request_timeout),
            humantime::format_duration(least),
        )));
    }
    Ok(())
}
