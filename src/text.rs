/*!
Splitting long replies to fit a platform's message limit.

Platforms count length differently: Telegram in UTF-16 code units (an emoji outside the
Basic Multilingual Plane counts 2), IRC in bytes, most others in characters. [`split`]
cuts a text into chunks that each fit, preferring the places a reader would: a line
break, else a space, else anywhere, but never inside a character (so never between the
two halves of a UTF-16 surrogate pair or inside a UTF-8 sequence). A grapheme cluster
(a flag, a family emoji) may still be cut; platforms only reject broken code points.

Room is left for a later step that balances code fences across chunks and appends
`(i/n)` markers: such a step can call [`split`] with a smaller `max` and then decorate.
*/

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

impl Unit {
    /// The length of `c` in this unit.
    fn of(self, c: char) -> usize {
        match self {
            Unit::Chars => 1,
            Unit::Utf16 => c.len_utf16(),
            Unit::Bytes => c.len_utf8(),
        }
    }

    /// The length of `text` in this unit.
    pub fn len(self, text: &str) -> usize {
        match self {
            Unit::Chars => text.chars().count(),
            Unit::Utf16 => text.encode_utf16().count(),
            Unit::Bytes => text.len(),
        }
    }
}

/// The longest message a platform accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub max: usize,
    pub unit: Unit,
}

/// Split `text` into chunks that each fit `limit`.
///
/// - A text that fits is returned whole and unchanged.
/// - Otherwise each cut is made at the last line break in the second half of the room
///   left, else at the last whitespace, else at the last character that fits. The line
///   break or whitespace a cut is made at is dropped; all other whitespace, such as the
///   indentation of the next line, is kept.
/// - No chunk is empty or whitespace only: an empty or blank text yields **no chunks**,
///   since there is nothing to say and platforms (Telegram) reject empty messages.
/// - A `max` smaller than one character (0, or 1 for an emoji in UTF-16) cannot be
///   honoured; such a character then makes a chunk of its own rather than loop for ever.
pub fn split(text: &str, limit: Limit) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let fit = fitting_prefix(rest, limit);
        let (chunk, next) = if fit == rest.len() { (rest, "") } else { cut(rest, fit) };
        if !chunk.trim().is_empty() {
            chunks.push(chunk.to_string());
        }
        rest = next;
    }
    chunks
}

/// The byte length of the longest prefix of `text` that fits `limit`, on a character
/// boundary, and at least one character.
fn fitting_prefix(text: &str, limit: Limit) -> usize {
    let mut used = 0;
    for (i, c) in text.char_indices() {
        used += limit.unit.of(c);
        if used > limit.max {
            return if i == 0 { c.len_utf8() } else { i };
        }
    }
    text.len()
}

/// Split `text`, of which the first `fit` bytes fit, into (chunk, rest), dropping the
/// separator the cut is made at. The separator may be the character just past `fit`:
/// a chunk that fills the room exactly and is followed by a space needs no harder cut.
fn cut(text: &str, fit: usize) -> (&str, &str) {
    let next_len = text[fit..].chars().next().map_or(0, char::len_utf8);
    let window = &text[..fit + next_len];
    // A separator at index 0 would make an empty chunk; those are skipped by `find`.
    let newline = window.rmatch_indices('\n').map(|(i, _)| i).find(|&i| i > 0 && i >= fit / 2);
    let space = || window.char_indices().rev().find(|&(i, c)| i > 0 && c.is_whitespace()).map(|(i, _)| i);
    match newline.or_else(space) {
        Some(i) => {
            // `i` starts a whitespace character; skip exactly that one.
            let sep_len = text[i..].chars().next().map_or(0, char::len_utf8);
            (&text[..i], &text[i + sep_len..])
        }
        None => (&text[..fit], &text[fit..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(max: usize) -> Limit {
        Limit { max, unit: Unit::Chars }
    }

    fn utf16(max: usize) -> Limit {
        Limit { max, unit: Unit::Utf16 }
    }

    fn bytes(max: usize) -> Limit {
        Limit { max, unit: Unit::Bytes }
    }

    #[test]
    fn table() {
        let cases: &[(&str, Limit, &[&str])] = &[
            ("", chars(10), &[]),
            ("   \n ", chars(10), &[]),
            ("hello", chars(10), &["hello"]),
            ("hello", chars(5), &["hello"]),
            ("  keep  ", chars(10), &["  keep  "]),
            // Prefer the line break, dropping it.
            ("aaa bbb\nccc", chars(9), &["aaa bbb", "ccc"]),
            // A line break in the first half loses to a later space.
            ("a\nbbbb cccc", chars(8), &["a\nbbbb", "cccc"]),
            // The separator just past the room is used.
            ("aaaa bbbb", chars(4), &["aaaa", "bbbb"]),
            ("aaaa\nbbbb", chars(4), &["aaaa", "bbbb"]),
            // No separator: hard cut.
            ("abcdefghij", chars(4), &["abcd", "efgh", "ij"]),
            // Indentation of the next line survives; only the cut's line break goes.
            ("fn x() {\n    y\n}", chars(10), &["fn x() {", "    y\n}"]),
            // Blank chunks between separators are dropped.
            ("aaaa\n\n\n\nbbbb", chars(4), &["aaaa", "bbbb"]),
            // A leading separator never makes an empty chunk.
            ("\nabcdef", chars(3), &["\nab", "cde", "f"]),
            // Bytes: never inside a UTF-8 sequence (é is 2 bytes).
            ("ééé", bytes(3), &["é", "é", "é"]),
            ("aéé", bytes(4), &["aé", "é"]),
            // Chars count é once.
            ("ééé", chars(2), &["éé", "é"]),
            // UTF-16: an emoji is two units and is never halved.
            ("ab😀cd", utf16(3), &["ab", "😀c", "d"]),
            ("a😀", utf16(2), &["a", "😀"]),
            ("😀😀😀", utf16(4), &["😀😀", "😀"]),
            ("😀😀😀", utf16(5), &["😀😀", "😀"]),
            ("😀 😀", utf16(3), &["😀", "😀"]),
            // A limit below one character still makes progress.
            ("😀x", utf16(1), &["😀", "x"]),
            ("ab", chars(0), &["a", "b"]),
        ];
        for (text, limit, want) in cases {
            assert_eq!(split(text, *limit), *want, "split({text:?}, {limit:?})");
        }
    }

    #[test]
    fn every_chunk_fits_and_nothing_but_separators_is_lost() {
        let line = "the quick brown 🦊 jumps over the lazy 🐶, naïvely; ";
        let text: String = (0..200).map(|i| if i % 7 == 6 { format!("{line}\n") } else { line.to_string() }).collect();
        for limit in [utf16(4096), utf16(100), utf16(7), chars(50), bytes(64), bytes(5)] {
            let chunks = split(&text, limit);
            assert!(chunks.iter().all(|c| !c.trim().is_empty() && limit.unit.len(c) <= limit.max), "{limit:?}");
            let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            assert_eq!(squeeze(&chunks.concat()), squeeze(&text), "{limit:?}");
        }
    }

    #[test]
    fn telegram_sized_reply() {
        let text = "x".repeat(5000);
        let chunks = split(&text, utf16(4096));
        assert_eq!(chunks.iter().map(String::len).collect::<Vec<_>>(), [4096, 904]);
        // An emoji straddling the 4096th unit moves whole to the next chunk.
        let text = format!("{}😀{}", "x".repeat(4095), "y".repeat(10));
        let chunks = split(&text, utf16(4096));
        assert_eq!(chunks[0], "x".repeat(4095));
        assert!(chunks[1].starts_with('😀'));
    }
}
