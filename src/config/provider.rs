//! How to reach the provider: its flags and environment ([`ProviderArgs`]), checked
//! into [`ProviderSettings`]. The API secret is read from `PROVIDER_API_SECRET` or the
//! file named by `PROVIDER_API_SECRET_FILE`, never from a flag, and lives in a
//! [`SecretString`] from then on.

use super::ConfigError;
use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::{Host, Url};

/// The environment variable holding the API secret itself.
pub const SECRET_ENV: &str = "PROVIDER_API_SECRET";
/// The environment variable naming a file that holds the API secret.
pub const SECRET_FILE_ENV: &str = "PROVIDER_API_SECRET_FILE";

/// Everything the provider client needs.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub base_url: Url,
    pub api_key: String,
    pub api_secret: SecretString,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Answers larger than this are an error, not an allocation.
    pub max_answer_bytes: usize,
    /// Attempts (sms, call and sna together) one record may hold; more makes the answer
    /// unreadable. Also bounds the JSON values of an answer (100 per attempt, plus 1000).
    pub max_record_attempts: usize,
}

impl ProviderSettings {
    /// Checks the base URL (https, or http to loopback unless `allow_insecure_http`)
    /// and the key, with default timeouts and cap.
    pub fn new(
        base_url: &str,
        api_key: &str,
        api_secret: SecretString,
        allow_insecure_http: bool,
    ) -> Result<Self, ConfigError> {
        if api_key.trim().is_empty() {
            return Err(ConfigError::MissingKey);
        }
        Ok(Self {
            base_url: checked_base_url(base_url, allow_insecure_http)?,
            api_key: api_key.trim().to_owned(),
            api_secret,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_answer_bytes: 1024 * 1024,
            max_record_attempts: crate::provider::shape::DEFAULT_MAX_ATTEMPTS,
        })
    }
}

/// Parses the base URL and refuses plain http to anything but loopback.
pub fn checked_base_url(raw: &str, allow_insecure_http: bool) -> Result<Url, ConfigError> {
    // Messages show the URL without its credentials.
    let shown = || crate::redact::url_str(raw);
    let mut url = Url::parse(raw.trim()).map_err(|source| ConfigError::BadUrl {
        url: shown(),
        source,
    })?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure_http || is_loopback(&url) => {}
        "http" => return Err(ConfigError::InsecureHttp(shown())),
        _ => return Err(ConfigError::BadScheme(shown())),
    }
    // Paths are joined below the base: make sure it ends with one slash.
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// The API secret from the environment value or the file (exactly one of them).
/// Trailing newlines in the file are dropped; the content is never echoed.
pub fn api_secret(
    from_env: Option<String>,
    file: Option<&Path>,
) -> Result<SecretString, ConfigError> {
    let from_env = from_env.filter(|s| !s.is_empty());
    match (from_env, file) {
        (Some(_), Some(_)) => Err(ConfigError::TwoSecrets),
        (Some(secret), None) => Ok(SecretString::from(secret)),
        (None, Some(path)) => {
            let content =
                std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
                    path: path.to_owned(),
                    source,
                })?;
            let secret = SecretString::from(content.trim_end_matches(['\n', '\r']));
            if secret.expose_secret().is_empty() {
                return Err(ConfigError::EmptySecretFile(path.to_owned()));
            }
            Ok(secret)
        }
        (None, None) => Err(ConfigError::MissingSecret),
    }
}

/// The secret from the process environment, as the binary reads it.
pub fn api_secret_from_env(file: Option<&Path>) -> Result<SecretString, ConfigError> {
    api_secret(std::env::var(SECRET_ENV).ok(), file)
}

