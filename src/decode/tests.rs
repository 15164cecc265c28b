//! Decoder tests: every message becomes one row or one typed dead letter.

use super::*;
use arrow::array::{AsArray, Float64Array, Int64Array};
use arrow::datatypes::Int64Type;

fn msg(offset: i64, s: &str) -> RawMessage {
    RawMessage {
        payload: Some(s.as_bytes().to_vec()),
        partition: 2,
        offset,
        timestamp_ms: Some(1_000),
    }
}

fn decoder(fmt: TimeFormat, fields: &[&str]) -> Decoder {
    Decoder::new(&DecodeConfig {
        time_format: fmt,
        value_fields: fields.iter().map(|s| s.to_string()).collect(),
        ..DecodeConfig::default()
    })
}

#[test]
fn good_events_become_rows() {
    let d = decoder(TimeFormat::Rfc3339, &["value", "temp"]);
    let out = d.decode(&[
        msg(
            0,
            r#"{"key":"a","ts":"2024-01-01T00:00:00Z","value":1.5,"temp":3,"extra":{"x":[1,2]}}"#,
        ),
        msg(
            1,
            r#"{"ts":"2024-01-01 00:05:00","key":42,"temp":-1e3,"value":2}"#,
        ),
    ]);
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    let b = &out.events;
    assert_eq!(b.num_rows(), 2);
    assert_eq!(b.column(0).as_string::<i32>().value(1), "42");
    let ts = b.column(1).as_primitive::<Int64Type>();
    assert_eq!(ts.value(0), 1_704_067_200_000);
    assert_eq!(ts.value(1), 1_704_067_500_000);
    let temp = b
        .column(crate::schema::events::FIRST_VALUE + 1)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(temp.value(1), -1000.0);
    let off = b
        .column(crate::schema::events::OFFSET)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(off.values(), &[0, 1]);
}

