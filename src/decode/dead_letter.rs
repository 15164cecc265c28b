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
    /// The key is empty, longer than `decode.max_key_bytes`, or neither a
    /// string nor an integer.
    BadKey,
    /// The event time cannot be read or is out of range.
    BadTimestamp,
    /// A value is non-numeric, not finite, or beyond `decode.max_abs_value`.
    BadValue,
    /// The payload is longer than `decode.max_payload_bytes`.
    TooLarge,
    /// Behind the watermark, its window already closed (`late_policy = "dead_letter"`).
    Late,
    /// The key's events arrived on another input partition before: its
    /// state lives with that partition (see `window`), so this event is not
    /// merged into it (that would split the key across owners).
    PartitionConflict,
    /// Events in the open windows of a key evicted to stay within
    /// `window.max_keys` (one letter per key, with the count).
    Evicted,
    /// Avro input: not Confluent's wire format (magic byte 0, a 4-byte
    /// schema id, the datum): another magic byte, or a shorter payload.
    BadWireFormat,
    /// Avro input: the registry has no schema with the message's id, or
    /// it is not an (valid) Avro schema.
    UnknownSchema,
    /// Avro input: the writer schema cannot carry the pipeline's events
    /// (not a record, or a configured field absent or of a type that cannot
    /// hold it).
    IncompatibleSchema,
    /// Avro input: the datum does not decode with its writer schema (cut
    /// short, invalid, or bytes left over).
    BadAvro,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Malformed => "malformed",
            DeadLetterKind::MissingField => "missing_field",
            DeadLetterKind::BadKey => "bad_key",
            DeadLetterKind::BadTimestamp => "bad_timestamp",
            DeadLetterKind::BadValue => "bad_value",
            DeadLetterKind::TooLarge => "too_large",
            DeadLetterKind::Late => "late",
            DeadLetterKind::PartitionConflict => "partition_conflict",
            DeadLetterKind::Evicted => "evicted",
            DeadLetterKind::BadWireFormat => "bad_wire_format",
            DeadLetterKind::UnknownSchema => "unknown_schema",
            DeadLetterKind::IncompatibleSchema => "incompatible_schema",
            DeadLetterKind::BadAvro => "bad_avro",
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

/// At most this many bytes of the refused record are copied into its dead
/// letter (the record itself stays in the source topic at its offset): a
/// dead letter must stay publishable whatever was sent.
pub const MAX_PAYLOAD_COPY: usize = 16 * 1024;

impl DeadLetter {
    /// The JSON document published to the dead-letter destination. The
    /// payload copy is cut at [`MAX_PAYLOAD_COPY`] bytes and says so
    /// (`payload_truncated`, `payload_bytes` = the original size). A copy
    /// that is not UTF-8 (an Avro payload) is also given exactly, as
    /// `payload_base64` (`payload` is then lossy).
    pub fn to_json(&self, source_topic: &str) -> serde_json::Value {
        let copy = &self.payload[..self.payload.len().min(MAX_PAYLOAD_COPY)];
        let mut doc = self.to_json_text(source_topic, copy);
        if std::str::from_utf8(copy).is_err() {
            use base64::Engine as _;
            doc["payload_base64"] =
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(copy));
        }
        doc
    }

    fn to_json_text(&self, source_topic: &str, copy: &[u8]) -> serde_json::Value {
        serde_json::json!({
            "reason": self.reason,
            "kind": self.kind.as_str(),
            "topic": source_topic,
            "partition": self.partition,
            "offset": self.offset,
            "payload": String::from_utf8_lossy(copy),
            "payload_bytes": self.payload.len(),
            "payload_truncated": copy.len() < self.payload.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (hardening): a 200 KB payload of control bytes was copied
    /// whole into its dead letter; JSON escaping made it ~1.2 MB, over the
    /// producer's message.max.bytes, and its delivery was retried forever.
    #[test]
    fn the_payload_copy_is_bounded_and_says_so() {
        let d = DeadLetter {
            kind: DeadLetterKind::Malformed,
            reason: "malformed JSON".into(),
            partition: 1,
            offset: 7,
            payload: vec![1u8; 200_000],
        };
        let json = d.to_json("events").to_string();
        assert!(json.len() < 8 * MAX_PAYLOAD_COPY, "{} bytes", json.len());
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["payload_truncated"], true);
        assert_eq!(v["payload_bytes"], 200_000);
        let small = DeadLetter {
            payload: b"{oops".to_vec(),
            ..d
        };
        let v = small.to_json("events");
        assert_eq!(
            (v["payload"].as_str(), v["payload_truncated"].as_bool()),
            (Some("{oops"), Some(false))
        );
        assert!(v.get("payload_base64").is_none(), "text needs no base64");
    }

    /// An Avro payload (not UTF-8) comes back exactly from `payload_base64`.
    #[test]
    fn a_binary_payload_is_copied_exactly_as_base64() {
        use base64::Engine as _;
        let payload = vec![0u8, 0, 0, 0, 7, 0xff, 0xfe, 0x0c];
        let d = DeadLetter {
            kind: DeadLetterKind::BadAvro,
            reason: "cut".into(),
            partition: 0,
            offset: 1,
            payload: payload.clone(),
        };
        let v = d.to_json("events");
        let back = base64::engine::general_purpose::STANDARD
            .decode(v["payload_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(back, payload);
        assert_eq!(v["kind"], "bad_avro");
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
