//! CSV cells (RFC 4180), the one implementation every export uses: viewer
//! records, invoice lines, statements.
//!
//! Text cells are neutralised against formula injection: a cell starting
//! with `=`, `+`, `-`, `@`, a tab or a carriage return is prefixed with `'`,
//! so that a spreadsheet shows it as text instead of evaluating it (a viewer
//! id or custom viewer data is chosen by whoever signs viewer tokens).
//! Numbers this program formats go through [`number`] unchanged.

use std::borrow::Cow;

/// A text cell: neutralised, then quoted when it holds a comma, quote, CR or LF.
pub fn text(s: &str) -> Cow<'_, str> {
    let risky = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let needs_quotes = s.contains([',', '"', '\n', '\r']);
    if !risky && !needs_quotes {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 3);
    if needs_quotes {
        out.push('"');
    }
    if risky {
        out.push('\'');
    }
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if needs_quotes {
        out.push('"');
    }
    Cow::Owned(out)
}

/// A number this program formatted (a negative amount keeps its sign).
pub fn number(s: &str) -> &str {
    debug_assert!(s.bytes().all(|b| b.is_ascii_digit() || b == b'-' || b == b'.'), "{s:?} is not a number");
    s
}

/// Append `cells` as one line (`\n`-terminated).
pub fn line<'a>(out: &mut String, cells: impl IntoIterator<Item = Cow<'a, str>>) {
    for (i, c) in cells.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&c);
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_neutralises() {
        assert_eq!(text("plain"), "plain");
        assert_eq!(text("a,b"), "\"a,b\"");
        assert_eq!(text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(text("two\nlines"), "\"two\nlines\"");
        for (evil, safe) in [
            ("=HYPERLINK(\"http://x\")", "\"'=HYPERLINK(\"\"http://x\"\")\""),
            ("+1+1", "'+1+1"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tcmd", "'\tcmd"),
            ("\rcmd", "\"'\rcmd\""),
        ] {
            assert_eq!(text(evil), safe, "{evil:?}");
        }
        assert_eq!(text("a=b"), "a=b", "only a leading character is risky");
        assert_eq!(number("-12.50"), "-12.50");
        let mut s = String::new();
        line(&mut s, [text("x"), Cow::Borrowed(number("1"))]);
        assert_eq!(s, "x,1\n");
    }
}
