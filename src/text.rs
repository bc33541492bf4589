//! Text from data (CSV cells, provider strings, ids) as a terminal may show it: control
//! characters escaped, so that a value cannot move the cursor, ring the bell, rewrite
//! the screen or reorder what is shown around it.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character (C0, DEL, C1) and every Unicode bidirectional
/// control escaped: `\n`, `\r`, `\t`, `\x1b`, `\u{202e}`. Borrowed when nothing is.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape("app-1"), "app-1");
        assert!(matches!(escape("app-1"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escape("a\u{1b}[2Jb\u{7}"), "a\\x1b[2Jb\\x07");
        assert_eq!(escape("l1\nl2\r\t"), "l1\\nl2\\r\\t");
        assert_eq!(escape("\u{9b}31m \u{7f}"), "\\u{9b}31m \\x7f");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(escape("prix 0,05 €, 短信"), "prix 0,05 €, 短信");
    }
}
