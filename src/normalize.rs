//! Normalization: one API history message becomes one history row (SPEC §3).
//!
//! IDs stay the exact strings the API sent; texts are kept byte for byte;
//! `createdAt` is parsed to UTC microseconds (Parquet `TIMESTAMP(MICROS,
//! UTC)`), and a missing or unparseable value becomes null and is counted —
//! never a crash, never a guess (the reading itself is [`crate::timestamp`]'s).

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use crate::api::types::WireMessage;
use crate::records::{HistoryRowRef, RecordType};
use crate::timestamp::parse_timestamp;

/// The outcome of normalizing one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalized<'a> {
    /// The row, borrowing the message's strings.
    pub row: HistoryRowRef<'a>,
    /// Whether a `createdAt` was present but could not be parsed.
    pub bad_created_at: bool,
}

/// Normalizes one API message of the conversation `(account, user_id)`.
pub fn normalize<'a>(
    msg: &'a WireMessage<'_>,
    account: &'a str,
    conversation_user_id: &'a str,
) -> Normalized<'a> {
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
        row: HistoryRowRef {
            record_type: RecordType::History,
            message_id: &msg.id,
            conversation_user_id,
            account,
            sender_id: &msg.sender_id,
            receiver_id: &msg.receiver_id,
            created_at,
            message_text: msg.text.as_deref(),
            media_url: msg.media_url.as_deref().filter(|u| !u.is_empty()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::HistoryRow;

    fn wire<'a>(
        created_at: Option<&'a str>,
        text: Option<&'a str>,
        media: Option<&'a str>,
    ) -> WireMessage<'a> {
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
    fn unparseable_timestamps_are_null_and_counted() {
        for bad in ["yesterday", "2025-13-45T00:00:00Z", "", "  ", "1736942400"] {
            let w = wire(Some(bad), Some("x"), None);
            let n = normalize(&w, "acme", "42");
            assert_eq!(n.row.created_at, None, "{bad:?}");
            assert_eq!(n.bad_created_at, !bad.trim().is_empty(), "{bad:?}");
        }
        let w = wire(None, Some("x"), None);
        let n = normalize(&w, "acme", "42");
        assert_eq!((n.row.created_at, n.bad_created_at), (None, false));
    }

    /// The line a row is written as, both ways: by hand and by serde.
    fn line(row: &HistoryRowRef<'_>) -> String {
        let mut by_hand = Vec::new();
        row.write_line(&mut by_hand);
        let mut by_serde = serde_json::to_vec(row).unwrap();
        by_serde.push(b'\n');
        assert_eq!(
            String::from_utf8_lossy(&by_hand),
            String::from_utf8_lossy(&by_serde)
        );
        String::from_utf8(by_hand).unwrap()
    }

    #[test]
    fn jsonl_record_shape() {
        let w = wire(Some("2025-01-15T12:00:00Z"), Some("hi \"you\"\n👋"), None);
        assert_eq!(
            line(&normalize(&w, "acme", "42").row),
            "{\"record_type\":\"history\",\"message_id\":\"1900000000000000001\",\"conversation_user_id\":\"42\",\"account\":\"acme\",\"sender_id\":\"9876543210\",\"receiver_id\":\"1234567890\",\"created_at\":\"2025-01-15T12:00:00Z\",\"message_text\":\"hi \\\"you\\\"\\n👋\"}\n"
        );
        let w = wire(None, None, Some("https://m/x.jpg"));
        assert_eq!(
            line(&normalize(&w, "acme", "42").row),
            "{\"record_type\":\"history\",\"message_id\":\"1900000000000000001\",\"conversation_user_id\":\"42\",\"account\":\"acme\",\"sender_id\":\"9876543210\",\"receiver_id\":\"1234567890\",\"created_at\":null,\"message_text\":null,\"media_url\":\"https://m/x.jpg\"}\n"
        );
    }

    #[test]
    fn rows_round_trip_through_json() {
        let w = wire(
            Some("2025-01-15T12:00:00.5+01:00"),
            Some("\u{202e}שלום 漢字 \\ \t"),
            Some("https://m"),
        );
        let n = normalize(&w, "acme", "42");
        let back: HistoryRow = serde_json::from_str(&line(&n.row)).unwrap();
        assert_eq!(back, n.row.to_row());
        assert_eq!(back.as_ref(), n.row);
    }

    proptest::proptest! {
        #[test]
        fn any_row_is_written_as_serde_writes_it(
            id in "[0-9]{1,20}",
            text in proptest::option::of(proptest::prelude::any::<String>()),
            media in proptest::option::of("[ -~\u{80}-\u{10ffff}]{0,40}"),
            account in "[a-zA-Z0-9_\"\\\\]{1,15}",
            micros in proptest::option::of(proptest::prelude::any::<i64>()),
        ) {
            let row = HistoryRowRef {
                record_type: RecordType::History,
                message_id: &id,
                conversation_user_id: "42",
                account: &account,
                sender_id: &id,
                receiver_id: "7",
                created_at: micros,
                message_text: text.as_deref(),
                media_url: media.as_deref(),
            };
            line(&row);
        }
    }
}