#[test]
fn each_bad_record_is_a_dead_letter_with_reason_and_position() {
    let d = decoder(TimeFormat::EpochS, &["value"]);
    let cases = [
        (r#"{"key":"a","ts":10,"value":1"#, "malformed JSON"),
        (r#"[1,2,3]"#, "malformed JSON"),
        (r#"{"ts":10,"value":1}"#, "missing field `key`"),
        (r#"{"key":"a","value":1}"#, "missing field `ts`"),
        (r#"{"key":"a","ts":10}"#, "missing field `value`"),
        (
            r#"{"key":"a","ts":10,"value":"high"}"#,
            "non-numeric value in field `value`",
        ),
        (
            r#"{"key":"a","ts":10,"value":null}"#,
            "non-numeric value in field `value`: null",
        ),
        (r#"{"key":"a","ts":10,"value":1e999}"#, "non-finite value"),
        (
            r#"{"key":"a","ts":"yesterday","value":1}"#,
            "unparsable timestamp",
        ),
        (r#"{"key":[1],"ts":10,"value":1}"#, "bad key"),
    ];
    let msgs: Vec<_> = cases
        .iter()
        .enumerate()
        .map(|(i, (s, _))| msg(100 + i as i64, s))
        .collect();
    let out = d.decode(&msgs);
    assert_eq!(out.events.num_rows(), 0);
    assert_eq!(out.dead_letters.len(), cases.len());
    for (i, (dl, (_, want))) in out.dead_letters.iter().zip(cases).enumerate() {
        assert!(
            dl.reason.contains(want),
            "case {i}: {:?} should contain {want:?}",
            dl.reason
        );
        assert_eq!(dl.offset, 100 + i as i64);
        assert_eq!(dl.partition, 2);
    }
    // The kind is typed where the record was refused, not guessed from the text.
    use DeadLetterKind as K;
    let kinds: Vec<K> = out.dead_letters.iter().map(|d| d.kind).collect();
    assert_eq!(
        kinds,
        [
            K::Malformed,
            K::Malformed,
            K::MissingField,
            K::MissingField,
            K::MissingField,
            K::BadValue,
            K::BadValue,
            K::BadValue,
            K::BadTimestamp,
            K::BadKey,
        ]
    );
}

#[test]
fn good_records_around_bad_ones_survive() {
    let d = decoder(TimeFormat::EpochMs, &["value"]);
    let out = d.decode(&[
        msg(0, r#"{"key":"a","ts":1000,"value":1}"#),
        msg(1, "not json"),
        msg(2, r#"{"key":"b","ts":2000,"value":2}"#),
    ]);
    assert_eq!(out.events.num_rows(), 2);
    assert_eq!(out.dead_letters.len(), 1);
    assert_eq!(out.dead_letters[0].offset, 1);
}

#[test]
fn kafka_timestamp_mode_uses_message_time() {
    let d = decoder(TimeFormat::Kafka, &["value"]);
    let out = d.decode(&[msg(0, r#"{"key":"a","value":1,"ts":"ignored"}"#)]);
    assert_eq!(
        out.events.column(1).as_primitive::<Int64Type>().value(0),
        1_000
    );
}

#[test]
fn time_formats() {
    assert_eq!(
        parse_time(&RawTime::Number(1.5), TimeFormat::EpochS),
        Ok(1500)
    );
    assert_eq!(
        parse_time(&RawTime::Number(1500.0), TimeFormat::EpochMs),
        Ok(1500)
    );
    assert_eq!(
        parse_time(
            &RawTime::Text("2024-01-01T01:00:00+01:00".into()),
            TimeFormat::Rfc3339
        ),
        Ok(1_704_067_200_000)
    );
    assert!(parse_time(&RawTime::Number(1.0), TimeFormat::Rfc3339).is_err());
    assert!(parse_time(&RawTime::Number(f64::INFINITY), TimeFormat::EpochS).is_err());
}

/// Regression (hardening): a second `key` field was appended to the first
/// (`"a"` + `"b"` = key `ab`), a second value overwrote the first, and an
/// empty key made an event of key "".
#[test]
fn duplicate_fields_and_empty_keys_are_dead_letters() {
    let d = decoder(TimeFormat::EpochS, &["value"]);
    let out = d.decode(&[
        msg(0, r#"{"key":"a","key":"b","ts":10,"value":1}"#),
        msg(1, r#"{"key":"a","ts":10,"value":1,"value":2}"#),
        msg(2, r#"{"key":"a","ts":10,"ts":20,"value":1}"#),
        msg(3, r#"{"key":"","ts":10,"value":1}"#),
        msg(4, r#"{"key":"a","ts":10,"value":1,"other":1,"other":2}"#),
    ]);
    assert_eq!(out.events.num_rows(), 1, "only the last one is an event");
    let got: Vec<(DeadLetterKind, &str)> = out
        .dead_letters
        .iter()
        .map(|d| (d.kind, d.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                DeadLetterKind::Malformed,
                "malformed: field `key` appears twice"
            ),
            (
                DeadLetterKind::Malformed,
                "malformed: field `value` appears twice"
            ),
            (
                DeadLetterKind::Malformed,
                "malformed: field `ts` appears twice"
            ),
            (DeadLetterKind::BadKey, "bad key: field `key` is empty"),
        ]
    );
}

/// Regression (hardening): one event stamped in year 9999 was accepted and
/// made its key allocate a pane per slide up to it (~70M for hourly
/// windows), then held the watermark. Events more than
/// `max_future_skew` (default 1 day) ahead of the wall clock are dead
/// letters; a little ahead is fine (clock skew between producers).
#[test]
fn far_future_event_times_are_dead_letters() {
    let d = decoder(TimeFormat::EpochMs, &["value"]);
    let now = crate::time::now_ms();
    let ok = now + 3_600_000;
    let far = now + 2 * 86_400_000;
    let out = d.decode(&[
        msg(0, &format!(r#"{{"key":"a","ts":{ok},"value":1}}"#)),
        msg(1, &format!(r#"{{"key":"a","ts":{far},"value":1}}"#)),
        msg(2, r#"{"key":"a","ts":253402300799000,"value":1}"#),
    ]);
    assert_eq!(out.events.num_rows(), 1);
    assert_eq!(out.dead_letters.len(), 2);
    for dl in &out.dead_letters {
        assert_eq!(dl.kind, DeadLetterKind::BadTimestamp, "{dl:?}");
        assert!(dl.reason.contains("max_future_skew"), "{}", dl.reason);
    }
    // The Kafka message timestamp is checked the same way.
    let k = decoder(TimeFormat::Kafka, &["value"]);
    let mut m = msg(3, r#"{"key":"a","value":1}"#);
    m.timestamp_ms = Some(far);
    assert_eq!(
        k.decode(&[m]).dead_letters[0].kind,
        DeadLetterKind::BadTimestamp
    );
}

/// The key rule: a key is text; an integer key is its exact decimal digits
/// (so `1` and `"1"` are one key and ids above 2^53 stay apart); a
/// fractional or exponent number is refused, never rounded into another key.
#[test]
fn integer_keys_are_exact_and_other_numbers_are_refused() {
    let d = decoder(TimeFormat::EpochS, &["value"]);
    let out = d.decode(&[
        msg(0, r#"{"key":1,"ts":10,"value":1}"#),
        msg(1, r#"{"key":"1","ts":10,"value":1}"#),
        msg(2, r#"{"key":9007199254740993,"ts":10,"value":1}"#),
        msg(3, r#"{"key":9007199254740992,"ts":10,"value":1}"#),
        msg(4, r#"{"key":-18446744073709551615,"ts":10,"value":1}"#),
        msg(5, r#"{"key":1.0,"ts":10,"value":1}"#),
        msg(6, r#"{"key":1e3,"ts":10,"value":1}"#),
        msg(7, r#"{"key":18446744073709551616,"ts":10,"value":1}"#),
    ]);
    let keys: Vec<&str> = (0..out.events.num_rows())
        .map(|i| out.events.column(0).as_string::<i32>().value(i))
        .collect();
    assert_eq!(keys, ["1", "1", "9007199254740993", "9007199254740992"]);
    // -18446744073709551615 and 18446744073709551616 do not fit 64 bits:
    // serde_json reads them as floats, so they are refused like 1.0.
    let refused: Vec<i64> = out.dead_letters.iter().map(|d| d.offset).collect();
    assert_eq!(refused, [4, 5, 6, 7]);
    for dl in &out.dead_letters {
        assert_eq!(dl.kind, DeadLetterKind::BadKey);
        assert!(dl.reason.contains("must be an integer"), "{}", dl.reason);
    }
}

#[test]
fn oversized_keys_payloads_and_values_are_dead_letters() {
    let d = Decoder::new(&DecodeConfig {
        time_format: TimeFormat::EpochS,
        max_key_bytes: 8,
        max_payload_bytes: 100,
        max_abs_value: 1e6,
        ..DecodeConfig::default()
    });
    let long_payload = format!(
        r#"{{"key":"a","ts":10,"value":1,"pad":"{}"}}"#,
        "x".repeat(100)
    );
    let out = d.decode(&[
        msg(0, r#"{"key":"12345678","ts":10,"value":-1e6}"#),
        msg(1, r#"{"key":"123456789","ts":10,"value":1}"#),
        msg(2, &long_payload),
        msg(3, r#"{"key":"a","ts":10,"value":1.000001e6}"#),
        msg(4, r#"{"key":"a","ts":10,"value":-1e200}"#),
        msg(5, r#"{"key":"a","ts":10,"value":1000001}"#),
    ]);
    assert_eq!(out.events.num_rows(), 1, "{:?}", out.dead_letters);
    use DeadLetterKind as K;
    let got: Vec<(i64, K)> = out
        .dead_letters
        .iter()
        .map(|d| (d.offset, d.kind))
        .collect();
    assert_eq!(
        got,
        [
            (1, K::BadKey),
            (2, K::TooLarge),
            (3, K::BadValue),
            (4, K::BadValue),
            (5, K::BadValue)
        ]
    );
    assert!(out.dead_letters[0]
        .reason
        .contains("decode.max_key_bytes (8)"));
    assert!(out.dead_letters[1]
        .reason
        .contains("decode.max_payload_bytes (100)"));
    assert!(out.dead_letters[2]
        .reason
        .contains("beyond decode.max_abs_value"));
    // The copy in the dead letter is the whole refused payload (it is
    // truncated only at publication, see `MAX_PAYLOAD_COPY`).
    assert_eq!(out.dead_letters[1].payload.len(), long_payload.len());
}

/// `time_format = "kafka"` is range-checked like the others: a producer's
/// timestamp of i64::MIN would otherwise overflow window arithmetic.
#[test]
fn kafka_timestamps_out_of_range_are_dead_letters() {
    let d = decoder(TimeFormat::Kafka, &["value"]);
    let mut m = msg(0, r#"{"key":"a","value":1}"#);
    let mut out = Vec::new();
    for ts in [i64::MIN, -62_167_219_200_001, 1_000, 253_402_300_800_000] {
        m.timestamp_ms = Some(ts);
        out.push(d.decode(std::slice::from_ref(&m)));
    }
    let kinds: Vec<_> = out
        .iter()
        .map(|o| o.dead_letters.first().map(|d| d.kind))
        .collect();
    let bad = Some(DeadLetterKind::BadTimestamp);
    assert_eq!(kinds, [bad, bad, None, bad]);
}
