//! The records xquik-dm writes, one type per `record_type`: the field
//! order of each struct is the key order of its JSONL line and the column
//! order of its Parquet table (SPEC §3).
//!
//! History rows also come as a [`HistoryBatch`]: the rows of one page in
//! one buffer with their JSONL lines, which is how a sync moves millions
//! of them from the API to its writer without allocating per message.

use serde::{Deserialize, Serialize};

/// One history message as written to JSONL and Parquet. Field order is the
/// column order of both outputs. It serializes as its [`HistoryRowRef`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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

impl HistoryRow {
    /// The row, borrowed.
    pub fn as_ref(&self) -> HistoryRowRef<'_> {
        HistoryRowRef {
            record_type: RecordType::History,
            message_id: &self.message_id,
            conversation_user_id: &self.conversation_user_id,
            account: &self.account,
            sender_id: &self.sender_id,
            receiver_id: &self.receiver_id,
            created_at: self.created_at,
            message_text: self.message_text.as_deref(),
            media_url: self.media_url.as_deref(),
        }
    }
}

impl Serialize for HistoryRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_ref().serialize(s)
    }
}

/// A history row whose strings live elsewhere (in an API page, a batch or
/// a [`HistoryRow`]). Its serde form is the JSONL record's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HistoryRowRef<'a> {
    /// Always `"history"`.
    pub record_type: RecordType,
    /// Message ID, as the API sent it.
    pub message_id: &'a str,
    /// The other participant of the conversation.
    pub conversation_user_id: &'a str,
    /// The connected account that read the conversation.
    pub account: &'a str,
    /// Sender user ID.
    pub sender_id: &'a str,
    /// Receiver user ID.
    pub receiver_id: &'a str,
    /// UTC microseconds, or null.
    #[serde(with = "micros_rfc3339")]
    pub created_at: Option<i64>,
    /// Message body (private).
    pub message_text: Option<&'a str>,
    /// Attached media URL; omitted when the message has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_url: Option<&'a str>,
}

