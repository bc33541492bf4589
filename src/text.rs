//! Text from data (CSV cells, provider strings, ids) as a terminal may show it: control
//! characters escaped, so that a value cannot move the cursor, ring the bell, rewrite
//! the screen or reorder what is shown around it. One rule for the whole program:
//! [`crate::redact::escape_control`]; this is its borrowing form for display paths.

use std::borrow::Cow;

/// `text` with every control character and invisible format character escaped
/// (`\n`, `\t`, `\u{1b}`, `\u{202e}`), borrowed when nothing is.
pub fn escape(text: &str) -> Cow<'_, str> {
    let escaped = crate::redact::escape_control(text);
    if escaped == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(escaped)
    }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape("app-1"), "app-1");
        assert!(matches!(escape("app-1"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escape("a\u{1b}[2Jb\u{7}"), "a\\u{1b}[2Jb\\u{7}");
        assert_eq!(escape("l1\nl2\r\t"), "l1\\nl2\\r\\t");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(escape("prix 0,05 €, 短信"), "prix 0,05 €, 短信");
    }
}
