//! Deterministic synthetic data of the mock: message ids, timestamps, texts,
//! media URLs, profiles, and the opaque history cursors.
//!
//! Nothing here is stored: every message is a pure function of
//! `(seed, conversation index, message index)`, so a conversation of millions
//! of messages costs nothing until a page of it is served. Index 0 is the
//! oldest message of a conversation. This module owns no state and does no
//! I/O; `state` decides which index holds a synthetic message and which holds
//! a DM sent through the API.

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{MockMessage, MockUser};

/// X's snowflake epoch (2010-11-04T01:42:54.657Z), so ids look like real ones.
const SNOWFLAKE_EPOCH_MS: i64 = 1_288_834_974_657;
/// 2024-09-01T00:00:00Z: where the first conversation starts.
const FIRST_START_MS: i64 = 1_725_148_800_000;
/// Mean gap between two messages. Small enough that a conversation of ten
/// million messages still ends before 2085, past which snowflakes grow a 20th
/// digit.
const STEP_MS: i64 = 180_000;
/// Snowflake worker ids 0..1023 belong to conversations; 1023 is kept for
/// media ids so the two kinds never collide.
const CONVERSATION_WORKERS: u64 = 1023;
const MEDIA_WORKER: u64 = 1023;

/// Domain tags so the streams derived from one seed are independent.
const TAG_TIME: u64 = 0x7469_6d65;
const TAG_BODY: u64 = 0x626f_6479;
const TAG_START: u64 = 0x7374_6172;
const TAG_SHUFFLE: u64 = 0x7368_7566;
const TAG_PROFILE: u64 = 0x7072_6f66;

/// Mixes two words into one well-distributed word (splitmix64 finalizer).
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    splitmix(a ^ splitmix(b))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Folds a string into a word, for seeding from ids and usernames.
fn fold(text: &str) -> u64 {
    text.bytes()
        .fold(0xCBF2_9CE4_8422_2325, |acc, b| mix(acc, u64::from(b)))
}

/// The immutable identity of one conversation: everything needed to derive
/// any of its messages and to sign its cursors.
#[derive(Debug)]
pub(crate) struct Thread {
    seed: u64,
    /// Position in the world's conversation list; part of every message id.
    index: u64,
    /// The connected account's X user id.
    pub(crate) account_user_id: String,
    /// The other participant's X user id.
    pub(crate) user_id: String,
    start_ms: i64,
}

/// A position in a conversation's history, as carried by a cursor: the next
/// page holds the messages with an index below `before`. `page` numbers the
/// pages of one walk from 1 so that page-based faults stay put when a client
/// retries a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) before: u64,
    pub(crate) page: u32,
}

impl Thread {
    /// Derives the conversation `index` of `seed` between the two users.
    pub(crate) fn new(seed: u64, index: u64, account_user_id: &str, user_id: &str) -> Thread {
        let day = 86_400_000;
        let spread = (index % 200) as i64 * 3 * day;
        let jitter = (mix(seed ^ TAG_START, index) % day as u64) as i64;
        Thread {
            seed,
            index,
            account_user_id: account_user_id.to_owned(),
            user_id: user_id.to_owned(),
            start_ms: FIRST_START_MS + spread + jitter,
        }
    }

    /// Creation time of message `i` in Unix milliseconds: strictly increasing
    /// with `i` (the jitter stays below one step minus a second).
    fn created_ms(&self, i: u64) -> i64 {
        let jitter = mix(self.seed ^ TAG_TIME, (self.index << 40) ^ i) % (STEP_MS as u64 - 1_000);
        self.start_ms + i as i64 * STEP_MS + jitter as i64
    }

    /// Snowflake id of message `i`: time in the high bits, so ids increase
    /// with the index; the conversation in the worker and sequence bits, so
    /// two conversations never share an id.
    pub(crate) fn message_id(&self, i: u64) -> u64 {
        let elapsed = (self.created_ms(i) - SNOWFLAKE_EPOCH_MS) as u64;
        let worker = self.index % CONVERSATION_WORKERS;
        let sequence = (self.index / CONVERSATION_WORKERS) & 0xFFF;
        (elapsed << 22) | (worker << 12) | sequence
    }

