//! Events as clients send them: parsing and validation of `POST /api/events` bodies.
//!
//! Parsing is done by hand over raw JSON values instead of a derived struct so each
//! error names the exact field (`events[3].aggregate_id`) and the reason, and so
//! `event_data` is stored exactly as the client wrote it: validated, never
//! re-encoded (key order, numbers beyond 64 bits, exponents, escapes and whitespace
//! inside the value are kept byte for byte).

use chrono::{DateTime, Utc};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

/// Longest accepted aggregate_type / aggregate_id / event_type, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Deepest nesting of arrays and objects accepted in `event_data` (as serde_json and
/// most JSON readers allow; SQLite's own limit is 1000).
pub const MAX_DATA_DEPTH: usize = 128;

/// How deeply arrays and objects nest in valid JSON text.
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn check_data(data: &str) -> Result<(), FieldError> {
    if serde_json::from_str::<serde::de::IgnoredAny>(data).is_err() {
        return Err(FieldError::new("event_data", "is not valid JSON"));
    }
    if nesting_depth(data) > MAX_DATA_DEPTH {
        return Err(FieldError::new(
            "event_data",
            format!("nests arrays and objects deeper than {MAX_DATA_DEPTH} levels"),
        ));
    }
    Ok(())
}

/// A validated event, ready for the writer. Its fields are private: it is built only
/// by [`parse_body`] or [`NewEvent::new`], both of which check every field, so the
/// writer never checks again. `event_data` is JSON text, stored as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    event_data: String,
    event_version: i64,
    /// Stored text (UTC), see [`crate::time`].
    created_at: String,
    /// Client-supplied id: appending the same id again writes nothing.
    key: Option<Uuid>,
}

impl NewEvent {
    /// An event stamped now, for library callers (Rust jobs, tests, benchmarks); every
    /// field is checked as the HTTP API checks it.
    pub fn new(
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
        data: Value,
    ) -> Result<NewEvent, FieldError> {
        for (field, value) in [
            ("aggregate_type", aggregate_type),
            ("aggregate_id", aggregate_id),
            ("event_type", event_type),
        ] {
            check_name(field, value)?;
        }
        let event_data = data.to_string();
        check_data(&event_data)?;
        Ok(NewEvent {
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            event_data,
            event_version: 1,
            created_at: crate::time::now_text(),
            key: None,
        })
    }

    /// The same event with a client id: appending it again writes nothing.
    pub fn with_key(mut self, key: Uuid) -> NewEvent {
        self.key = Some(key);
        self
    }

    /// The same event dated `at` (stored in UTC).
    pub fn with_created_at(mut self, at: DateTime<Utc>) -> NewEvent {
        self.created_at = crate::time::to_store_text(at);
        self
    }

    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }

    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }

    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The JSON text as it will be stored.
    pub fn event_data(&self) -> &str {
        &self.event_data
    }

    pub fn event_version(&self) -> i64 {
        self.event_version
    }

    /// As stored: UTC text, see [`crate::time`].
    pub fn created_at(&self) -> &str {
        &self.created_at
    }

    pub fn key(&self) -> Option<&Uuid> {
        self.key.as_ref()
    }
}

/// A client mistake in one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn within(mut self, prefix: &str) -> FieldError {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

