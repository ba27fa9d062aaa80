//! Reading script replies. Scripts return nested arrays of integers, strings
//! and nils; these helpers take them apart without panicking on a reply of
//! another shape (foreign data under the prefix), which becomes an error.

use redis::Value;

/// What was wrong with a reply.
pub(crate) type Bad = String;

/// The elements of an array reply (an empty Lua table arrives as an empty
/// array, a Lua `false` as nil).
pub(crate) fn items(v: &Value) -> Result<&[Value], Bad> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Nil => Ok(&[]),
        other => Err(format!("expected an array, got {other:?}")),
    }
}

/// An integer, sent as a number or as a decimal string.
pub(crate) fn int(v: &Value) -> Result<i64, Bad> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("expected an integer, got {:?}", String::from_utf8_lossy(b))),
        Value::SimpleString(s) => s
            .parse()
            .map_err(|_| format!("expected an integer, got {s:?}")),
        other => Err(format!("expected an integer, got {other:?}")),
    }
}

/// An integer or nil.
pub(crate) fn opt_int(v: &Value) -> Result<Option<i64>, Bad> {
    match v {
        Value::Nil => Ok(None),
        v => int(v).map(Some),
    }
}

/// A UTF-8 string.
pub(crate) fn text(v: &Value) -> Result<String, Bad> {
    match v {
        Value::BulkString(b) => {
            String::from_utf8(b.clone()).map_err(|_| "a string is not UTF-8".to_string())
        }
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(format!("expected a string, got {other:?}")),
    }
}

/// A string or nil.
pub(crate) fn opt_text(v: &Value) -> Result<Option<String>, Bad> {
    match v {
        Value::Nil => Ok(None),
        v => text(v).map(Some),
    }
}

/// Raw bytes or nil (event records).
pub(crate) fn opt_bytes(v: &Value) -> Result<Option<&[u8]>, Bad> {
    match v {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(b)),
        other => Err(format!("expected a record, got {other:?}")),
    }
}

/// A time in microseconds since the epoch (the scripts' clock); one past
/// chrono's range is its maximum.
pub(crate) fn time(us: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

/// Element `i` of an array reply.
pub(crate) fn at(a: &[Value], i: usize) -> Result<&Value, Bad> {
    a.get(i)
        .ok_or_else(|| format!("reply has {} elements, wanted element {i}", a.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_of_another_shape_are_errors_not_panics() {
        assert_eq!(int(&Value::BulkString(b"42".to_vec())), Ok(42));
        assert!(int(&Value::BulkString(b"x".to_vec())).is_err());
        assert!(items(&Value::Int(1)).is_err());
        assert_eq!(opt_text(&Value::Nil), Ok(None));
        assert!(at(&[], 0).is_err());
    }
}
