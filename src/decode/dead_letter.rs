//! Dead letters: records that cannot be used, with a typed kind (the
//! metric label and the `kind` field of the published record), a reason a
//! person can act on, and where the record came from.

/// Why a record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterKind {
    /// Not JSON, not an object, or an empty payload.
    Malformed,
    /// The key, time or a value field is absent.
    MissingField,
    /// The key is neither a string nor a number.
    BadKey,
    /// The event time cannot be read or is out of range.
    BadTimestamp,
    /// A value is non-numeric or not finite.
    BadValue,
    /// Behind the watermark, its window already closed (`late_policy = "dead_letter"`).
    Late,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Malformed => "malformed",
            DeadLetterKind::MissingField => "missing_field",
            DeadLetterKind::BadKey => "bad_key",
            DeadLetterKind::BadTimestamp => "bad_timestamp",
            DeadLetterKind::BadValue => "bad_value",
            DeadLetterKind::Late => "late",
        }
    }
}

/// A record that could not be used, with why and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub kind: DeadLetterKind,
    pub reason: String,
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
}

impl DeadLetter {
    /// The JSON document published to the dead-letter destination.
    pub fn to_json(&self, source_topic: &str) -> serde_json::Value {
        serde_json::json!({
            "reason": self.reason,
            "kind": self.kind.as_str(),
            "topic": source_topic,
            "partition": self.partition,
            "offset": self.offset,
            "payload": String::from_utf8_lossy(&self.payload),
        })
    }
}

/// Why one message was rejected, before it is placed (partition/offset).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rejection {
    pub kind: DeadLetterKind,
    pub reason: String,
}

impl Rejection {
    pub fn new(kind: DeadLetterKind, reason: impl Into<String>) -> Self {
        Rejection {
            kind,
            reason: reason.into(),
        }
    }

    pub fn missing(field: &str) -> Self {
        Rejection::new(
            DeadLetterKind::MissingField,
            format!("missing field `{field}`"),
        )
    }
}