impl HistoryRowRef<'_> {
    /// The row with its own strings.
    pub fn to_row(&self) -> HistoryRow {
        HistoryRow {
            record_type: RecordType::History,
            message_id: self.message_id.to_owned(),
            conversation_user_id: self.conversation_user_id.to_owned(),
            account: self.account.to_owned(),
            sender_id: self.sender_id.to_owned(),
            receiver_id: self.receiver_id.to_owned(),
            created_at: self.created_at,
            message_text: self.message_text.map(str::to_owned),
            media_url: self.media_url.map(str::to_owned),
        }
    }

    /// Appends the row's JSONL line (with its newline) to `out`: the same
    /// bytes as serializing it with serde (a test holds the two equal),
    /// written by hand because a sync writes one per message and serde's
    /// string escaping and timestamp formatting were a tenth of its CPU.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"record_type":"history","message_id":"#);
        json_str(out, self.message_id);
        out.extend_from_slice(br#","conversation_user_id":"#);
        json_str(out, self.conversation_user_id);
        out.extend_from_slice(br#","account":"#);
        json_str(out, self.account);
        out.extend_from_slice(br#","sender_id":"#);
        json_str(out, self.sender_id);
        out.extend_from_slice(br#","receiver_id":"#);
        json_str(out, self.receiver_id);
        out.extend_from_slice(br#","created_at":"#);
        match self.created_at {
            Some(micros) if crate::timestamp::write_rfc3339(out, micros) => {}
            _ => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(br#","message_text":"#);
        match self.message_text {
            Some(text) => json_str(out, text),
            None => out.extend_from_slice(b"null"),
        }
        if let Some(url) = self.media_url {
            out.extend_from_slice(br#","media_url":"#);
            json_str(out, url);
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Appends `s` as a JSON string, escaped exactly as `serde_json` does (a
/// property test holds the two equal). Clean runs are found 16 bytes at a
/// time and copied whole; only a chunk holding an escape is read byte by
/// byte.
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    /// Whether a byte must be escaped in a JSON string (serde_json escapes
    /// exactly these).
    fn escaped(b: u8) -> bool {
        b < 0x20 || b == b'"' || b == b'\\'
    }
    /// Copies what is clean before each escape in `part` (at `at` in
    /// `bytes`), then the escape.
    fn escape_part(out: &mut Vec<u8>, bytes: &[u8], copied: &mut usize, at: usize, part: &[u8]) {
        for (i, &b) in part.iter().enumerate() {
            if escaped(b) {
                out.extend_from_slice(bytes.get(*copied..at + i).unwrap_or_default());
                escape(out, b);
                *copied = at + i + 1;
            }
        }
    }
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut copied = 0;
    let mut at = 0;
    let dirty = |chunk: &[u8; 16]| chunk.iter().fold(false, |a, &b| a | escaped(b));
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        // A whole chunk at once, without an early exit: vector compares.
        if <&[u8; 16]>::try_from(chunk).is_ok_and(dirty) {
            escape_part(out, bytes, &mut copied, at, chunk);
        }
        at += chunk.len();
    }
    // The tail within the string's last 16 bytes, checked the same way
    // (its start was checked already); a short string byte by byte.
    let tail = chunks.remainder();
    let last = bytes
        .len()
        .checked_sub(16)
        .and_then(|from| bytes.get(from..))
        .and_then(|last| <&[u8; 16]>::try_from(last).ok());
    let dirty_tail = match last {
        Some(last) => !tail.is_empty() && dirty(last),
        None => tail.iter().any(|&b| escaped(b)),
    };
    if dirty_tail {
        escape_part(out, bytes, &mut copied, at, tail);
    }
    out.extend_from_slice(bytes.get(copied..).unwrap_or_default());
    out.push(b'"');
}

/// The escape `serde_json` writes for a byte that needs one.
fn escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => {
            let hex = |n: u8| HEX.get(usize::from(n & 0xf)).copied().unwrap_or(b'0');
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hex(b >> 4), hex(b)]);
        }
    }
}

/// The history rows of one page, each string once in one buffer, with
/// their JSONL lines: what a sync hands its writer. The writer appends the
/// lines to the handoff file and the rows to Parquet and the rows file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryBatch {
    strings: String,
    rows: Vec<BatchRow>,
    lines: Vec<u8>,
}

/// Where a string of a batch row sits in the batch's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchRow {
    message_id: Span,
    conversation_user_id: Span,
    account: Span,
    sender_id: Span,
    receiver_id: Span,
    created_at: Option<i64>,
    message_text: Option<Span>,
    media_url: Option<Span>,
}

impl HistoryBatch {
    /// An empty batch sized for `rows` rows of about `bytes` bytes of text.
    pub fn with_capacity(rows: usize, bytes: usize) -> HistoryBatch {
        HistoryBatch {
            strings: String::with_capacity(bytes),
            rows: Vec::with_capacity(rows),
            lines: Vec::with_capacity(bytes + bytes / 8 + rows * 250),
        }
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.strings.clear();
        self.rows.clear();
        self.lines.clear();
    }

    /// The bytes its buffers hold room for.
    pub fn capacity(&self) -> usize {
        self.strings.capacity()
            + self.lines.capacity()
            + self.rows.capacity() * std::mem::size_of::<BatchRow>()
    }

    /// Makes room for `rows` more rows of about `bytes` bytes of text.
    pub fn reserve(&mut self, rows: usize, bytes: usize) {
        self.strings.reserve(bytes);
        self.rows.reserve(rows);
        self.lines.reserve(bytes + bytes / 8 + rows * 250);
    }

    /// A batch of these rows.
    pub fn of(rows: &[HistoryRow]) -> HistoryBatch {
        let mut batch = HistoryBatch::default();
        for row in rows {
            batch.push(&row.as_ref());
        }
        batch
    }

    /// Adds a row and its line.
    pub fn push(&mut self, row: &HistoryRowRef<'_>) {
        row.write_line(&mut self.lines);
        // A page's rows share their conversation and account: kept once.
        let last = self.rows.last().copied();
        let conversation_user_id = match last {
            Some(l) if self.get(l.conversation_user_id) == row.conversation_user_id => {
                l.conversation_user_id
            }
            _ => self.add(row.conversation_user_id),
        };
        let account = match last {
            Some(l) if self.get(l.account) == row.account => l.account,
            _ => self.add(row.account),
        };
        let batch_row = BatchRow {
            message_id: self.add(row.message_id),
            conversation_user_id,
            account,
            sender_id: self.add(row.sender_id),
            receiver_id: self.add(row.receiver_id),
            created_at: row.created_at,
            message_text: row.message_text.map(|t| self.add(t)),
            media_url: row.media_url.map(|u| self.add(u)),
        };
        self.rows.push(batch_row);
    }

    fn add(&mut self, s: &str) -> Span {
        let start = self.strings.len();
        self.strings.push_str(s);
        Span {
            start,
            end: self.strings.len(),
        }
    }

    fn get(&self, span: Span) -> &str {
        self.strings.get(span.start..span.end).unwrap_or_default()
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the batch has no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows' JSONL lines, each ending in a newline.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// The rows, in the order they were pushed.
    pub fn rows(&self) -> impl Iterator<Item = HistoryRowRef<'_>> {
        self.rows.iter().map(|r| HistoryRowRef {
            record_type: RecordType::History,
            message_id: self.get(r.message_id),
            conversation_user_id: self.get(r.conversation_user_id),
            account: self.get(r.account),
            sender_id: self.get(r.sender_id),
            receiver_id: self.get(r.receiver_id),
            created_at: r.created_at,
            message_text: r.message_text.map(|s| self.get(s)),
            media_url: r.media_url.map(|s| self.get(s)),
        })
    }
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
        match v.and_then(crate::timestamp::format_micros) {
            Some(text) => s.serialize_str(&text),
            None => s.serialize_none(),
        }
    }

    /// Reads RFC 3339 (or null) back into microseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let raw = Option::<String>::deserialize(d)?;
        match raw {
            None => Ok(None),
            Some(text) => crate::timestamp::parse_timestamp(&text)
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
        match crate::timestamp::format_micros(*v) {
            Some(text) => s.serialize_str(&text),
            None => Err(serde::ser::Error::custom("timestamp out of range")),
        }
    }

    /// Reads RFC 3339 back into microseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = String::deserialize(d)?;
        crate::timestamp::parse_timestamp(&text)
            .ok_or_else(|| serde::de::Error::custom("not an RFC 3339 timestamp"))
    }
}

/// The fields of a handoff record that name it (its type, conversation or
/// recipient, and ID) and date it, read from a JSONL line without its body:
/// what an erasure matches and `verify` compares with the rows files.
#[derive(Debug, Clone, Deserialize)]
pub struct RecordKey {
    /// `history` or `send`.
    pub record_type: String,
    /// The message ID.
    pub message_id: String,
    /// A history record's conversation.
    #[serde(default)]
    pub conversation_user_id: Option<String>,
    /// A send record's recipient.
    #[serde(default)]
    pub recipient_user_id: Option<String>,
    /// A history record's time (RFC 3339), if any.
    #[serde(default)]
    pub created_at: Option<String>,
    /// A send record's time (RFC 3339).
    #[serde(default)]
    pub sent_at: Option<String>,
}

impl RecordKey {
    /// The conversation of a history record, the recipient of a send: the
    /// `user_id` of its rows-file line.
    pub fn user_id(&self) -> &str {
        self.conversation_user_id
            .as_deref()
            .or(self.recipient_user_id.as_deref())
            .unwrap_or_default()
    }
}
