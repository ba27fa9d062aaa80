//! Input limits every backend enforces, the memory store included: what one
//! store accepts, all accept, and nothing is accepted that some store could
//! not store, index or read back (docs/limits.md).
//!
//! | What | Limit |
//! |---|---|
//! | stream, event, reaction and queue names | 1–[`MAX_NAME_BYTES`] bytes of UTF-8, no U+0000 |
//! | JSON nesting (data, actor) | [`MAX_DEPTH`] levels of arrays and objects |
//! | one event's data, as JSON text | [`MAX_DATA_BYTES`] bytes |
//! | strings in JSON (keys and values) | no U+0000 (PostgreSQL `jsonb` cannot hold it) |
//! | events in one append | [`MAX_EVENTS_PER_APPEND`] |
//! | idempotency keys, correlation ids | [`MAX_NAME_BYTES`] bytes, no U+0000 |
//!
//! Appends check them before anything is written ([`check_append`]); a
//! refused append is [`Error::InvalidInput`] naming the limit. The broker
//! checks a resolver's target with [`check_name`] before enqueueing, so a bad
//! target blocks only that reaction's event, never the other queues.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::event::Append;

/// Longest name (stream, event, reaction, queue), key or correlation id, in
/// bytes. PostgreSQL's b-tree entries hold about 2,700 bytes; this leaves room
/// for the other columns of an index entry.
pub const MAX_NAME_BYTES: usize = 1024;

/// Deepest nesting of arrays and objects in a payload. serde_json refuses to
/// read back more than 128; PostgreSQL and Redis keep what they are given.
pub const MAX_DEPTH: usize = 64;

/// Largest data of one event, as JSON text.
pub const MAX_DATA_BYTES: usize = 8 * 1024 * 1024;

/// Most events in one append.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;

/// Checks a name (what it is, for the message).
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidInput(format!("{what} is empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::InvalidInput(format!(
            "{what} `{}…` is {} bytes long: the limit is {MAX_NAME_BYTES} bytes",
            prefix(name),
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(Error::InvalidInput(format!(
            "{what} `{}` contains U+0000, which no store can hold",
            name.replace('\0', "\\0")
        )));
    }
    Ok(())
}

fn prefix(s: &str) -> &str {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Checks a JSON value: nesting depth and U+0000 in strings and keys.
pub fn check_json(what: &str, value: &Value) -> Result<()> {
    walk(value, 1, &|| what.to_string()).map(|_| ())
}

/// The most bytes of JSON text a number can take (`-1.7976931348623157e308`
/// is 23).
const MAX_NUMBER_BYTES: usize = 32;

/// Checks `v` at nesting level `depth` as [`check_json`] does (naming the
/// value, `what`, only when it is refused) and returns an upper bound of its
/// size as JSON text: a string counts six bytes per byte (`\u00XX`).
///
/// Recursive, but never deeper than [`MAX_DEPTH`] + 1 calls: a deeper array
/// or object is refused before its items are looked at, so a hostile payload
/// cannot overflow the stack. Items are checked last to first, keys of an
/// object before its values: the first problem found, and so the error, is
/// the one an explicit stack (popping the last item pushed) finds.
fn walk(v: &Value, depth: usize, what: &dyn Fn() -> String) -> Result<usize> {
    match v {
        Value::Null | Value::Bool(_) => Ok(5),
        Value::Number(_) => Ok(MAX_NUMBER_BYTES),
        Value::String(s) => {
            if s.contains('\0') {
                return Err(nul(&what()));
            }
            Ok(2 + 6 * s.len())
        }
        Value::Array(items) => {
            if depth > MAX_DEPTH {
                return Err(too_deep(&what()));
            }
            let mut size = 2 + items.len();
            for i in items.iter().rev() {
                size = size.saturating_add(walk(i, depth + 1, what)?);
            }
            Ok(size)
        }
        Value::Object(map) => {
            if depth > MAX_DEPTH {
                return Err(too_deep(&what()));
            }
            let mut size = 2usize;
            for k in map.keys() {
                if k.contains('\0') {
                    return Err(nul(&what()));
                }
                size = size.saturating_add(4 + 6 * k.len());
            }
            for i in map.values().rev() {
                size = size.saturating_add(walk(i, depth + 1, what)?);
            }
            Ok(size)
        }
    }
}

/// Counts the bytes written to it: the size of a payload's JSON text
/// without keeping the text.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn too_deep(what: &str) -> Error {
    Error::InvalidInput(format!(
        "{what} nests arrays and objects more than {MAX_DEPTH} levels deep: the limit is {MAX_DEPTH}"
    ))
}

fn nul(what: &str) -> Error {
    Error::InvalidInput(format!(
        "{what} holds a string with U+0000, which PostgreSQL cannot store: every store refuses it"
    ))
}

