//! Encodes an adjacently tagged event (`#[serde(tag = "name", content =
//! "data")]`) straight into a [`Message`], without building the outer
//! `{"name": …, "data": …}` object first.
//!
//! [`crate::state::encode`] tries this first, on every action. It
//! understands only what serde's derive emits for such an enum: one struct
//! whose fields are serialized one by one. Anything else is refused with
//! [`Unsupported`], and the caller falls back to the general path
//! (`serde_json::to_value`, then taking `name` and `data` out of the object),
//! which also produces every error. So what this returns is what the
//! general path returns; it only saves the outer object, its two key
//! strings and their hashing (about a sixth of a one-event action in
//! memory).

use serde::ser::{self, Impossible, Serialize};
use serde_json::Value;

use crate::event::Message;

/// The encoding is not one this fast path understands (or it failed): use
/// the general path.
#[derive(Debug)]
pub(crate) struct Unsupported;

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not an adjacently tagged struct")
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        Unsupported
    }
}

/// `event` as a message, or [`Unsupported`] when the general path must decide.
pub(crate) fn encode<E: Serialize + ?Sized>(event: &E) -> Result<Message, Unsupported> {
    event.serialize(Outer)
}

/// Accepts a struct only: the outer shape of an adjacently tagged enum.
struct Outer;

/// The fields of that struct, as `serde_json::to_value` would keep them:
/// the last value of a repeated key wins.
struct Fields {
    name: Option<Value>,
    data: Option<Value>,
}

impl ser::SerializeStruct for Fields {
    type Ok = Message;
    type Error = Unsupported;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        // Every field is encoded, kept or not, so one that cannot be fails
        // here as it would on the general path (which then reports it).
        let value = value
            .serialize(serde_json::value::Serializer)
            .map_err(|_| Unsupported)?;
        match key {
            "name" => self.name = Some(value),
            "data" => self.data = Some(value),
            _ => {}
        }
        Ok(())
    }

    fn end(self) -> Result<Message, Unsupported> {
        match self.name {
            Some(Value::String(name)) => Ok(Message {
                name,
                data: self.data.unwrap_or(Value::Null),
            }),
            _ => Err(Unsupported),
        }
    }
}

macro_rules! unsupported {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> Result<Message, Unsupported> {
            Err(Unsupported)
        })*
    };
}

impl ser::Serializer for Outer {
    type Ok = Message;
    type Error = Unsupported;
    type SerializeSeq = Impossible<Message, Unsupported>;
    type SerializeTuple = Impossible<Message, Unsupported>;
    type SerializeTupleStruct = Impossible<Message, Unsupported>;
    type SerializeTupleVariant = Impossible<Message, Unsupported>;
    type SerializeMap = Impossible<Message, Unsupported>;
    type SerializeStruct = Fields;
    type SerializeStructVariant = Impossible<Message, Unsupported>;

    fn serialize_struct(self, name: &'static str, _len: usize) -> Result<Fields, Unsupported> {
        // serde_json gives structs with these names a meaning of their own
        // (raw values, arbitrary precision numbers).
        if name.starts_with("$serde_json::") {
            return Err(Unsupported);
        }
        Ok(Fields {
            name: None,
            data: None,
        })
    }

    unsupported! {
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Message, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<Message, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Message, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        Err(Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use serde_json::json;

    /// What the general path makes of `v`.
    fn general<T: Serialize>(v: &T) -> Option<(String, Value)> {
        let Value::Object(mut map) = serde_json::to_value(v).ok()? else {
            return None;
        };
        let Some(Value::String(name)) = map.remove("name") else {
            return None;
        };
        Some((name, map.remove("data").unwrap_or(Value::Null)))
    }

    fn fast<T: Serialize>(v: &T) -> Option<(String, Value)> {
        encode(v).ok().map(|m| (m.name, m.data))
    }

    #[test]
    fn adjacently_tagged_events_encode_as_the_general_path_does() {
        #[derive(Serialize)]
        #[serde(tag = "name", content = "data")]
        enum Ev {
            Unit,
            New(u32),
            Tuple(u32, String),
            Fields {
                n: u64,
                s: String,
                o: Option<Vec<u8>>,
            },
            #[serde(rename = "Renamed")]
            Other {
                x: f64,
            },
        }
        for e in [
            Ev::Unit,
            Ev::New(7),
            Ev::Tuple(1, "a".into()),
            Ev::Fields {
                n: 3,
                s: "é\"".into(),
                o: None,
            },
            Ev::Other { x: 1.5 },
        ] {
            let got = fast(&e);
            assert!(got.is_some());
            assert_eq!(got, general(&e));
        }
        assert_eq!(fast(&Ev::New(7)), Some(("New".into(), json!(7))));
    }

    #[test]
    fn other_shapes_are_left_to_the_general_path() {
        #[derive(Serialize)]
        struct Plain(u32);
        #[derive(Serialize)]
        #[serde(tag = "name")]
        enum Internal {
            A { n: u32 },
        }
        #[derive(Serialize)]
        struct NoName {
            data: u32,
        }
        #[derive(Serialize)]
        struct NumberName {
            name: u32,
        }
        assert!(encode(&Plain(1)).is_err());
        assert!(encode(&json!({"name": "A", "data": 1})).is_err());
        assert!(encode(&NoName { data: 1 }).is_err());
        assert!(encode(&NumberName { name: 1 }).is_err());
        // A struct with a string `name` field: the same as the general path,
        // other fields dropped.
        assert_eq!(fast(&Internal::A { n: 1 }), general(&Internal::A { n: 1 }));
    }
}
