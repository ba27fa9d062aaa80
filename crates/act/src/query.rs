//! Event queries: which events to read, in which order, how many.
//!
//! A [`Query`] is a plain value every backend interprets the same way; the
//! conformance kit checks that they do. Stream patterns are globs (`*` any run
//! of characters, `?` one character), so they translate to SQL `LIKE`/`GLOB`
//! and to in-memory matching alike.

use chrono::{DateTime, Utc};

use crate::event::Event;

/// Which streams a query reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFilter {
    /// Exactly this stream.
    Exact(String),
    /// Streams matching a glob: `*` any run of characters, `?` one character,
    /// everything else literal. E.g. `account-*`.
    Pattern(String),
}

impl StreamFilter {
    /// True when `stream` passes the filter.
    pub fn matches(&self, stream: &str) -> bool {
        match self {
            StreamFilter::Exact(s) => s == stream,
            StreamFilter::Pattern(p) => glob_match(p.as_bytes(), stream.as_bytes()),
        }
    }

    /// The pattern as an SQL `LIKE` pattern using `\` as the escape character
    /// (`ESCAPE '\'`): `*`→`%`, `?`→`_`, literal `%`, `_` and `\` escaped.
    pub fn to_like(&self) -> String {
        let p = match self {
            StreamFilter::Exact(s) => return escape_like(s),
            StreamFilter::Pattern(p) => p,
        };
        let mut out = String::with_capacity(p.len() + 4);
        for c in p.chars() {
            match c {
                '*' => out.push('%'),
                '?' => out.push('_'),
                '%' | '_' | '\\' => {
                    out.push('\\');
                    out.push(c);
                }
                c => out.push(c),
            }
        }
        out
    }
}

fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Iterative glob matcher with single-star backtracking: linear for the
/// patterns people write, no recursion.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            if pattern[p] == b'?' {
                // `?` is one character, not one byte: skip a whole UTF-8 sequence.
                t += utf8_len(text[t]);
            } else {
                t += 1;
            }
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            let next = st + utf8_len(text[st]);
            star = Some((sp, next));
            t = next;
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

fn utf8_len(first: u8) -> usize {
    match first {
        b if b < 0x80 => 1,
        b if b >= 0xF0 => 4,
        b if b >= 0xE0 => 3,
        _ => 2,
    }
}

/// A filter over the event log. All conditions combine with AND; the default
/// reads everything forward.
///
/// ```
/// use act::Query;
/// let q = Query::new().stream("account-1").after(10).limit(100);
/// assert_eq!(q.limit, Some(100));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    /// Only these streams.
    pub stream: Option<StreamFilter>,
    /// Only events with one of these names (empty: all names).
    pub names: Vec<String>,
    /// Only ids strictly greater than this.
    pub after: Option<i64>,
    /// Only ids strictly less than this.
    pub before: Option<i64>,
    /// Only events created at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Only events created strictly before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// Only events with this correlation id.
    pub correlation: Option<String>,
    /// At most this many events.
    pub limit: Option<usize>,
    /// Newest first (descending ids) instead of oldest first.
    pub backward: bool,
}

impl Query {
    /// Everything, oldest first.
    pub fn new() -> Self {
        Query::default()
    }

    /// Only this stream.
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = Some(StreamFilter::Exact(stream.into()));
        self
    }

    /// Only streams matching a glob (`*`, `?`).
    pub fn stream_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.stream = Some(StreamFilter::Pattern(pattern.into()));
        self
    }

    /// Only these event names.
    pub fn names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.names = names.into_iter().map(Into::into).collect();
        self
    }

    /// Only ids greater than `id`.
    pub fn after(mut self, id: i64) -> Self {
        self.after = Some(id);
        self
    }

    /// Only ids less than `id`.
    pub fn before(mut self, id: i64) -> Self {
        self.before = Some(id);
        self
    }

    /// Only events created at or after `t`.
    pub fn created_after(mut self, t: DateTime<Utc>) -> Self {
        self.created_after = Some(t);
        self
    }

    /// Only events created before `t`.
    pub fn created_before(mut self, t: DateTime<Utc>) -> Self {
        self.created_before = Some(t);
        self
    }

    /// Only events of this correlation.
    pub fn correlation(mut self, id: impl Into<String>) -> Self {
        self.correlation = Some(id.into());
        self
    }

    /// At most `n` events.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Newest first.
    pub fn backward(mut self) -> Self {
        self.backward = true;
        self
    }

    /// True when `e` passes every condition except `limit` and order. Backends
    /// that filter in memory use this so they agree with the SQL ones.
    pub fn matches(&self, e: &Event) -> bool {
        if let Some(f) = &self.stream {
            if !f.matches(&e.stream) {
                return false;
            }
        }
        if !self.names.is_empty() && !self.names.iter().any(|n| n == &e.name) {
            return false;
        }
        if self.after.is_some_and(|a| e.id <= a) || self.before.is_some_and(|b| e.id >= b) {
            return false;
        }
        if self.created_after.is_some_and(|t| e.meta.created < t)
            || self.created_before.is_some_and(|t| e.meta.created >= t)
        {
            return false;
        }
        if let Some(c) = &self.correlation {
            if &e.meta.correlation != c {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_and_question_marks() {
        let p = |s: &str| StreamFilter::Pattern(s.into());
        assert!(p("account-*").matches("account-1"));
        assert!(p("account-*").matches("account-"));
        assert!(!p("account-*").matches("audit-1"));
        assert!(p("*-1").matches("audit-1"));
        assert!(p("a?c").matches("abc"));
        assert!(p("a?c").matches("aéc"));
        assert!(!p("a?c").matches("ac"));
        assert!(p("*").matches(""));
        assert!(p("a*b*c").matches("a-x-b-y-c"));
        assert!(!p("a*b*c").matches("a-x-b-y"));
        assert!(p("100%").matches("100%"));
        assert!(!p("100%").matches("1000"));
    }

    #[test]
    fn like_translation_escapes_sql_wildcards() {
        assert_eq!(StreamFilter::Pattern("a_*".into()).to_like(), "a\\_%");
        assert_eq!(StreamFilter::Pattern("x?%".into()).to_like(), "x_\\%");
        assert_eq!(StreamFilter::Exact("a%b".into()).to_like(), "a\\%b");
    }
}
