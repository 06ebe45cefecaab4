/*!
Splitting long replies to fit a platform's message limit.

Platforms count length differently: Telegram in UTF-16 code units (an emoji outside the
Basic Multilingual Plane counts 2), IRC in bytes, most others in characters. [`split`]
cuts a text into chunks that each fit, following the reference gateway's rules
(`reference/hermes-gateway.md` §7.3), so a long reply reads the same as it does there:

- a text that fits is sent whole and unchanged;
- otherwise it is cut where a reader would: at a paragraph break, else a line break
  (either only in the second half of the room, so chunks stay reasonably full), else a
  space, else — a single word longer than the room — anywhere, but never inside a
  character (so never between the two halves of a UTF-16 surrogate pair);
- a cut never leaves inline code (`` `x` ``) open when a space before it allows;
- a code fence open at a cut is closed at the end of the chunk and reopened, with its
  language, at the start of the next, so every chunk renders on its own. Only three
  backticks that start a line of the text are a fence: a cut in the middle of a line may
  start a chunk with inline ```` ``` ````, which stays inline code. The reopened line and the
  closing fence never crowd out the text: a language longer than 32 characters or half the
  room (minified JSON glued to the fence is no language) is dropped, so the block reopens
  bare; and under about 26 units, where even that would leave too little room, blocks are
  not balanced at all and the text is cut as plain text;
- every chunk of a split text ends in ` (i/n)`, and room for it is reserved up front.

Splitting happens when a delivery is queued, not when it is sent, so each chunk is its own
outbox entry and a crash never sends chunk 1 of 3 twice. Edits are never split:
[`truncate`] shortens them instead.

A grapheme cluster (a flag, a family emoji) may still be cut; platforms only reject
broken code points. A limit smaller than the markers themselves (a dozen units) cannot be
honoured; chunks then exceed it rather than loop for ever.
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

/// Room kept free for the ` (i/n)` marker: enough for ` (999/999)`. [`split`] makes more
/// room when a text needs a thousand chunks or more.
const INDICATOR_RESERVE: usize = 10;

const FENCE: &str = "```";
/// What closes a code block at the end of a chunk; its room is always reserved.
const FENCE_CLOSE: &str = "\n```";
/// The longest language a reopened block keeps. Real ones are short words (`rust`,
/// `objective-c`); a longer "language" is text glued to the fence (minified JSON, say),
/// not worth repeating at the start of every chunk.
const MAX_LANGUAGE: usize = 32;
/// What ends a truncated edit.
const ELLIPSIS: &str = "…";

/// Split `text` into chunks that each fit `limit` (see the module doc for the rules).
///
/// An empty or blank text yields **no chunks**: there is nothing to say, and platforms
/// (Telegram) reject empty messages. No chunk is blank.
pub fn split(text: &str, limit: Limit) -> Vec<String> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    if limit.unit.len(text) <= limit.max {
        return vec![text.to_string()];
    }
    let mut reserve = INDICATOR_RESERVE;
    loop {
        let bodies = bodies(text, limit, reserve);
        let n = bodies.len();
        if n <= 1 {
            return bodies;
        }
        // The marker is ASCII, so its length is the same in every unit.
        let widest = indicator(n, n).len();
        if widest <= reserve {
            return bodies.into_iter().enumerate().map(|(i, body)| body + &indicator(i + 1, n)).collect();
        }
        // More chunks than the reserve has digits for: split again with more room kept.
        // The reserve only grows and the marker's width with it, so this ends.
        reserve = widest;
    }
}

/// `text` unchanged if it fits `limit`, else its longest prefix that fits with `…` after it.
/// For edits, which replace one message and so cannot become several.
pub fn truncate(text: &str, limit: Limit) -> String {
    if limit.unit.len(text) <= limit.max {
        return text.to_string();
    }
    let room = limit.max.saturating_sub(limit.unit.len(ELLIPSIS));
    let keep = fit(text, room, limit.unit);
    format!("{}{ELLIPSIS}", text[..keep].trim_end())
}

fn indicator(i: usize, n: usize) -> String {
    format!(" ({i}/{n})")
}

/// The chunks of `text` without their markers, each fitting `limit` with `reserve` units
/// to spare.
fn bodies(text: &str, limit: Limit, reserve: usize) -> Vec<String> {
    let unit = limit.unit;
    let blocks = Blocks::new(limit.max.saturating_sub(reserve), unit);
    let mut out = Vec::new();
    // Always a suffix of `text` (every cut below slices what it is given), which is how
    // [`starts_line`] knows whether a chunk starts a line of the original.
    let mut rest = text;
    // The language of the code block the previous chunk ended inside, if any.
    let mut open: Option<String> = None;
    while !rest.trim().is_empty() {
        let prefix = blocks.reopening(open.as_deref());
        let room = blocks.room.saturating_sub(unit.len(&prefix));
        if fit(rest, room, unit) == rest.len() {
            out.push(prefix + rest.trim_end());
            break;
        }
        let start = Start { open: open.take(), line: starts_line(text, rest) };
        let room = room.saturating_sub(unit.len(FENCE_CLOSE));
        let (piece, next) = cut_outside_inline_code(rest, room, unit, &start);
        let (piece, next) = before_trailing_fence(rest, piece, next, &start);
        open = markup(piece, &start).open;
        // Blank lines at a cut carry nothing; indentation after them does, so only line
        // breaks are dropped.
        rest = next.trim_start_matches(['\r', '\n']);
        let mut body = prefix + piece;
        let mut blank = piece.trim().is_empty();
        if open.is_some() && blocks.balance {
            body.push_str(FENCE_CLOSE);
            // When the block's own closing fence comes right after the cut, it is the one
            // just written: skip it rather than open an empty block in the next chunk.
            if let Some(after) = closing_fence_line(text, rest) {
                rest = after;
                open = None;
            }
            // A piece that is only the opening fence line would be an empty block, and the
            // next chunk starts with that very line anyway.
            let only_opening = start.open.is_none() && open.is_some();
            blank |= only_opening && piece.trim() == blocks.reopening(open.as_deref()).trim();
        }
        if !blank {
            out.push(body);
        }
    }
    out
}

/// How code blocks are carried across cuts, for chunks with `room` units for their body.
///
/// A reopening line takes at most half the room, and a bare one with its closing fence
/// too, so a chunk inside a block keeps at least a quarter of the room for the text (and
/// at least 4 units: any character fits). Every chunk fits and a text needs at most a few
/// times the chunks it would without code blocks, however long its fence lines. Where a
/// bare block would take more than half (a limit under about 26 units), blocks are not
/// balanced at all: the text is cut as plain text.
struct Blocks {
    room: usize,
    unit: Unit,
    /// Whether a block open at a cut is closed there and reopened in the next chunk.
    balance: bool,
}

impl Blocks {
    fn new(room: usize, unit: Unit) -> Blocks {
        let bare = unit.len(FENCE) + 1 + unit.len(FENCE_CLOSE);
        Blocks { room, unit, balance: bare <= room / 2 }
    }

    /// The line that starts a chunk continuing a block of language `open`: with that
    /// language when it is a plausible one ([`MAX_LANGUAGE`]) that takes at most half the
    /// room, else bare. Empty outside a block, or when blocks are not balanced.
    fn reopening(&self, open: Option<&str>) -> String {
        match open {
            Some(lang) if self.balance => {
                let line = format!("{FENCE}{lang}\n");
                let keep = lang.chars().count() <= MAX_LANGUAGE && self.unit.len(&line) <= self.room / 2;
                if keep { line } else { format!("{FENCE}\n") }
            }
            _ => String::new(),
        }
    }
}

/// Whether `rest`, a suffix of `text`, starts a line of `text` (possibly indented). A cut
/// in the middle of a line starts a chunk but no line: backticks there are inline code,
/// not a fence.
fn starts_line(text: &str, rest: &str) -> bool {
    let before = &text[..text.len() - rest.len()];
    // Stops at the first non-blank character, so this does not rescan a long line.
    before.chars().rev().take_while(|&c| c != '\n').all(char::is_whitespace)
}

/// [`cut`], moved back to a space before an inline code span the cut would leave open,
/// when that space is not too early (past a quarter of the room), as the reference does.
fn cut_outside_inline_code<'a>(text: &'a str, room: usize, unit: Unit, start: &Start) -> (&'a str, &'a str) {
    let (piece, next) = cut(text, room, unit);
    let Some(tick) = markup(piece, start).odd_backtick else { return (piece, next) };
    let space = text[..tick].char_indices().rev().find(|&(_, c)| c.is_whitespace()).map(|(i, _)| i);
    match space {
        Some(i) if unit.len(&text[..i]) > room / 4 => {
            let sep_len = text[i..].chars().next().map_or(0, char::len_utf8);
            (text[..i].trim_end(), &text[i + sep_len..])
        }
        _ => (piece, next),
    }
}

/// A piece whose last line opens a code block would end in an empty block: leave that
/// line to the next chunk, unless nothing comes before it.
fn before_trailing_fence<'a>(text: &'a str, piece: &'a str, next: &'a str, start: &Start) -> (&'a str, &'a str) {
    // A piece of one line has nothing before its last line.
    let Some(last) = piece.rfind('\n').map(|i| i + 1) else { return (piece, next) };
    let opens = piece[last..].trim_start().starts_with(FENCE) && markup(piece, start).open.is_some();
    if opens && !piece[..last].trim().is_empty() {
        // Pieces are prefixes of `text`, so `last` is a position in it too.
        (piece[..last].trim_end(), &text[last..])
    } else {
        (piece, next)
    }
}

/// Split `text`, which does not fit `room`, into (piece, rest): the piece fits (unless a
/// single character does not) and is not empty. The separator the cut is made at is
/// dropped, and so is whitespace at the end of the piece.
fn cut(text: &str, room: usize, unit: Unit) -> (&str, &str) {
    // At least one character, so that every cut makes progress.
    let fit = fit(text, room, unit).max(text.chars().next().map_or(0, char::len_utf8));
    if fit >= text.len() {
        return (text, "");
    }
    // The separator may be the character just past the room: a piece that fills the room
    // exactly and is followed by a space needs no harder cut.
    let next_len = text[fit..].chars().next().map_or(0, char::len_utf8);
    let window = &text[..fit + next_len];
    // A separator with only whitespace before it would make a blank piece.
    let useful = |i: usize| !window[..i].trim().is_empty();
    let late = |i: &usize| *i >= fit / 2 && useful(*i);
    let paragraph = window.rmatch_indices("\n\n").map(|(i, _)| i).find(late);
    let line = || window.rmatch_indices('\n').map(|(i, _)| i).find(late);
    let space = || window.char_indices().rev().find(|&(i, c)| c.is_whitespace() && useful(i)).map(|(i, _)| i);
    match paragraph.or_else(line).or_else(space) {
        Some(i) => {
            // `i` starts a whitespace character; skip exactly that one.
            let sep_len = text[i..].chars().next().map_or(0, char::len_utf8);
            (text[..i].trim_end(), &text[i + sep_len..])
        }
        None => (&text[..fit], &text[fit..]),
    }
}

/// The byte length of the longest prefix of `text` that fits `room`, on a character
/// boundary (possibly 0).
fn fit(text: &str, room: usize, unit: Unit) -> usize {
    let mut used = 0;
    for (i, c) in text.char_indices() {
        used += unit.of(c);
        if used > room {
            return i;
        }
    }
    text.len()
}

/// Where a piece of the text starts.
struct Start {
    /// The language of the code block it starts inside (`""` for none given), if any.
    open: Option<String>,
    /// Whether it starts a line of the original text, rather than after a cut mid-line.
    line: bool,
}

/// What a piece of Markdown leaves open at its end.
struct Markup {
    /// The language of the fenced code block the piece ends inside (`""` for none given).
    open: Option<String>,
    /// Where the last inline-code backtick is, when the piece leaves inline code open (an
    /// odd number of unescaped backticks outside code blocks).
    odd_backtick: Option<usize>,
}

/// Walk `piece` line by line from `start`. A line of the original text starting with
/// three backticks opens or closes a block (indented fences count, as in lists); the rest
/// of an opening line names the language. The first line of a piece that starts mid-line
/// is no such line, even though it starts a chunk.
fn markup(piece: &str, start: &Start) -> Markup {
    let mut open = start.open.clone();
    let (mut ticks, mut last, mut offset) = (0, None, 0);
    for line in piece.split_inclusive('\n') {
        let fence = line.trim_start().strip_prefix(FENCE).filter(|_| offset > 0 || start.line);
        if let Some(info) = fence {
            open = match open {
                Some(_) => None,
                None => Some(info.trim_start_matches('`').split_whitespace().next().unwrap_or("").to_string()),
            };
        } else if open.is_none() {
            let bytes = line.as_bytes();
            for (i, &b) in bytes.iter().enumerate() {
                if b == b'`' && (i == 0 || bytes[i - 1] != b'\\') {
                    ticks += 1;
                    last = Some(offset + i);
                }
            }
        }
        offset += line.len();
    }
    Markup { open, odd_backtick: if ticks % 2 == 1 { last } else { None } }
}

/// When `rest`, a suffix of `text`, starts with a bare closing fence line of `text`, what
/// comes after that line.
fn closing_fence_line<'a>(text: &str, rest: &'a str) -> Option<&'a str> {
    let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
    (line.trim() == FENCE && starts_line(text, rest)).then_some(after)
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

    /// Every chunk fits, and every chunk's fences are balanced.
    fn check(chunks: &[String], limit: Limit) {
        for c in chunks {
            assert!(limit.unit.len(c) <= limit.max, "{c:?} is over {limit:?}");
            assert!(!c.trim().is_empty());
            let fences = c.lines().filter(|l| l.trim_start().starts_with(FENCE)).count();
            assert_eq!(fences % 2, 0, "unbalanced fences in {c:?}");
        }
    }

    #[test]
    fn table() {
        let cases: &[(&str, Limit, &[&str])] = &[
            ("", chars(10), &[]),
            ("   \n ", chars(10), &[]),
            ("hello", chars(10), &["hello"]),
            // Exactly at the limit: whole, no marker.
            ("hello", chars(5), &["hello"]),
            ("  keep  ", chars(10), &["  keep  "]),
            // Room 18 - 10 (marker) = 8 for the last chunk, 4 less (a fence close) before it.
            ("aaaa bbbb cccc dddd", chars(18), &["aaaa (1/4)", "bbbb (2/4)", "cccc (3/4)", "dddd (4/4)"]),
            // A paragraph break beats a later line break or space.
            ("para one.\n\npara two is here", chars(26), &["para one. (1/2)", "para two is here (2/2)"]),
            // Else a line break in the second half of the room.
            ("line a\nline b and more words", chars(27), &["line a (1/3)", "line b and (2/3)", "more words (3/3)"]),
            // A line break in the first half loses to a later space.
            (
                "a\nbbbb cccc dddddddddddddd",
                chars(22),
                &["a\nbbbb (1/4)", "cccc (2/4)", "dddddddd (3/4)", "dddddd (4/4)"],
            ),
            // A single word longer than the room: hard cuts.
            (
                "abcdefghijklmnopqrstuvwxyz",
                chars(20),
                &["abcdef (1/4)", "ghijkl (2/4)", "mnopqr (3/4)", "stuvwxyz (4/4)"],
            ),
            // Blank lines at a cut are dropped; indentation is kept.
            ("first line\n\n\n\n    indented", chars(24), &["first line (1/2)", "    indented (2/2)"]),
            // Never a cut inside leading indentation, which would make a blank piece.
            ("    abcdefghijklmnopq", chars(20), &["    ab (1/3)", "cdefgh (2/3)", "ijklmnopq (3/3)"]),
            // UTF-16: an emoji is two units and is never halved (5 units of room before the
            // last chunk: two fit, the third waits).
            ("😀😀😀😀😀😀😀😀😀😀", utf16(19), &["😀😀 (1/4)", "😀😀 (2/4)", "😀😀 (3/4)", "😀😀😀😀 (4/4)"]),
            ("abcdef😀ghijklmnopqrst", utf16(21), &["abcdef (1/3)", "😀ghijk (2/3)", "lmnopqrst (3/3)"]),
            // Bytes: never inside a UTF-8 sequence (é is 2 bytes).
            ("éééééééééé", bytes(19), &["éé (1/4)", "éé (2/4)", "éé (3/4)", "éééé (4/4)"]),
        ];
        for (text, limit, want) in cases {
            let got = split(text, *limit);
            assert_eq!(got, *want, "split({text:?}, {limit:?})");
            check(&got, *limit);
        }
    }

    #[test]
    fn code_fences_are_closed_and_reopened_with_their_language() {
        let text = "Here:\n```rust\nlet a = 1;\nlet b = 2;\nlet c = 3;\nlet d = 4;\n```\nDone.";
        let got = split(text, chars(50));
        assert_eq!(
            got,
            ["Here:\n```rust\nlet a = 1;\nlet b = 2;\n``` (1/2)", "```rust\nlet c = 3;\nlet d = 4;\n```\nDone. (2/2)"]
        );
        check(&got, chars(50));
        // Narrower: one line per chunk, each block closed and reopened.
        let got = split(text, chars(40));
        assert_eq!(got[1], "```rust\nlet b = 2;\n``` (2/4)");
        check(&got, chars(40));
    }

    #[test]
    fn a_block_without_language_reopens_bare() {
        let text = format!("```\n{}\n```", ["x = 1"; 6].join("\n"));
        let got = split(&text, chars(30));
        check(&got, chars(30));
        assert!(got.len() > 1);
        assert!(got[1..].iter().all(|c| c.starts_with("```\nx = 1")), "{got:?}");
    }

    #[test]
    fn no_empty_blocks_at_cuts() {
        let text = "Intro\n```sh\nls -la\nls -lb\n```\nMore text after the block.";
        // The block would start empty at the end of chunk 1: it starts in chunk 2.
        let got = split(text, chars(26));
        assert_eq!(got[..3], ["Intro (1/5)", "```sh\nls -la\n``` (2/5)", "```sh\nls -lb\n``` (3/5)"]);
        // The block's own closing fence right after a cut is not reopened as an empty block.
        let got = split(text, chars(32));
        assert_eq!(got[1..3], ["```sh\nls -lb\n``` (2/4)", "More text after (3/4)"]);
    }

    #[test]
    fn inline_code_is_not_cut_open() {
        // The plain cut would fall inside `gh ij kl`; it moves back to the space before it.
        let got = split("abcd `gh ij kl` mnop qr", chars(22));
        // A span longer than the room has to be cut anyway.
        assert_eq!(got, ["abcd (1/3)", "`gh ij (2/3)", "kl` mnop qr (3/3)"]);
    }

    #[test]
    fn every_chunk_fits_and_nothing_but_separators_is_lost() {
        let line = "the quick brown 🦊 jumps over the lazy 🐶, naïvely; ";
        let mut text: String =
            (0..200).map(|i| if i % 7 == 6 { format!("{line}\n") } else { line.to_string() }).collect();
        text.push_str("\n```python\nprint('hi')\n```\n");
        for limit in [utf16(4096), utf16(100), chars(50), bytes(64)] {
            let chunks = split(&text, limit);
            check(&chunks, limit);
            let n = chunks.len();
            let strip = |i: usize, c: &str| c.strip_suffix(&indicator(i + 1, n)).map(str::to_string);
            let bodies: Vec<String> = chunks.iter().enumerate().map(|(i, c)| strip(i, c).expect("marker")).collect();
            let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            // Only whitespace and the added fences differ.
            let joined = squeeze(&bodies.concat()).replace("```python", "").replace("```", "");
            assert_eq!(joined, squeeze(&text).replace("```python", "").replace("```", ""), "{limit:?}");
        }
    }

    #[test]
    fn telegram_sized_reply() {
        let text = "x".repeat(5000);
        let chunks = split(&text, utf16(4096));
        let lens: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(lens, [4082 + 6, 918 + 6]);
        // An emoji straddling the room moves whole to the next chunk.
        let text = format!("{}😀{}", "x".repeat(4081), "y".repeat(100));
        let chunks = split(&text, utf16(4096));
        assert_eq!(chunks[0], format!("{} (1/2)", "x".repeat(4081)));
        assert!(chunks[1].starts_with('😀'));
        check(&chunks, utf16(4096));
    }

    #[test]
    fn a_thousand_chunks_get_room_for_wider_markers() {
        let text = "ab ".repeat(1200);
        let limit = chars(17);
        let chunks = split(&text, limit);
        assert!(chunks.len() >= 1000, "{}", chunks.len());
        check(&chunks, limit);
        assert!(chunks[0].ends_with(&format!(" (1/{})", chunks.len())));
    }

    #[test]
    fn tiny_limits_still_end() {
        let got = split("abc", chars(2));
        assert_eq!(got.len(), 3);
    }

    /// Every chunk fits `limit`, and no code block was balanced into a blow-up: at most a
    /// few chunks per room's worth of text.
    fn check_fit(text: &str, chunks: &[String], limit: Limit) {
        for c in chunks {
            assert!(limit.unit.len(c) <= limit.max, "{c:?} is over {limit:?}");
        }
        let room = limit.max - INDICATOR_RESERVE;
        let most = 8 * limit.unit.len(text) / room + 4;
        assert!(chunks.len() <= most, "{} chunks for {limit:?}: {chunks:?}", chunks.len());
    }

    #[test]
    fn a_fence_line_longer_than_the_room_is_not_repeated() {
        // Minified JSON right after the fence: its "language" is the whole 4.9 kB line. It
        // used to be reopened in every chunk, each over the limit (8,824 of them).
        let text = format!("```{}\n{}```\n", "{\"k\":1,".repeat(700), "line\n".repeat(2000));
        let got = split(&text, utf16(4096));
        check(&got, utf16(4096));
        assert!(got.len() <= 4, "{} chunks", got.len());
        assert!(got[1..].iter().all(|c| c.starts_with("```\n")), "reopened bare");
        // The same at a small limit, the fence line still longer than the room.
        let text = format!("```{}\n{}```\n", "{\"k\":1,".repeat(20), "line\n".repeat(30));
        let got = split(&text, chars(60));
        check(&got, chars(60));
        check_fit(&text, &got, chars(60));
    }

    #[test]
    fn a_long_language_is_dropped_when_reopening() {
        let lang = "x".repeat(MAX_LANGUAGE + 1);
        let text = format!("```{lang} y\n{}```", "line\n".repeat(40));
        let got = split(&text, chars(100));
        check(&got, chars(100));
        assert!(got[0].starts_with(&format!("```{lang} y\nline")), "{got:?}");
        assert!(got[1..].iter().all(|c| c.starts_with("```\nline")), "{got:?}");
        // A short one is kept, unless it would take more than half the room.
        let got = split(&format!("```rust\n{}```", "line\n".repeat(9)), chars(40));
        assert!(got[1].starts_with("```rust\n"), "{got:?}");
        let got = split(&format!("```typescript\n{}```", "line\n".repeat(9)), chars(34));
        assert!(got[1].starts_with("```\nline"), "{got:?}");
    }

    #[test]
    fn a_first_line_longer_than_the_room_does_not_make_an_empty_block() {
        let text = format!("```sh\n{}\n```", "x".repeat(50));
        let got = split(&text, chars(30));
        check(&got, chars(30));
        assert!(got.iter().all(|c| c.starts_with("```sh\nx")), "{got:?}");
    }

    #[test]
    fn tiny_limits_with_code_blocks_still_fit() {
        // Under 26 units a reopened block and its close would leave too little room: blocks
        // are then not balanced, but every chunk still fits.
        let text = "Intro text\n```rust\nlet x = 1; 😀😀\nlet y = 2;\n```\nOutro é ```";
        for max in 14..40 {
            for unit in [Unit::Chars, Unit::Utf16, Unit::Bytes] {
                let limit = Limit { max, unit };
                check_fit(text, &split(text, limit), limit);
            }
        }
    }

    #[test]
    fn inline_backticks_after_a_cut_are_not_a_fence() {
        // The cut before the second ```this``` put it at the start of chunk 2, where it was
        // read as a fence: a block was closed at each cut that the text never had.
        let text = "see ```this``` and ".repeat(10) + &"word ".repeat(30);
        let got = split(&text, chars(60));
        assert!(got.iter().all(|c| !c.contains("\n```")), "{got:#?}");
        // Inside a block, the same backticks do not close it: it is closed and reopened.
        let text = format!("```\n{}```", "a = ```b``` ".repeat(12));
        let got = split(&text, chars(40));
        assert!(got.len() > 2, "{got:?}");
        assert!(got.iter().all(|c| c.starts_with("```\n")), "{got:#?}");
        assert!(got[..got.len() - 1].iter().all(|c| c.contains("\n``` (")), "{got:#?}");
        // Nor is a literal ```rust there, cut mid-line, taken for the block's opening line.
        let line = format!("abcdefghijklmnop ```rust\n{}\n", "y".repeat(80));
        let text = format!("```rust\n{}```", line.repeat(3));
        let got = split(&text, chars(42));
        let n = got.len();
        let inner = |i: usize, c: &str| {
            let c = c.strip_suffix(&indicator(i + 1, n)).and_then(|c| c.strip_prefix("```rust\n")).expect("reopened");
            c.strip_suffix("\n```").expect("closed").to_string()
        };
        let inner: String = got.iter().enumerate().map(|(i, c)| inner(i, c)).collect();
        let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        assert_eq!(squeeze(&inner), squeeze(&line.repeat(3)), "{got:#?}");
    }

    #[test]
    fn awkward_texts_fit_at_every_limit() {
        let texts = [
            format!("```{}\n{}```\nafter", "{\"k\":1,".repeat(30), "line\n".repeat(30)),
            format!("```{} y\nabc\n```", "é".repeat(200)),
            format!("text\n```\n{}\n```", "😀".repeat(300)),
            format!("a\n{}```rust\n{}\n```", " ".repeat(40), "b ".repeat(100)),
            "x ```y``` ".repeat(60),
            format!("```\n{}```", "a = ```b``` ".repeat(30)),
        ];
        for text in &texts {
            for max in (14..=90).chain([300, 4096]) {
                for unit in [Unit::Chars, Unit::Utf16, Unit::Bytes] {
                    let limit = Limit { max, unit };
                    check_fit(text, &split(text, limit), limit);
                }
            }
        }
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate("short", chars(10)), "short");
        assert_eq!(truncate("hello world", chars(8)), "hello w…");
        assert_eq!(truncate("hello world", chars(7)), "hello…");
        assert_eq!(truncate("😀😀😀", utf16(4)), "😀…");
        assert_eq!(truncate("ééé", bytes(5)), "é…");
    }
}
