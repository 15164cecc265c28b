//! The JSON walker of the decode stage: one pass over each object with
//! serde visitors that look only at the configured fields (others are
//! skipped without being built), so decoding allocates nothing per event
//! beyond the key string. A field-level problem is recorded as a typed
//! [`Rejection`] instead of serde's generic message.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::dead_letter::{DeadLetterKind, Rejection};
use super::time::RawTime;
use crate::config::{DecodeConfig, TimeFormat};

/// The configured fields of one event, reused across events.
pub(super) struct Fields {
    pub(super) key: String,
    pub(super) has_key: bool,
    pub(super) ts: Option<RawTime>,
    pub(super) values: Vec<f64>,
    pub(super) seen_value: Vec<bool>,
    /// A field-level problem found while walking (e.g. a string value):
    /// reported instead of serde's generic message.
    pub(super) failure: Option<Rejection>,
}

impl Fields {
    pub(super) fn new(n: usize) -> Self {
        Fields {
            key: String::new(),
            has_key: false,
            ts: None,
            values: vec![f64::NAN; n],
            seen_value: vec![false; n],
            failure: None,
        }
    }
    pub(super) fn reset(&mut self) {
        self.key.clear();
        self.has_key = false;
        self.ts = None;
        self.values.iter_mut().for_each(|v| *v = f64::NAN);
        self.seen_value.iter_mut().for_each(|v| *v = false);
        self.failure = None;
    }
}

/// A JSON scalar, classified without building a `serde_json::Value`.
enum Scalar<'de> {
    /// An integer as written (exact: keys above 2^53 stay distinct).
    Int(i128),
    Num(f64),
    Str(Cow<'de, str>),
    Other(&'static str),
}

impl Scalar<'_> {
    /// The value as a number, when it is one.
    fn number(&self) -> Option<f64> {
        match self {
            Scalar::Int(n) => Some(*n as f64),
            Scalar::Num(n) => Some(*n),
            Scalar::Str(_) | Scalar::Other(_) => None,
        }
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v.into()))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_string())))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other("a boolean"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("an object"))
    }
}

struct ScalarSeed;
impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// Which configured field a JSON key is.
enum Which {
    Key,
    Time,
    Value(usize),
    Other,
}

struct KeySeed<'c> {
    cfg: &'c DecodeConfig,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Which;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Which, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Which;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, k: &str) -> Result<Which, E> {
        Ok(if k == self.cfg.key_field {
            Which::Key
        } else if k == self.cfg.time_field && self.cfg.time_format != TimeFormat::Kafka {
            Which::Time
        } else if let Some(i) = self.cfg.value_fields.iter().position(|f| f == k) {
            Which::Value(i)
        } else {
            Which::Other
        })
    }
}

pub(super) struct ObjectSeed<'a> {
    pub(super) cfg: &'a DecodeConfig,
    pub(super) out: &'a mut Fields,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error as _;
        let cfg = self.cfg;
        let out = self.out;
        while let Some(which) = map.next_key_seed(KeySeed { cfg })? {
            // A configured field given twice is ambiguous (which one is the
            // event?): refused, never merged or overwritten.
            let twice = match &which {
                Which::Key => out.has_key.then_some(cfg.key_field.as_str()),
                Which::Time => out.ts.is_some().then_some(cfg.time_field.as_str()),
                Which::Value(i) => out.seen_value[*i].then_some(cfg.value_fields[*i].as_str()),
                Which::Other => None,
            };
            if let Some(field) = twice {
                out.failure = Some(Rejection::new(
                    DeadLetterKind::Malformed,
                    format!("malformed: field `{field}` appears twice"),
                ));
                return Err(A::Error::custom("duplicate field"));
            }
            match which {
                Which::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
                Which::Key => match map.next_value_seed(ScalarSeed)? {
                    Scalar::Str(s) if s.is_empty() => {
                        out.failure = Some(Rejection::new(
                            DeadLetterKind::BadKey,
                            format!("bad key: field `{}` is empty", cfg.key_field),
                        ));
                        return Err(A::Error::custom("empty key"));
                    }
                    Scalar::Str(s) if s.len() > cfg.max_key_bytes => {
                        out.failure = Some(key_too_long(cfg, s.len()));
                        return Err(A::Error::custom("key too long"));
                    }
                    Scalar::Str(s) => {
                        out.key.push_str(&s);
                        out.has_key = true;
                    }
                    // The key rule: a key is text; an integer key is its
                    // decimal digits (so `1` and `"1"` are one key, and ids
                    // above 2^53 stay exact). A fractional or exponent form
                    // is refused: `1.0` or `1e3` as an id is ambiguous.
                    Scalar::Int(n) => {
                        use std::fmt::Write;
                        let _ = write!(out.key, "{n}");
                        out.has_key = true;
                    }
                    Scalar::Num(n) => {
                        out.failure = Some(Rejection::new(
                            DeadLetterKind::BadKey,
                            format!(
                                "bad key: field `{}` is the non-integer number {n}; a numeric key must be an integer (or send it as a string)",
                                cfg.key_field
                            ),
                        ));
                        return Err(A::Error::custom("bad key"));
                    }
                    Scalar::Other(what) => {
                        out.failure = Some(Rejection::new(
                            DeadLetterKind::BadKey,
                            format!(
                                "bad key: field `{}` is {what}, expected a string or an integer",
                                cfg.key_field
                            ),
                        ));
                        return Err(A::Error::custom("bad key"));
                    }
                },
                Which::Time => {
                    out.ts = match map.next_value_seed(ScalarSeed)? {
                        Scalar::Int(n) => Some(RawTime::Number(n as f64)),
                        Scalar::Num(n) => Some(RawTime::Number(n)),
                        Scalar::Str(s) => Some(RawTime::Text(s.into_owned())),
                        Scalar::Other(what) => {
                            out.failure = Some(Rejection::new(
                                DeadLetterKind::BadTimestamp,
                                format!(
                                    "unparsable timestamp in field `{}`: got {what}",
                                    cfg.time_field
                                ),
                            ));
                            return Err(A::Error::custom("bad time"));
                        }
                    }
                }
                Which::Value(i) => {
                    let name = &cfg.value_fields[i];
                    let scalar = map.next_value_seed(ScalarSeed)?;
                    let rejected = match scalar.number() {
                        Some(n) if n.abs() <= cfg.max_abs_value => {
                            out.values[i] = n;
                            out.seen_value[i] = true;
                            continue;
                        }
                        Some(n) if n.is_finite() => format!(
                            "value {n:e} in field `{name}` is beyond decode.max_abs_value ({:e})",
                            cfg.max_abs_value
                        ),
                        Some(n) => format!("non-finite value {n} in field `{name}`"),
                        None => match scalar {
                            Scalar::Str(s) => format!("non-numeric value in field `{name}`: {s:?}"),
                            Scalar::Other(what) => {
                                format!("non-numeric value in field `{name}`: {what}")
                            }
                            Scalar::Int(_) | Scalar::Num(_) => String::new(),
                        },
                    };
                    out.failure = Some(Rejection::new(DeadLetterKind::BadValue, rejected));
                    return Err(A::Error::custom("bad value"));
                }
            }
        }
        Ok(())
    }
}

fn key_too_long(cfg: &DecodeConfig, len: usize) -> Rejection {
    Rejection::new(
        DeadLetterKind::BadKey,
        format!(
            "bad key: field `{}` is {len} bytes, more than decode.max_key_bytes ({})",
            cfg.key_field, cfg.max_key_bytes
        ),
    )
}