/// How to reach the provider. The API secret comes from `PROVIDER_API_SECRET` or the
/// file in `PROVIDER_API_SECRET_FILE`, never from a flag.
#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// The provider's base URL.
    #[arg(
        long,
        env = "PROVIDER_BASE_URL",
        default_value = "https://api.itniotech.com"
    )]
    pub base_url: String,

    /// The API key (`Api-Key` header).
    #[arg(long, env = "PROVIDER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// A file holding the API secret (a mounted Secret). Or set PROVIDER_API_SECRET.
    #[arg(long, env = SECRET_FILE_ENV)]
    pub api_secret_file: Option<PathBuf>,

    /// Allow plain http:// to a host that is not loopback.
    #[arg(long, env = "ALLOW_INSECURE_HTTP", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_insecure_http: bool,

    /// Time allowed to connect to the provider.
    #[arg(long, env = "PROVIDER_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Time allowed for a whole request, answer included.
    #[arg(long, env = "PROVIDER_REQUEST_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Answers larger than this many bytes are an error.
    #[arg(long, env = "PROVIDER_MAX_ANSWER_BYTES", default_value_t = 1024 * 1024)]
    pub max_answer_bytes: usize,

    /// Attempts one record may hold (sms, call and sna together); more is unreadable.
    #[arg(long, env = "PROVIDER_MAX_RECORD_ATTEMPTS", default_value_t = crate::provider::shape::DEFAULT_MAX_ATTEMPTS)]
    pub max_record_attempts: usize,
}

impl ProviderArgs {
    /// The settings, with the secret read from the environment or its file.
    pub fn settings(&self) -> Result<ProviderSettings, ConfigError> {
        let key = self.api_key.as_deref().ok_or(ConfigError::MissingKey)?;
        let secret = api_secret_from_env(self.api_secret_file.as_deref())?;
        let mut settings =
            ProviderSettings::new(&self.base_url, key, secret, self.allow_insecure_http)?;
        if self.max_answer_bytes == 0 {
            return Err(ConfigError::Invalid(
                "--max-answer-bytes must be positive".into(),
            ));
        }
        settings.connect_timeout = self.connect_timeout;
        settings.request_timeout = self.request_timeout;
        settings.max_answer_bytes = self.max_answer_bytes;
        if self.max_record_attempts == 0 {
            return Err(ConfigError::Invalid(
                "--max-record-attempts must be positive".into(),
            ));
        }
        settings.max_record_attempts = self.max_record_attempts;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        for ok in [
            "https://api.itniotech.com",
            "http://127.0.0.1:18080",
            "http://localhost:1",
            "http://[::1]:80",
        ] {
            assert!(checked_base_url(ok, false).is_ok(), "{ok}");
        }
        assert!(matches!(
            checked_base_url("http://api.itniotech.com", false),
            Err(ConfigError::InsecureHttp(_))
        ));
        assert!(checked_base_url("http://api.itniotech.com", true).is_ok());
        assert!(matches!(
            checked_base_url("ftp://x", true),
            Err(ConfigError::BadScheme(_))
        ));
        assert!(matches!(
            checked_base_url("not a url", true),
            Err(ConfigError::BadUrl { .. })
        ));
        assert_eq!(
            checked_base_url("https://h/api", false).unwrap().as_str(),
            "https://h/api/"
        );
    }

    #[test]
    fn the_secret_comes_from_one_place_and_is_never_shown() {
        let s = api_secret(Some("s3cr3t".into()), None).unwrap();
        assert_eq!(s.expose_secret(), "s3cr3t");
        assert!(!format!("{s:?}").contains("s3cr3t"));
        assert!(matches!(
            api_secret(None, None),
            Err(ConfigError::MissingSecret)
        ));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\n").unwrap();
        assert_eq!(
            api_secret(None, Some(&file)).unwrap().expose_secret(),
            "from-file"
        );
        assert!(matches!(
            api_secret(Some("x".into()), Some(&file)),
            Err(ConfigError::TwoSecrets)
        ));
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            api_secret(None, Some(&file)),
            Err(ConfigError::EmptySecretFile(_))
        ));
        let missing = dir.path().join("nope");
        let err = api_secret(None, Some(&missing)).unwrap_err();
        assert!(err.to_string().contains("nope"));
    }

    #[test]
    fn settings_debug_redacts_the_secret() {
        let s = ProviderSettings::new(
            "http://127.0.0.1:1",
            "key",
            SecretString::from("hunter2"),
            false,
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
