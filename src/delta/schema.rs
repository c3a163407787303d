//! The tables' schemas as the Delta log states them (`metaData.schemaString`):
//! the columns of the Parquet files (`crate::sinks::parquet`, checked by a
//! test there is no drift) plus the partition column `date`.
//!
//! The column lists are spelt out here rather than derived from the Arrow
//! schemas so that this module never depends on the sinks (which depend on
//! it for their statistics).

use serde_json::{Value, json};

/// Which of the two tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableKind {
    /// `parquet/messages`: history rows.
    Messages,
    /// `parquet/sends`: outbound sends.
    Sends,
}

impl TableKind {
    /// Both tables.
    pub const ALL: [TableKind; 2] = [TableKind::Messages, TableKind::Sends];

    /// The table root, relative to the output root.
    pub fn root(self) -> &'static str {
        match self {
            TableKind::Messages => "parquet/messages",
            TableKind::Sends => "parquet/sends",
        }
    }

    /// The short name (`messages`, `sends`), as manifests name the table.
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Messages => "messages",
            TableKind::Sends => "sends",
        }
    }

    /// The columns that get statistics: the ID and time columns, never a
    /// body column.
    pub fn stats_columns(self) -> &'static [&'static str] {
        match self {
            TableKind::Messages => &["created_at", "message_id", "conversation_user_id"],
            TableKind::Sends => &["sent_at", "message_id", "recipient_user_id"],
        }
    }
}

/// A column's Delta type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `string`.
    String,
    /// `timestamp` (UTC, microseconds).
    Timestamp,
    /// `boolean`.
    Boolean,
    /// `array<string>`.
    StringArray,
}

/// (name, type, nullable) of the data columns of `kind`, in file order.
pub(crate) fn columns(kind: TableKind) -> &'static [(&'static str, Kind, bool)] {
    use Kind::*;
    match kind {
        TableKind::Messages => &[
            ("record_type", String, false),
            ("message_id", String, false),
            ("conversation_user_id", String, false),
            ("account", String, false),
            ("sender_id", String, false),
            ("receiver_id", String, false),
            ("created_at", Timestamp, true),
            ("message_text", String, true),
            ("media_url", String, true),
        ],
        TableKind::Sends => &[
            ("record_type", String, false),
            ("message_id", String, false),
            ("success", Boolean, false),
            ("send_status", String, false),
            ("sender_account", String, false),
            ("recipient_user_id", String, false),
            ("message_text", String, false),
            ("sent_at", Timestamp, false),
            ("media_id", String, true),
            ("media_ids", StringArray, true),
        ],
    }
}

fn delta_type(kind: Kind) -> Value {
    match kind {
        Kind::String => json!("string"),
        Kind::Timestamp => json!("timestamp"),
        Kind::Boolean => json!("boolean"),
        Kind::StringArray => {
            json!({"type": "array", "elementType": "string", "containsNull": true})
        }
    }
}

/// The `schemaString` of table `kind`: its data columns, then `date`.
pub(crate) fn schema_string(kind: TableKind) -> String {
    let mut fields: Vec<Value> = columns(kind)
        .iter()
        .map(|&(name, kind, nullable)| {
            json!({"name": name, "type": delta_type(kind), "nullable": nullable, "metadata": {}})
        })
        .collect();
    fields.push(json!({"name": "date", "type": "string", "nullable": true, "metadata": {}}));
    json!({"type": "struct", "fields": fields}).to_string()
}
