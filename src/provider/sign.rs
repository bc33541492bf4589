//! Request signing: `Sign = lowercase hex md5(apiKey + apiSecret + Timestamp)`.
//! The only place the secret is exposed.

use md5::{Digest, Md5};
use secrecy::{ExposeSecret, SecretString};

/// The two headers that change with every request (the client holds `Api-Key` as a
/// header value of its own, checked once).
pub struct SignedHeaders {
    pub timestamp: String,
    pub sign: String,
}

/// The lowercase hex md5 of `key + secret + timestamp`.
pub fn sign(api_key: &str, api_secret: &SecretString, timestamp: i64) -> String {
    sign_text(api_key, api_secret, &timestamp.to_string())
}

/// [`sign`] of a timestamp already written out.
fn sign_text(api_key: &str, api_secret: &SecretString, timestamp: &str) -> String {
    let mut md5 = Md5::new();
    md5.update(api_key.as_bytes());
    md5.update(api_secret.expose_secret().as_bytes());
    md5.update(timestamp.as_bytes());
    hex::encode(md5.finalize())
}

/// The headers for a request sent at `timestamp` (unix seconds).
pub fn headers(api_key: &str, api_secret: &SecretString, timestamp: i64) -> SignedHeaders {
    let timestamp = timestamp.to_string();
    SignedHeaders {
        sign: sign_text(api_key, api_secret, &timestamp),
        timestamp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_is_lowercase_hex_md5_of_key_secret_timestamp() {
        // md5("bDqJFiq9" + "secret" + "1630468800"), computed independently with
        // `printf %s bDqJFiq9secret1630468800 | md5sum`.
        let secret = SecretString::from("secret");
        assert_eq!(
            sign("bDqJFiq9", &secret, 1_630_468_800),
            "5e05d651d20b87515084ccf02b24c04f"
        );
    }
}