    /// Index of the first message whose id is at least `max_id` (`len` when
    /// none is): the legacy `maxId` parameter asks for the messages below it.
    pub(crate) fn index_of_id(&self, max_id: u64, len: u64) -> u64 {
        let (mut lo, mut hi) = (0, len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.message_id(mid) < max_id {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The synthetic message at index `i`.
    pub(crate) fn synthetic(&self, i: u64) -> MockMessage {
        let mut rng = fastrand::Rng::with_seed(mix(self.seed ^ TAG_BODY, (self.index << 40) ^ i));
        let id = self.message_id(i);
        // The customer opens every conversation; then the two sides alternate.
        let (sender, receiver) = if i.is_multiple_of(2) {
            (&self.user_id, &self.account_user_id)
        } else {
            (&self.account_user_id, &self.user_id)
        };
        let (text, media_url) = match rng.u32(0..1000) {
            0..2 => (Some(long_text(&mut rng)), None),
            2..32 => (None, Some(media_url(&mut rng, id))),
            32..62 => (Some(short_text(&mut rng)), Some(media_url(&mut rng, id))),
            _ => (Some(short_text(&mut rng)), None),
        };
        MockMessage {
            id: id.to_string(),
            sender_id: sender.clone(),
            receiver_id: receiver.clone(),
            text,
            created_at: created_at(self.created_ms(i), &mut rng),
            media_url,
        }
    }

    /// The message at index `i` when it was sent through `POST /x/dm`: from
    /// the account, with the sent text, always timestamped.
    pub(crate) fn sent(&self, i: u64, text: &str, media_url: Option<&str>) -> MockMessage {
        MockMessage {
            id: self.message_id(i).to_string(),
            sender_id: self.account_user_id.clone(),
            receiver_id: self.user_id.clone(),
            text: Some(text.to_owned()),
            created_at: format_utc(self.created_ms(i), true),
            media_url: media_url.map(str::to_owned),
        }
    }

    /// Shuffles one page in an order that depends only on the page, so a
    /// retried request sees the same order.
    pub(crate) fn shuffle(&self, page: &mut [MockMessage], cursor: Cursor) {
        let word = mix(cursor.before, u64::from(cursor.page));
        let mut rng = fastrand::Rng::with_seed(mix(self.seed ^ TAG_SHUFFLE, self.index ^ word));
        rng.shuffle(page);
    }

    /// Encodes a cursor: a version byte, the two numbers as varints and a
    /// 48-bit check value bound to this conversation, base64url without
    /// padding. Looks opaque, as real cursors do, and any edit is caught.
    pub(crate) fn encode_cursor(&self, cursor: Cursor) -> String {
        let mut bytes = vec![1u8];
        push_varint(&mut bytes, cursor.before);
        push_varint(&mut bytes, u64::from(cursor.page));
        let check = self.check(&bytes);
        bytes.extend_from_slice(&check);
        base64url(&bytes)
    }

    /// Decodes a cursor issued for this conversation; `None` when it is
    /// malformed, tampered with, or belongs to another conversation.
    pub(crate) fn decode_cursor(&self, text: &str) -> Option<Cursor> {
        let bytes = unbase64url(text)?;
        let split = bytes.len().checked_sub(6)?;
        let (body, check) = bytes.split_at(split);
        if body.first() != Some(&1) || self.check(body) != check {
            return None;
        }
        let mut rest = &body[1..];
        let before = take_varint(&mut rest)?;
        let page = u32::try_from(take_varint(&mut rest)?).ok()?;
        (rest.is_empty() && page >= 1).then_some(Cursor { before, page })
    }

    fn check(&self, body: &[u8]) -> [u8; 6] {
        let mut hasher = Sha256::new();
        hasher.update(b"xquik-mock-cursor\0");
        hasher.update(self.seed.to_le_bytes());
        hasher.update(self.index.to_le_bytes());
        hasher.update(self.account_user_id.as_bytes());
        hasher.update([0]);
        hasher.update(self.user_id.as_bytes());
        hasher.update([0]);
        hasher.update(body);
        let digest = hasher.finalize();
        let mut out = [0u8; 6];
        out.copy_from_slice(&digest[..6]);
        out
    }
}

/// A 19-digit media id for the `n`th upload of a world.
pub(crate) fn media_id(seed: u64, n: u64) -> String {
    let ms = FIRST_START_MS + (n as i64) * 1_000 + (mix(seed, n) % 1_000) as i64;
    let elapsed = (ms - SNOWFLAKE_EPOCH_MS) as u64;
    ((elapsed << 22) | (MEDIA_WORKER << 12) | (n & 0xFFF)).to_string()
}

/// The profile `GET /x/users/{id}` returns: the configured identity plus
/// stable made-up profile fields.
pub(crate) fn profile(user: &MockUser, seed: u64) -> Value {
    let mut rng = fastrand::Rng::with_seed(mix(seed ^ TAG_PROFILE, fold(&user.id)));
    const PLACES: [&str; 5] = ["Berlin", "São Paulo", "東京", "Lagos", ""];
    let mut profile = json!({
        "id": user.id,
        "username": user.username,
        "name": user.name,
        "description": format!("Customer of Acme since {}. Opinions my own ✨", rng.u32(2012..2025)),
        "followers": rng.u64(0..250_000),
        "following": rng.u64(0..5_000),
        "verified": false,
        "isBlueVerified": rng.bool(),
        "isVerified": false,
        "profilePicture": format!("https://pbs.twimg.com/profile_images/{}/avatar_normal.jpg", user.id),
        "location": PLACES[rng.usize(0..PLACES.len())],
        "createdAt": format_utc(FIRST_START_MS - rng.i64(30..4_000) * 86_400_000, true),
        "statusesCount": rng.u64(0..90_000),
        "mediaCount": rng.u64(0..3_000),
        "protected": false,
    });
    if let (Some(can_dm), Some(map)) = (user.can_dm, profile.as_object_mut()) {
        map.insert("canDm".to_owned(), Value::Bool(can_dm));
    }
    profile
}

/// Sentences a support conversation is mostly made of.
const PLAIN: &[&str] = &[
    "Hi! Thanks for reaching out.",
    "Can you share the order number?",
    "Sure, it's the one from last Tuesday.",
    "I'll check with the warehouse and get back to you.",
    "The package arrived damaged.",
    "Refund issued, it should show up in 3-5 business days.",
    "Is there anything else I can help with?",
    "Thanks, that fixed it!",
    "Could you send a photo of the label?",
    "We're sorry for the delay.",
    "ok",
    "?",
    "Yes",
];

/// Fragments that break naive handling of text: multi-code-point emoji, RTL
/// scripts, CJK, combining marks, line endings, quotes, backslashes, JSON and
/// markup lookalikes, invisible and control characters.
const TRICKY: &[&str] = &[
    "👋",
    "👩\u{200d}👩\u{200d}👧\u{200d}👦 family plan please",
    "🇯🇵🇺🇦🇧🇷 shipping to all three?",
    "👍🏽",
    "🏳\u{fe0f}\u{200d}🌈🏴\u{200d}☠\u{fe0f}",
    "😀😃😄😁😆😅🤣😂",
    "مرحبا، أحتاج مساعدة في طلبي رقم ٤٥٦",
    "שלום, ההזמנה שלי לא הגיעה",
    "你好，我的包裹在哪里？",
    "こんにちは！返品できますか？",
    "안녕하세요 감사합니다",
    "Crème brûlée, naïve café: e\u{301} vs é",
    "Z\u{324}\u{354}\u{367}\u{311}\u{313}a\u{308}\u{356}\u{32d}\u{308}\u{307}lgo",
    "line one\nline two\nline three",
    "windows\r\nline endings\r\n",
    "tab\tseparated\tvalues",
    "she said \"no refunds\", really?",
    "path C:\\Users\\support\\new_folder",
    "{\"id\": 1, \"text\": \"not really json\", \"ok\": true}",
    "[1, 2, 3]",
    "null",
    "</script><script>alert(1)</script>",
    "' OR 1=1; --",
    "\u{200b}zero\u{200b}width\u{200b}",
    "\u{202e}reversed\u{202c} text",
    "\u{feff}BOM at start",
    "line\u{2028}separator\u{2029}paragraph",
    "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑ ∞ ≠",
    "trailing spaces   ",
    "   leading spaces",
    "\\n is not a newline here",
    "bell \u{7} and escape \u{1b}[0m",
    "100% ✅ done",
];

fn fragment(rng: &mut fastrand::Rng) -> &'static str {
    if rng.u32(0..100) < 55 {
        PLAIN[rng.usize(0..PLAIN.len())]
    } else {
        TRICKY[rng.usize(0..TRICKY.len())]
    }
}

fn short_text(rng: &mut fastrand::Rng) -> String {
    let mut text = String::from(fragment(rng));
    for _ in 0..rng.usize(0..3) {
        text.push_str(match rng.u32(0..10) {
            0 => "\n",
            1 => "\r\n",
            _ => " ",
        });
        text.push_str(fragment(rng));
    }
    if rng.u32(0..10) < 3 {
        text.push_str(&format!(" (ref #{})", rng.u32(1_000..100_000)));
    }
    text
}

/// A text of 9,000 to 10,000 Unicode scalar values: long, yet still sendable.
fn long_text(rng: &mut fastrand::Rng) -> String {
    let target = 9_000 + rng.usize(0..=1_000);
    let mut text = String::with_capacity(target * 2);
    let mut scalars = 0;
    while scalars < target {
        let piece = if rng.u32(0..8) == 0 {
            "\n"
        } else {
            fragment(rng)
        };
        text.push_str(piece);
        text.push(' ');
        scalars += piece.chars().count() + 1;
    }
    if let Some((cut, _)) = text.char_indices().nth(target) {
        text.truncate(cut);
    }
    text
}

fn media_url(rng: &mut fastrand::Rng, message_id: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let token: String = (0..15)
        .map(|_| char::from(ALPHABET[rng.usize(0..ALPHABET.len())]))
        .collect();
    match rng.u32(0..10) {
        0..7 => format!("https://pbs.twimg.com/dm_media/{token}.jpg"),
        7 => format!("https://video.twimg.com/dm_gif/{message_id}/{token}.mp4"),
        _ => format!(
            "https://video.twimg.com/dm_video/{message_id}/vid/avc1/1280x720/{token}.mp4?tag=12"
        ),
    }
}

/// `createdAt` as the API writes it: mostly UTC with milliseconds, sometimes
/// without them or in a local offset, and about 2% of the time absent.
fn created_at(ms: i64, rng: &mut fastrand::Rng) -> Option<String> {
    const OFFSETS: [i32; 5] = [
        2 * 3600,
        -5 * 3600,
        5 * 3600 + 1800,
        9 * 3600,
        -(3 * 3600 + 1800),
    ];
    match rng.u32(0..100) {
        0..2 => None,
        2..12 => {
            let offset = FixedOffset::east_opt(OFFSETS[rng.usize(0..OFFSETS.len())])?;
            let local = DateTime::<Utc>::from_timestamp_millis(ms)?.with_timezone(&offset);
            Some(local.to_rfc3339_opts(SecondsFormat::Millis, false))
        }
        12..17 => format_utc(ms, false),
        _ => format_utc(ms, true),
    }
}

/// `2025-01-15T12:00:00.000Z` (or without the milliseconds).
pub(crate) fn format_utc(ms: i64, millis: bool) -> Option<String> {
    let format = if millis {
        SecondsFormat::Millis
    } else {
        SecondsFormat::Secs
    };
    Some(DateTime::<Utc>::from_timestamp_millis(ms)?.to_rfc3339_opts(format, true))
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7F).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let word = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(
                BASE64URL[((word >> (18 - 6 * i)) & 63) as usize],
            ));
        }
    }
    out
}

