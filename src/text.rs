//! INTERFACE STUB: splitting long replies to fit a platform's message limit.

/// How a platform counts the length of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Unicode scalar values.
    Chars,
    /// UTF-16 code units (Telegram).
    Utf16,
    /// UTF-8 bytes (IRC).
    Bytes,
}

/// The longest message a platform accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub max: usize,
    pub unit: Unit,
}

/// Split `text` into chunks that each fit `limit`, preferring line, then word boundaries.
pub fn split(text: &str, _limit: Limit) -> Vec<String> {
    vec![text.to_string()]
}