/// Checks everything an append carries against the limits. Costs one walk
/// of each payload; the size check serializes it once.
pub fn check_append(a: &Append) -> Result<()> {
    check_name("the stream name", &a.stream)?;
    if a.messages.len() > MAX_EVENTS_PER_APPEND {
        return Err(Error::InvalidInput(format!(
            "an append holds at most {MAX_EVENTS_PER_APPEND} events, got {}",
            a.messages.len()
        )));
    }
    if let Some(k) = &a.idempotency_key {
        check_name("the idempotency key", k)?;
    }
    if let Some(c) = &a.correlation {
        check_name("the correlation id", c)?;
    }
    if let crate::event::ExpectedVersion::Exact(v) = a.expected {
        if v < 0 {
            return Err(Error::InvalidInput(format!(
                "expected version {v} of stream `{}` is not a version (versions start at 0; use ExpectedVersion::NoStream for an empty stream)",
                a.stream
            )));
        }
    }
    for m in &a.messages {
        check_name("the event name", &m.name)?;
        // Named only in an error: no string is built for an accepted event.
        let what = || format!("the data of event `{}`", m.name);
        let bound = walk(&m.data, 1, &what)?;
        if bound <= MAX_DATA_BYTES {
            continue;
        }
        // Possibly too large: measure the text itself.
        let mut size = ByteCount(0);
        serde_json::to_writer(&mut size, &m.data).map_err(|e| Error::decode(what(), e))?;
        let size = size.0;
        if size > MAX_DATA_BYTES {
            return Err(Error::InvalidInput(format!(
                "{} is {size} bytes of JSON: the limit is {MAX_DATA_BYTES}",
                what()
            )));
        }
    }
    for s in [&a.actor.id, &a.actor.name] {
        if s.contains('\0') || s.len() > MAX_NAME_BYTES {
            return Err(Error::InvalidInput(format!(
                "the actor must be at most {MAX_NAME_BYTES} bytes without U+0000"
            )));
        }
    }
    let causation = [
        a.causation.action.as_ref().map(|x| [&x.name, &x.stream]),
        a.causation.event.as_ref().map(|x| [&x.name, &x.stream]),
    ];
    for s in causation.iter().flatten().flatten() {
        if s.contains('\0') || s.len() > MAX_NAME_BYTES {
            return Err(Error::InvalidInput(format!(
                "the causation must name streams and events of at most {MAX_NAME_BYTES} bytes without U+0000"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ExpectedVersion, Message};
    use serde_json::json;

    fn nested(depth: usize) -> Value {
        let mut v = json!(1);
        for _ in 0..depth {
            v = Value::Array(vec![v]);
        }
        v
    }

    #[test]
    fn depth_is_counted_in_levels() {
        assert!(check_json("x", &nested(MAX_DEPTH)).is_ok());
        let e = check_json("x", &nested(MAX_DEPTH + 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("64 levels"), "{e}");
        // Deep enough to overflow a recursive walker: refused, not crashed.
        assert!(check_json("x", &nested(5_000)).is_err());
    }

    #[test]
    fn nul_is_refused_in_strings_keys_and_names() {
        assert!(check_json("x", &json!({"a": "b\u{0}c"})).is_err());
        assert!(check_json("x", &json!({"a\u{0}": 1})).is_err());
        assert!(check_name("the stream name", "a\0b").is_err());
        assert!(check_name("the stream name", "").is_err());
        assert!(check_name("the stream name", &"x".repeat(MAX_NAME_BYTES)).is_ok());
        let e = check_name("the stream name", &"é".repeat(MAX_NAME_BYTES))
            .unwrap_err()
            .to_string();
        assert!(e.contains("1024 bytes"), "{e}");
    }

    #[test]
    fn the_size_bound_is_never_below_the_text() {
        let s: String = (0u8..128).map(char::from).filter(|c| *c != '\0').collect();
        for v in [
            json!(null),
            json!(true),
            json!(-1.797_693_134_862_315_7e308),
            json!(-2.225_073_858_507_201_4e-308),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(s),
            json!({ "k\u{1}\"": [s, 1, {"": null}], "é": [] }),
            json!([[], {}, [[1, 2, 3]]]),
        ] {
            let text = serde_json::to_vec(&v).unwrap().len();
            let bound = walk(&v, 1, &String::new).unwrap();
            assert!(bound >= text, "{v}: {bound} < {text}");
        }
    }

    #[test]
    fn payloads_past_the_size_limit_are_refused() {
        let big = "\u{1}".repeat(MAX_DATA_BYTES / 6 + 1);
        let escaped = Append::new("s", vec![Message::new("E", json!(big))]);
        assert!(check_append(&escaped)
            .unwrap_err()
            .to_string()
            .contains("bytes of JSON"));
        let near = "a".repeat(MAX_DATA_BYTES - 2);
        let fits = Append::new("s", vec![Message::new("E", json!(near))]);
        assert!(check_append(&fits).is_ok());
        let over = "a".repeat(MAX_DATA_BYTES - 1);
        let over = Append::new("s", vec![Message::new("E", json!(over))]);
        assert!(check_append(&over).is_err());
    }

    #[test]
    fn the_first_problem_found_is_the_last_one_written() {
        let v = json!([{"a": "x\u{0}"}, nested(MAX_DEPTH + 1)]);
        let e = check_json("x", &v).unwrap_err().to_string();
        assert!(e.contains("levels"), "{e}");
        let v = json!([nested(MAX_DEPTH + 1), {"a": "x\u{0}"}]);
        let e = check_json("x", &v).unwrap_err().to_string();
        assert!(e.contains("U+0000"), "{e}");
    }

    #[test]
    fn appends_are_checked_whole() {
        let ok = Append::new("s", vec![Message::new("E", json!({"k": [1, 2]}))]);
        assert!(check_append(&ok).is_ok());
        let deep = Append::new("s", vec![Message::new("E", nested(200))]);
        assert!(check_append(&deep).is_err());
        let bad =
            Append::new("s", vec![Message::new("E", json!(1))]).expect(ExpectedVersion::Exact(-1));
        assert!(check_append(&bad)
            .unwrap_err()
            .to_string()
            .contains("not a version"));
    }
}