fn check_name(field: &str, value: &str) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(FieldError::new(
            field,
            format!("is longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A JSON object's members in the order they were written, values unparsed.
struct RawObject<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(RawObject(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

fn raw_object(raw: &RawValue) -> Result<RawObject<'_>, serde_json::Error> {
    serde_json::from_str(raw.get())
}

/// An event object's known members, each taken once.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'a> Members<'a> {
    fn raw(&mut self, field: &str) -> Option<&'a RawValue> {
        let at = self.0.iter().position(|(k, _)| k == field)?;
        Some(self.0.swap_remove(at).1)
    }

    /// Every field but event_data is read as a plain JSON value.
    fn value(&mut self, field: &str) -> Option<Value> {
        self.raw(field)
            .map(|raw| serde_json::from_str(raw.get()).unwrap_or(Value::Null))
    }
}

/// What kind of JSON value `raw` holds, for messages.
fn raw_type_name(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Parses a body holding one event object or an array of them.
pub fn parse_body(body: &[u8], max_events: usize) -> Result<Vec<NewEvent>, FieldError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| FieldError::new("body", format!("is not valid UTF-8 ({e})")))?;
    if text.trim().is_empty() {
        return Err(FieldError::new(
            "body",
            "is empty; send an event object or an array",
        ));
    }
    let invalid =
        |e: serde_json::Error| FieldError::new("body", format!("is not valid JSON ({e})"));
    let top: &RawValue = serde_json::from_str(text).map_err(invalid)?;
    let now = Utc::now();
    match raw_type_name(top) {
        "an object" => Ok(vec![parse_event(raw_object(top).map_err(invalid)?, now)?]),
        "an array" => {
            let items: Vec<&RawValue> = serde_json::from_str(top.get()).map_err(invalid)?;
            if items.is_empty() {
                return Err(FieldError::new("body", "the array holds no events"));
            }
            if items.len() > max_events {
                return Err(FieldError::new(
                    "body",
                    format!(
                        "{} events in one request; the limit is {max_events}",
                        items.len()
                    ),
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let at = format!("events[{i}]");
                    match raw_type_name(item) {
                        "an object" => parse_event(raw_object(item).map_err(invalid)?, now)
                            .map_err(|e| e.within(&at)),
                        other => Err(FieldError::new(
                            at,
                            format!("must be an object, got {other}"),
                        )),
                    }
                })
                .collect()
        }
        other => Err(FieldError::new(
            "body",
            format!("must be an event object or an array, got {other}"),
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const FIELDS: &[&str] = &[
    "aggregate_type",
    "aggregate_id",
    "event_type",
    "event_data",
    "event_version",
    "id",
    "created_at",
];

fn parse_event(members: RawObject<'_>, now: DateTime<Utc>) -> Result<NewEvent, FieldError> {
    let mut obj: Vec<(String, &RawValue)> = Vec::with_capacity(members.0.len());
    for (key, raw) in members.0 {
        if !FIELDS.contains(&key.as_str()) {
            return Err(FieldError::new(
                key,
                format!("is not a known field (known: {})", FIELDS.join(", ")),
            ));
        }
        if obj.iter().any(|(k, _)| *k == key) {
            return Err(FieldError::new(key, "is given more than once"));
        }
        obj.push((key, raw));
    }
    let mut obj = Members(obj);
    let mut name = |field: &str| -> Result<String, FieldError> {
        match obj.value(field) {
            None => Err(FieldError::new(field, "is required")),
            Some(Value::String(s)) => {
                check_name(field, &s)?;
                Ok(s)
            }
            Some(other) => Err(FieldError::new(
                field,
                format!("must be a string, got {}", type_name(&other)),
            )),
        }
    };
    let aggregate_type = name("aggregate_type")?;
    let aggregate_id = name("aggregate_id")?;
    let event_type = name("event_type")?;
    let event_data = obj
        .raw("event_data")
        .ok_or_else(|| {
            FieldError::new("event_data", "is required (any JSON value, null included)")
        })?
        .get()
        .to_string();
    check_data(&event_data)?;
    let event_version = match obj.value("event_version") {
        None => 1,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if (1..=i64::from(i32::MAX)).contains(&v) => v,
            _ => {
                return Err(FieldError::new(
                    "event_version",
                    "must be a whole number from 1",
                ))
            }
        },
        Some(other) => {
            return Err(FieldError::new(
                "event_version",
                format!("must be a number, got {}", type_name(&other)),
            ))
        }
    };
    let key = match obj.value("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Uuid::parse_str(&s).map_err(|_| {
            FieldError::new(
                "id",
                "must be a UUID like 67e55044-10b1-426f-9247-bb680e5fe0c8",
            )
        })?),
        Some(other) => {
            return Err(FieldError::new(
                "id",
                format!("must be a UUID string, got {}", type_name(&other)),
            ))
        }
    };
    let created_at = match obj.value("created_at") {
        None | Some(Value::Null) => now,
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(&s)
            .map_err(|e| FieldError::new("created_at", format!("must be an RFC 3339 time ({e})")))?
            .with_timezone(&Utc),
        Some(other) => {
            return Err(FieldError::new(
                "created_at",
                format!("must be an RFC 3339 string, got {}", type_name(&other)),
            ))
        }
    };
    Ok(NewEvent {
        aggregate_type,
        aggregate_id,
        event_type,
        event_data,
        event_version,
        created_at: crate::time::to_store_text(created_at),
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> FieldError {
        parse_body(body.as_bytes(), 10).expect_err(body)
    }

    #[test]
    fn one_object_or_an_array() {
        let one = r#"{"aggregate_type":"corruption","aggregate_id":"a","event_type":"CorruptionDetected","event_data":{"file_path":"/m"}}"#;
        assert_eq!(parse_body(one.as_bytes(), 10).unwrap().len(), 1);
        let two = format!("[{one},{one}]");
        let events = parse_body(two.as_bytes(), 10).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event_data, r#"{"file_path":"/m"}"#);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(err("{").field, "body");
        assert_eq!(err("[]").field, "body");
        assert_eq!(err("42").field, "body");
        assert_eq!(
            err(r#"{"aggregate_id":"a","event_type":"t","event_data":1}"#).field,
            "aggregate_type"
        );
        assert_eq!(
            err(r#"{"aggregate_type":"","aggregate_id":"a","event_type":"t","event_data":1}"#)
                .field,
            "aggregate_type"
        );
        assert_eq!(
            err(r#"{"aggregate_type":"c","aggregate_id":5,"event_type":"t","event_data":1}"#).field,
            "aggregate_id"
        );
        assert_eq!(
            err(r#"{"aggregate_type":"c","aggregate_id":"a","event_type":"t"}"#).field,
            "event_data"
        );
        assert_eq!(
            err(
                r#"{"aggregate_type":"c","aggregate_id":"a","event_type":"t","event_data":1,"x":1}"#
            )
            .field,
            "x"
        );
        assert_eq!(err(r#"{"aggregate_type":"c","aggregate_id":"a","event_type":"t","event_data":1,"id":"nope"}"#).field, "id");
        assert_eq!(err(r#"{"aggregate_type":"c","aggregate_id":"a","event_type":"t","event_data":1,"created_at":"yesterday"}"#).field, "created_at");
        assert_eq!(
            err(
                r#"[{"aggregate_type":"c","aggregate_id":"a","event_type":"t","event_data":1}, 3]"#
            )
            .field,
            "events[1]"
        );
        assert_eq!(err(r#"[{"aggregate_type":"c","aggregate_id":"a","event_type":"t","event_data":1}, {"aggregate_type":"c","event_type":"t","event_data":1}]"#).field, "events[1].aggregate_id");
        assert_eq!(parse_body(b"\xff\xfe", 10).unwrap_err().field, "body");
        let many = format!(
            "[{}]",
            [r#"{"aggregate_type":"c","aggregate_id":"a","event_type":"t","event_data":1}"#; 11]
                .join(",")
        );
        assert_eq!(err(&many).field, "body");
    }

    #[test]
    fn deeply_nested_data_is_refused_by_name() {
        let deep = |n: usize| {
            format!(
                r#"{{"aggregate_type":"c","aggregate_id":"a","event_type":"t","event_data":{}{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(parse_body(deep(MAX_DATA_DEPTH).as_bytes(), 1).is_ok());
        assert_eq!(err(&deep(MAX_DATA_DEPTH + 1)).field, "event_data");
        // Brackets inside strings do not count.
        assert_eq!(nesting_depth(r#"{"a":"[[[[{{{{","b":["\"[["]}"#), 2);
    }

    #[test]
    fn created_at_is_stored_in_utc() {
        let body = r#"{"aggregate_type":"c","aggregate_id":"a","event_type":"t","event_data":null,"created_at":"2026-01-06T02:18:00.5+01:00"}"#;
        let e = &parse_body(body.as_bytes(), 1).unwrap()[0];
        assert_eq!(e.created_at, "2026-01-06 01:18:00.500000");
        assert_eq!(e.event_data, "null");
    }
}
