//! The records xquik-dm writes, one type per `record_type`: the field
//! order of each struct is the key order of its JSONL line and the column
//! order of its Parquet table (SPEC §3).

use serde::{Deserialize, Serialize};

/// One history message as written to JSONL and Parquet. Field order is the
/// column order of both outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRow {
    /// Always `"history"`.
    pub record_type: RecordType,
    /// Message ID, as the API sent it.
    pub message_id: String,
    /// The other participant of the conversation (the `{userId}` synced).
    pub conversation_user_id: String,
    /// The connected account that read the conversation.
    pub account: String,
    /// Sender user ID.
    pub sender_id: String,
    /// Receiver user ID.
    pub receiver_id: String,
    /// RFC 3339 UTC with microsecond precision at most; null when the API
    /// gave no usable timestamp.
    #[serde(with = "micros_rfc3339")]
    pub created_at: Option<i64>,
    /// Message body (private); null when the message has none.
    pub message_text: Option<String>,
    /// Attached media URL; omitted when the message has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_url: Option<String>,
}

/// The `record_type` tag of a JSONL record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordType {
    /// A history message.
    History,
    /// An outbound send.
    Send,
}

/// One outbound send as written to JSONL and `parquet/sends/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRow {
    /// Always `"send"`.
    pub record_type: RecordType,
    /// The sent DM's ID (`messageId`, else `result.id`).
    pub message_id: String,
    /// Whether the API reported success.
    pub success: bool,
    /// The write action's final status (`success`, ...).
    pub send_status: String,
    /// The connected account that sent it.
    pub sender_account: String,
    /// The numeric recipient ID used in the path.
    pub recipient_user_id: String,
    /// The text sent (private).
    pub message_text: String,
    /// The job's own timestamp of the send, RFC 3339 UTC.
    #[serde(with = "micros_rfc3339_required")]
    pub sent_at: i64,
    /// The uploaded media ID (media sends only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_id: Option<String>,
    /// `[media_id]` (media sends only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_ids: Option<Vec<String>>,
}

/// Serde adapter: `Option<i64>` microseconds as an RFC 3339 string or null.
pub mod micros_rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes microseconds as RFC 3339 UTC, or null.
    pub fn serialize<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match v.and_then(crate::normalize::format_micros) {
            Some(text) => s.serialize_str(&text),
            None => s.serialize_none(),
        }
    }

    /// Reads RFC 3339 (or null) back into microseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let raw = Option::<String>::deserialize(d)?;
        match raw {
            None => Ok(None),
            Some(text) => crate::normalize::parse_timestamp(&text)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("created_at is not RFC 3339")),
        }
    }
}

/// Serde adapter: `i64` microseconds as an RFC 3339 string.
pub mod micros_rfc3339_required {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes microseconds as RFC 3339 UTC.
    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        match crate::normalize::format_micros(*v) {
            Some(text) => s.serialize_str(&text),
            None => Err(serde::ser::Error::custom("timestamp out of range")),
        }
    }

    /// Reads RFC 3339 back into microseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = String::deserialize(d)?;
        crate::normalize::parse_timestamp(&text)
            .ok_or_else(|| serde::de::Error::custom("not an RFC 3339 timestamp"))
    }
}
