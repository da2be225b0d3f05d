//! Strict JSON reading for snapshots: like `serde_json::Value`, but an
//! object with the same key twice is an error.
//!
//! serde_json keeps the last of duplicate keys. In a snapshot that is a
//! hole: `{"policies": ["office-ips"], ..., "policies": []}` would load as a
//! deployment with no filtering policy, i.e. open to everyone, without any
//! error. Refusing the document is the only safe reading.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses JSON, refusing duplicate object keys. Errors carry serde_json's
/// line and column.
pub fn from_slice(json: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Strict>(json).map(|s| s.0)
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON cannot express NaN or infinities; serde_json never hands us one.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key \"{key}\"")));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_duplicate_keys_with_position() {
        let e = from_slice(
            br#"{"a": 1, "b": {"c": 1,
            "c": 2}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("duplicate key \"c\""), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn reads_what_serde_json_reads() {
        let text = br#"{"n": -1, "u": 18446744073709551615, "f": 1.5, "s": "x", "z": null, "a": [true, {}]}"#;
        assert_eq!(
            from_slice(text).unwrap(),
            serde_json::from_slice::<Value>(text).unwrap()
        );
    }
}