fn unbase64url(text: &str) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        let mut word = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let value = BASE64URL.iter().position(|&a| a == c)? as u32;
            word |= value << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((word >> (16 - 8 * i)) as u8);
        }
    }
    // Reject non-canonical encodings (stray low bits), so one cursor has
    // exactly one spelling.
    (base64url(&out) == text).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(index: u64) -> Thread {
        Thread::new(7, index, "1612345678901234567", "2244994945")
    }

    #[test]
    fn ids_are_19_digits_increasing_and_unique_across_conversations() {
        let mut all = std::collections::HashSet::new();
        for index in [0, 1, 2, 1022, 1023, 5000] {
            let t = thread(index);
            let mut last = 0;
            for i in (0..2_000).chain([5_000_000, 9_999_999]) {
                let id = t.message_id(i);
                assert_eq!(id.to_string().len(), 19, "index {index} message {i}");
                assert!(id > last);
                last = id;
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
        assert!(!all.contains(&media_id(7, 0).parse::<u64>().expect("numeric")));
    }

    #[test]
    fn index_of_id_inverts_message_id() {
        let t = thread(3);
        for i in [0, 1, 57, 999] {
            assert_eq!(t.index_of_id(t.message_id(i), 1_000), i);
            assert_eq!(t.index_of_id(t.message_id(i) + 1, 1_000), i + 1);
        }
        assert_eq!(t.index_of_id(u64::MAX, 1_000), 1_000);
    }

    #[test]
    fn cursor_round_trips_and_rejects_tampering() {
        let t = thread(1);
        let cursor = Cursor {
            before: 123_456,
            page: 42,
        };
        let text = t.encode_cursor(cursor);
        assert!(text.parse::<u64>().is_err());
        assert_eq!(t.decode_cursor(&text), Some(cursor));
        assert_eq!(
            thread(2).decode_cursor(&text),
            None,
            "bound to its conversation"
        );
        for i in 0..text.len() {
            let mut bytes = text.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let edited = String::from_utf8(bytes).expect("ascii");
            assert_eq!(t.decode_cursor(&edited), None, "edit at {i}");
        }
        for bad in ["", "0", "12", "AAAA", "!!!!", &text[..text.len() - 1]] {
            assert_eq!(t.decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn base64url_round_trips() {
        for len in 0..20 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(unbase64url(&base64url(&bytes)), Some(bytes));
        }
    }

    #[test]
    fn synthetic_messages_cover_the_tricky_cases() {
        let t = thread(0);
        let messages: Vec<MockMessage> = (0..20_000).map(|i| t.synthetic(i)).collect();
        let media_only = messages.iter().filter(|m| m.text.is_none()).count();
        let both = messages
            .iter()
            .filter(|m| m.text.is_some() && m.media_url.is_some())
            .count();
        let undated = messages.iter().filter(|m| m.created_at.is_none()).count();
        let offset = messages
            .iter()
            .filter(|m| m.created_at.as_deref().is_some_and(|c| !c.ends_with('Z')))
            .count();
        let long = messages
            .iter()
            .filter_map(|m| m.text.as_deref())
            .filter(|t| t.chars().count() >= 9_000)
            .count();
        assert!((400..800).contains(&media_only), "{media_only}");
        assert!((400..800).contains(&both), "{both}");
        assert!((250..550).contains(&undated), "{undated}");
        assert!(offset > 1_000, "{offset}");
        assert!((20..80).contains(&long), "{long}");
        let texts: String = messages.iter().filter_map(|m| m.text.as_deref()).collect();
        for needle in [
            "\r\n", "\t", "\"", "\\", "\u{200d}", "שלום", "你好", "\u{301}", "{\"id\"",
        ] {
            assert!(texts.contains(needle), "{needle:?}");
        }
        assert!(
            messages
                .iter()
                .filter_map(|m| m.text.as_deref())
                .all(|t| t.chars().count() <= 10_000)
        );
        assert_eq!(messages[0].sender_id, "2244994945");
        assert_eq!(messages[1].sender_id, "1612345678901234567");
    }

    #[test]
    fn generation_is_deterministic() {
        assert_eq!(thread(4).synthetic(77), thread(4).synthetic(77));
        assert_ne!(
            Thread::new(8, 4, "1", "2").synthetic(77).id,
            thread(4).synthetic(77).id
        );
    }
}
