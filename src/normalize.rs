//! Normalization: one API history message becomes one history row (SPEC §3).
//!
//! IDs stay the exact strings the API sent; texts are kept byte for byte;
//! `createdAt` is parsed to UTC microseconds (Parquet `TIMESTAMP(MICROS,
//! UTC)`), and a missing or unparseable value becomes null and is counted —
//! never a crash, never a guess.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

use crate::api::types::WireMessage;
use crate::records::{HistoryRow, RecordType};

/// The outcome of normalizing one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The row.
    pub row: HistoryRow,
    /// Whether a `createdAt` was present but could not be parsed.
    pub bad_created_at: bool,
}

/// Normalizes one API message of the conversation `(account, user_id)`.
pub fn normalize(msg: WireMessage, account: &str, conversation_user_id: &str) -> Normalized {
    // A blank value is as good as none: it is missing, not malformed.
    let raw = msg
        .created_at
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let (created_at, bad_created_at) = match raw {
        None => (None, false),
        Some(raw) => match parse_timestamp(raw) {
            Some(micros) => (Some(micros), false),
            None => (None, true),
        },
    };
    Normalized {
        row: HistoryRow {
            record_type: RecordType::History,
            message_id: msg.id,
            conversation_user_id: conversation_user_id.to_owned(),
            account: account.to_owned(),
            sender_id: msg.sender_id,
            receiver_id: msg.receiver_id,
            created_at,
            message_text: msg.text,
            media_url: msg.media_url.filter(|u| !u.is_empty()),
        },
        bad_created_at,
    }
}

/// Whether an ID is what X IDs are: 1 to 20 decimal digits. Anything else
/// — empty, a path, a 400-digit number — cannot be deduped or loaded into
/// a warehouse `BIGINT`, and is never written (SPEC §5, hostile answers).
pub fn is_valid_id(id: &str) -> bool {
    (1..=20).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_digit())
        // One spelling per ID: `007` and `7` would dedupe as two.
        && (id == "0" || !id.starts_with('0'))
}

/// The first ID field of a message that is not a valid ID, if any.
pub fn invalid_id_field(msg: &WireMessage) -> Option<&'static str> {
    [
        ("id", &msg.id),
        ("senderId", &msg.sender_id),
        ("receiverId", &msg.receiver_id),
    ]
    .into_iter()
    .find(|(_, id)| !is_valid_id(id))
    .map(|(field, _)| field)
}

/// Parses an ISO-8601 timestamp into UTC microseconds since the epoch.
/// Accepts RFC 3339 with any offset, and — leniently — a timestamp without
/// offset (read as UTC) or with a space instead of `T`. Anything else,
/// including values outside what microseconds can hold, is `None`.
pub fn parse_timestamp(raw: &str) -> Option<i64> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    let parsed = DateTime::parse_from_rfc3339(raw)
        .map(|dt| dt.with_timezone(&Utc))
        .or_else(|_| {
            DateTime::parse_from_rfc3339(&raw.replacen(' ', "T", 1))
                .map(|dt| dt.with_timezone(&Utc))
        })
        .or_else(|_| {
            NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S%.f"))
                .map(|naive| naive.and_utc())
        })
        .ok()?;
    Some(parsed.timestamp_micros())
}

/// Formats UTC microseconds as RFC 3339 (`2025-01-15T12:00:00Z`, with a
/// fraction only when there is one).
pub fn format_micros(micros: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|dt| dt.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(created_at: Option<&str>, text: Option<&str>, media: Option<&str>) -> WireMessage {
        WireMessage {
            id: "1900000000000000001".into(),
            sender_id: "9876543210".into(),
            receiver_id: "1234567890".into(),
            text: text.map(Into::into),
            created_at: created_at.map(Into::into),
            media_url: media.map(Into::into),
        }
    }

    #[test]
    fn timestamps_become_utc_micros() {
        let utc = parse_timestamp("2025-01-15T12:00:00Z").unwrap();
        assert_eq!(parse_timestamp("2025-01-15T14:00:00+02:00"), Some(utc));
        assert_eq!(parse_timestamp("2025-01-15T12:00:00.000Z"), Some(utc));
        assert_eq!(parse_timestamp("2025-01-15T12:00:00"), Some(utc));
        assert_eq!(parse_timestamp("2025-01-15 12:00:00"), Some(utc));
        assert_eq!(format_micros(utc).unwrap(), "2025-01-15T12:00:00Z");
        let frac = parse_timestamp("2025-01-15T12:00:00.123456789Z").unwrap();
        assert_eq!(format_micros(frac).unwrap(), "2025-01-15T12:00:00.123456Z");
    }

    #[test]
    fn unparseable_timestamps_are_null_and_counted() {
        for bad in ["yesterday", "2025-13-45T00:00:00Z", "", "  ", "1736942400"] {
            let n = normalize(wire(Some(bad), Some("x"), None), "acme", "42");
            assert_eq!(n.row.created_at, None, "{bad:?}");
            assert_eq!(n.bad_created_at, !bad.trim().is_empty(), "{bad:?}");
        }
        let n = normalize(wire(None, Some("x"), None), "acme", "42");
        assert_eq!((n.row.created_at, n.bad_created_at), (None, false));
    }

    #[test]
    fn jsonl_record_shape() {
        let n = normalize(
            wire(Some("2025-01-15T12:00:00Z"), Some("hi \"you\"\n👋"), None),
            "acme",
            "42",
        );
        assert_eq!(
            serde_json::to_string(&n.row).unwrap(),
            r#"{"record_type":"history","message_id":"1900000000000000001","conversation_user_id":"42","account":"acme","sender_id":"9876543210","receiver_id":"1234567890","created_at":"2025-01-15T12:00:00Z","message_text":"hi \"you\"\n👋"}"#
        );
        let media_only = normalize(wire(None, None, Some("https://m/x.jpg")), "acme", "42");
        assert_eq!(
            serde_json::to_string(&media_only.row).unwrap(),
            r#"{"record_type":"history","message_id":"1900000000000000001","conversation_user_id":"42","account":"acme","sender_id":"9876543210","receiver_id":"1234567890","created_at":null,"message_text":null,"media_url":"https://m/x.jpg"}"#
        );
    }

    #[test]
    fn rows_round_trip_through_json() {
        let n = normalize(
            wire(
                Some("2025-01-15T12:00:00.5+01:00"),
                Some("\u{202e}שלום 漢字 \\ \t"),
                Some("https://m"),
            ),
            "acme",
            "42",
        );
        let text = serde_json::to_string(&n.row).unwrap();
        let back: HistoryRow = serde_json::from_str(&text).unwrap();
        assert_eq!(back, n.row);
    }
}
