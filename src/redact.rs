//! URLs as they may be shown: the one place that takes credentials out of a URL before it
//! is logged, printed or put in a summary (`PUSHGATEWAY_URL`, `DATABASE_URL`, the
//! provider's base URL, and the URLs inside HTTP client errors).

use url::Url;

/// What a password (or a secret query parameter) is replaced with.
pub const MASK: &str = "***";

/// Query parameters that carry a secret (libpq's `password`, and the usual token names).
const SECRET_PARAMS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "sslpassword",
    "token",
    "access_token",
    "secret",
    "api_key",
    "apikey",
];

/// `url` without its password (the user name is kept: it says which account) and with
/// secret query parameters masked.
pub fn url(url: &Url) -> Url {
    let mut out = url.clone();
    if out.password().is_some() {
        // Only fails for URLs that cannot have credentials, which then have none.
        let _ = out.set_password(Some(MASK));
    }
    if out.query().is_some() {
        let pairs: Vec<(String, String)> = out
            .query_pairs()
            .map(|(k, v)| {
                let secret = SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s));
                (
                    k.into_owned(),
                    if secret {
                        MASK.to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        out.query_pairs_mut().clear().extend_pairs(pairs);
    }
    out
}

/// A URL given as text, for a log line or a message. Text that does not parse as a URL
/// (it may still hold `user:password@`) has whatever sits between `://` and the last `@`
/// of its authority replaced, so a typo in a URL never prints its password.
pub fn url_str(text: &str) -> String {
    match Url::parse(text.trim()) {
        Ok(parsed) => {
            let shown = url(&parsed).to_string();
            // Keep the text as given when nothing was secret (Url adds a trailing '/').
            if shown == parsed.to_string() {
                text.to_owned()
            } else {
                shown
            }
        }
        Err(_) => mask_userinfo(text),
    }
}

/// A reqwest error whose message names the URL of the request: the same error with
/// that URL redacted.
pub fn reqwest_error(error: reqwest::Error) -> reqwest::Error {
    match error.url().map(url) {
        Some(shown) => error.with_url(shown),
        None => error,
    }
}

/// Text from outside (a provider's answer, a CSV cell) as it may be shown on a terminal
/// or in a log line: control characters (ESC, BEL, CR, NUL...) and other invisible
/// format characters become escapes like `\u{1b}`; newlines and tabs become `\n`, `\t`.
/// Everything else, quotes included, is left as it is.
pub fn escape_control(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || is_invisible_format(c) => {
                out.extend(c.escape_unicode());
            }
            c => out.push(c),
        }
    }
    out
}

/// Bidirectional overrides and zero-width characters: they reorder or hide what a
/// terminal shows.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// `scheme://user:secret@host...` → `scheme://user:***@host...`, on text that is not a
/// parseable URL.
fn mask_userinfo(text: &str) -> String {
    let Some(start) = text.find("://").map(|i| i + 3) else {
        return text.to_owned();
    };
    let rest = &text[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return text.to_owned();
    };
    let user = rest[..at].split(':').next().unwrap_or_default();
    format!("{}{user}:{MASK}{}", &text[..start], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for (given, shown) in [
            ("http://user:pass@host/", "http://user:***@host/"),
            (
                "postgres://app:hunter2@db.internal:5432/otp",
                "postgres://app:***@db.internal:5432/otp",
            ),
            (
                "postgres://db/otp?user=app&password=hunter2&sslmode=require",
                "postgres://db/otp?user=app&password=***&sslmode=require",
            ),
            ("https://api.itniotech.com", "https://api.itniotech.com"),
            ("http://user@host:9091", "http://user@host:9091"),
            // Not a URL (a space in the port), the password still goes.
            (
                "http://user:pa ss@host:90 91/",
                "http://user:***@host:90 91/",
            ),
            ("http://u:p:q@[bad/x", "http://u:***@[bad/x"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(url_str(given), shown, "{given}");
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape_control("ok \"x\"\u{1b}[31mred\u{7}\nnext\u{0}\u{202e}"),
            "ok \"x\"\\u{1b}[31mred\\u{7}\\nnext\\u{0}\\u{202e}"
        );
        assert_eq!(escape_control("plain, é ü 中"), "plain, é ü 中");
    }

    #[test]
    fn a_url_keeps_everything_but_the_secret() {
        let given = Url::parse("https://me:s3cret@gw.example:9091/base?x=1").unwrap();
        let shown = url(&given);
        assert_eq!(shown.as_str(), "https://me:***@gw.example:9091/base?x=1");
        assert!(!shown.as_str().contains("s3cret"));
    }
}
