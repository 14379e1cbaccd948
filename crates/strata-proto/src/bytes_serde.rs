//! Serde helpers for byte strings.
//!
//! Binary formats (postcard in the Raft log) store raw bytes. Human-readable formats (JSON)
//! show valid UTF-8 as a plain string, and anything else as `{"b64": "<base64>"}`, so the JSON
//! API stays pleasant for the common case and still loses nothing for binary keys.

use base64::Engine;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use std::fmt;

/// Serializes bytes as described in the module docs.
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    if !serializer.is_human_readable() {
        return serializer.serialize_bytes(bytes);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => serializer.serialize_str(text),
        Err(_) => {
            let mut map = serializer.serialize_map(Some(1))?;
            map.serialize_entry(
                "b64",
                &base64::engine::general_purpose::STANDARD.encode(bytes),
            )?;
            map.end()
        }
    }
}

/// Deserializes bytes written by [`serialize`].
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    if deserializer.is_human_readable() {
        deserializer.deserialize_any(BytesVisitor)
    } else {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, or an object {\"b64\": \"...\"}")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        Ok(v.as_bytes().to_vec())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Vec<u8>, E> {
        Ok(v.into_bytes())
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::new();
        while let Some(byte) = seq.next_element::<u8>()? {
            out.push(byte);
        }
        Ok(out)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<u8>, A::Error> {
        let mut decoded = None;
        while let Some(field) = map.next_key::<String>()? {
            if field != "b64" {
                return Err(de::Error::unknown_field(&field, &["b64"]));
            }
            let text: String = map.next_value()?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| de::Error::custom(format!("invalid base64: {e}")))?;
            decoded = Some(bytes);
        }
        decoded.ok_or_else(|| de::Error::missing_field("b64"))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Holder {
        #[serde(with = "super")]
        bytes: Vec<u8>,
    }

    #[test]
    fn utf8_is_plain_text_in_json() {
        let json = serde_json::to_string(&Holder {
            bytes: b"foo/bar".to_vec(),
        })
        .unwrap();
        assert_eq!(json, r#"{"bytes":"foo/bar"}"#);
        let back: Holder = serde_json::from_str(&json).unwrap();
        assert_eq!(back.bytes, b"foo/bar");
    }

    #[test]
    fn binary_round_trips_through_json_and_postcard() {
        let holder = Holder {
            bytes: vec![0xff, 0x00, 0x80],
        };
        let json = serde_json::to_string(&holder).unwrap();
        assert!(json.contains("b64"), "{json}");
        assert_eq!(serde_json::from_str::<Holder>(&json).unwrap(), holder);
        let bin = postcard::to_allocvec(&holder).unwrap();
        assert_eq!(postcard::from_bytes::<Holder>(&bin).unwrap(), holder);
    }

    #[test]
    fn bad_base64_is_an_error() {
        assert!(serde_json::from_str::<Holder>(r#"{"bytes":{"b64":"!!"}}"#).is_err());
        assert!(serde_json::from_str::<Holder>(r#"{"bytes":{"x":"AA=="}}"#).is_err());
    }
}
