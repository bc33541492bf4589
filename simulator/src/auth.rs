//! Who may ask: the `Api-Key`, `Sign` and `Timestamp` headers, checked as the provider
//! documents them. The signing rule is written here on its own, not borrowed from the
//! client, so that a mistake in the client's signing shows up as a -1 in tests.

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use secrecy::{ExposeSecret, SecretString};

/// The time a request's `Timestamp` is checked against: the machine's clock moved by
/// `offset` (a test moves it to make a client's clock look fast or slow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimClock {
    pub offset: chrono::TimeDelta,
}

impl SimClock {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }
}

/// The credentials the simulator accepts and how stale a `Timestamp` may be.
pub(crate) struct Auth {
    pub api_key: String,
    pub api_secret: SecretString,
    pub window_secs: i64,
    pub clock: SimClock,
}

impl Auth {
    /// `Api-Key`, then `Sign`, then `Timestamp` within the window; else the provider's
    /// code: -1 for a wrong key or signature, -16 for a missing or stale timestamp.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), i64> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        if header("Api-Key") != Some(self.api_key.as_str()) {
            return Err(-1);
        }
        let timestamp: i64 = header("Timestamp")
            .and_then(|t| t.parse().ok())
            .ok_or(-16)?;
        if header("Sign") != Some(self.expected_sign(timestamp).as_str()) {
            return Err(-1);
        }
        let skew = self.clock.now().timestamp().abs_diff(timestamp);
        if u64::try_from(self.window_secs).is_ok_and(|window| skew <= window) {
            Ok(())
        } else {
            Err(-16)
        }
    }

    /// The provider's rule: md5 of the key, the secret and the timestamp's decimal
    /// digits, one after the other, as lowercase hex.
    fn expected_sign(&self, timestamp: i64) -> String {
        let signed = format!(
            "{}{}{timestamp}",
            self.api_key,
            self.api_secret.expose_secret()
        );
        hex::encode(Md5::digest(signed.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth(window_secs: i64, offset: chrono::TimeDelta) -> Auth {
        Auth {
            api_key: "bDqJFiq9".into(),
            api_secret: SecretString::from("secret"),
            window_secs,
            clock: SimClock { offset },
        }
    }

    fn headers(key: &str, timestamp: &str, sign: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [("Api-Key", key), ("Timestamp", timestamp), ("Sign", sign)] {
            headers.insert(name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn the_sign_is_the_documented_md5() {
        // `printf %s bDqJFiq9secret1630468800 | md5sum`
        assert_eq!(
            auth(300, chrono::TimeDelta::zero()).expected_sign(1_630_468_800),
            "5e05d651d20b87515084ccf02b24c04f"
        );
    }

    #[test]
    fn key_sign_and_timestamp_are_checked_in_that_order() {
        // A simulator clock moved back to 2021-09-01T04:00:00Z, to match the sample.
        let at = DateTime::from_timestamp(1_630_468_800, 0).unwrap();
        let a = auth(300, at - Utc::now());
        let good = "5e05d651d20b87515084ccf02b24c04f";
        assert_eq!(a.check(&headers("bDqJFiq9", "1630468800", good)), Ok(()));
        assert_eq!(a.check(&headers("other", "1630468800", good)), Err(-1));
        assert_eq!(a.check(&headers("bDqJFiq9", "1630468801", good)), Err(-1));
        assert_eq!(a.check(&headers("bDqJFiq9", "soon", good)), Err(-16));
        let stale = auth(300, at - Utc::now() + chrono::TimeDelta::minutes(10));
        assert_eq!(
            stale.check(&headers("bDqJFiq9", "1630468800", good)),
            Err(-16)
        );
    }
}
