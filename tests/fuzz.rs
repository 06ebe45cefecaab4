/*!
Fuzz-style property tests: no parser or state-file loader panics on any input, and the
cheap invariants each one promises hold.

The issue asks for `cargo fuzz` targets, which need a nightly compiler; the project builds
on stable only and takes no new dependencies, so these are `cargo test` property tests
with a small seeded PRNG (splitmix64) instead. Each `#[test]` below is one target:

| target              | drives                                              | invariants beyond "no panic" |
|---------------------|-----------------------------------------------------|------------------------------|
| `config_parser`     | `config::parse_str`                                 | errors carry `file:` or `file:line:col:`, a real position, no secret from the env |
| `telegram_updates`  | the real Telegram adapter against the fake Bot API (`getUpdates` answers and the offset file) | the adapter keeps polling; a stored offset is the one it resumes at |
| `retry_after_values` | `net::http::parse_retry_after`, `retry_after`      | at most `net::MAX_SERVER_WAIT`; delay-seconds and dates give their exact (clamped) wait |
| `telegram_send_answers` | the real Telegram outlet's `send` against the fake Bot API: hostile `retry_after`, `migrate_to_chat_id`, `message_id`, `Retry-After` | a 429 is a clamped `RetryAfter`, exact where the body says; a new chat id is named; a sent id is read exactly or the outcome is unknown |
| `telegram_update_numbers` | the real adapter: hostile `update_id`, `message_id`, chat and user ids, `message_thread_id` | an update whose ids fit arrives with exactly those ids; one that does not fit never arrives; polling goes on |
| `openai_answers`    | the real `openai` agent against the fake server: hostile `usage` counts, `Retry-After` | token counts read exactly (0 when not a `u64`); a 429 stays a rate limit |
| `message_splitter`  | `text::split`, `text::truncate`                     | what `text.rs`'s doc promises (see [`check_split`]) |
| `delivery_targets`  | `delivery::parse_target`                            | `parse_target(t.to_string()) == t` for accepted targets |
| `chat_commands`     | `commands::parse`                                   | surrounding whitespace does not matter; `/queue` text is trimmed and non-empty |
| `inbox_loader`      | `Inbox::open` + `pending`                           | whole lines of a cut-short journal survive; reopening agrees; replays are still recognised |
| `session_loader`    | `SessionStore::open`, `get`, `history`, turns       | a turn after loading lands at the end of its transcript |
| `outbox_loader`     | `Outbox::open`, its workers, the parked listings    | every delivery is settled (sent or set aside) |
| `pairing_loader`    | `Pairing::list`, `is_approved`, a fresh pairing     | a new user can still be paired |
| `directory_loader`  | `Directory::load`, `observe`, `rebuild`             | the rebuilt file holds the chat just seen |
| `status_loader`     | `Status::read`, `render`, `write`                   | a status that was read can be written again |

Inputs come from three generators: random bytes; random UTF-8 biased to characters that
break parsers ([`SPICE`]: emoji, characters around the surrogate range, combining marks,
line breaks, backticks and fences, `:`, `"`, `$`, `{`, `}`); and mutations of valid seeds,
structure-aware where the format allows (TOML lines, JSON values) and byte-level
otherwise. The seeds are the shipped `gateway.toml`, the files in `tests/fuzz/` (add a
file there to add a seed), and state files written by the real code at the start of each
loader target, which are first truncated at every byte, then bit-flipped, spliced and
mutated.

Each target runs a fixed number of cases from a fixed seed, so `make test` is
deterministic and fast. `FUZZ_ITERATIONS=N` (random cases per target) and `FUZZ_SEED=S`
make longer or different runs:

```sh
FUZZ_ITERATIONS=20000 FUZZ_SEED=7 cargo test --release --test fuzz -- --nocapture
```

A case that panics, or breaks an invariant, fails its target with the input (shrunk when
it is text) and the command that reproduces it. Panics already reported are listed in
each target's `known` table and counted instead of failing the run, so the suite stays
green while they wait for a fix; each has an `#[ignore]`d regression test at the end of
this file that fails until it is fixed. State-file seeds hold timestamps and random ids,
so a failing state-file case prints the whole input rather than relying on the seed.
*/

mod support;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, bounded, unbounded};
use serde_json::{Value, json};
use switchboard::adapter::{Context, Stop};
use switchboard::agent::{self, AgentBackend, AgentConfig, AgentErrorKind, Cancel, OpenAiSettings, Turn};
use switchboard::auth::pairing::{Pairing, Request};
use switchboard::commands::{self, Command};
use switchboard::config::{self, Secret};
use switchboard::delivery::{self, DeliveryConfig, Outbox, parse_target};
use switchboard::directory::Directory;
use switchboard::inbox::{Accepted, Inbox};
use switchboard::message::{ChatMessage, ChatType, Inbound, Outbound, Role, Source};
use switchboard::net::{self, http};
use switchboard::platform::PlatformSpec;
use switchboard::platform::{Fatal, Outlet, SendError};
use switchboard::platforms::telegram::{TelegramSettings, TelegramSpec};
use switchboard::session::{self, ResetMode, SessionConfig, SessionStore, session_key};
use switchboard::status::{PlatformStatus, Status};
use switchboard::text::{self, Limit, Unit};

use support::fake_openai::{Answer, FakeOpenAi};
use support::fake_telegram::{FakeTelegram, Fault, TOKEN};

// =======================================================================================
// The runner

/// The seed of a default run. Any fixed value will do; this one is fixed so that
/// `make test` runs the same cases every time.
const DEFAULT_SEED: u64 = 0x5eed_5317_c4b0_a2d0;

/// splitmix64: tiny, fast, and good enough to pick inputs (no dependency needed).
struct Rng(u64);

impl Rng {
    /// The generator of case `index` of `target`: each case has its own stream, so one
    /// case can be replayed without running the ones before it.
    fn for_case(seed: u64, target: &str, index: usize) -> Rng {
        let name =
            target.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let mut rng = Rng(seed ^ name ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; `0` when `n` is 0.
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// [`Rng::pick`] for string tables, where inference cannot see through `push_str`.
    fn pick_str(&mut self, items: &[&'static str]) -> &'static str {
        items[self.below(items.len())]
    }

    /// A length up to `max`, mostly short: small inputs find most bugs, and a few long
    /// ones find the rest.
    fn len(&mut self, max: usize) -> usize {
        let cap = self.below(max + 1);
        self.below(cap + 1)
    }
}

/// How many random cases and which seed: fixed by default, `FUZZ_ITERATIONS` and
/// `FUZZ_SEED` for longer runs.
fn knobs(default_iterations: usize) -> (usize, u64) {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok());
    let iterations = var("FUZZ_ITERATIONS").map_or(default_iterations, |n| n as usize);
    (iterations, var("FUZZ_SEED").unwrap_or(DEFAULT_SEED))
}

/// A panic that has been reported and waits for a fix: cases whose panic message contains
/// `message` are counted, not failed. `test` is its `#[ignore]`d regression test.
struct Known {
    message: &'static str,
    test: &'static str,
}

/// An input that can say which smaller inputs to try when it fails.
trait Input: fmt::Debug {
    fn smaller(&self) -> Vec<Self>
    where
        Self: Sized,
    {
        Vec::new()
    }
}

impl Input for String {
    /// Without one of its halves, quarters … single characters.
    fn smaller(&self) -> Vec<String> {
        let chars: Vec<char> = self.chars().collect();
        let mut out = Vec::new();
        let mut size = chars.len() / 2;
        while size > 0 {
            for start in (0..chars.len()).step_by(size) {
                let end = (start + size).min(chars.len());
                out.push(chars[..start].iter().chain(&chars[end..]).collect());
            }
            size /= 2;
        }
        out
    }
}

/// One target's run: its name, how many cases it ran, and how many hit a known panic.
struct Run {
    target: &'static str,
    seed: u64,
    known: &'static [Known],
    started: Instant,
    cases: usize,
    known_hits: Vec<usize>,
}

impl Run {
    fn new(target: &'static str, seed: u64, known: &'static [Known]) -> Run {
        install_panic_hook();
        Run { target, seed, known, started: Instant::now(), cases: 0, known_hits: vec![0; known.len()] }
    }

    /// Run case `index`: generate its input, check it, and fail the target with a
    /// report if it panicked in a way not already known.
    fn case<T: Input>(&mut self, index: usize, make: impl FnOnce(&mut Rng) -> T, mut check: impl FnMut(&T)) {
        let mut rng = Rng::for_case(self.seed, self.target, index);
        let input = make(&mut rng);
        self.cases += 1;
        let Some(failure) = catch(&mut check, &input) else { return };
        if let Some(k) = self.known.iter().position(|k| failure.contains(k.message)) {
            self.known_hits[k] += 1;
            return;
        }
        let (input, failure) = shrink(input, failure, &mut check);
        let shown: String = format!("{input:#?}").chars().take(4000).collect();
        panic!(
            "fuzz target `{}` failed on case {index}:\n{failure}\ninput: {shown}\n\
             reproduce: FUZZ_SEED={} FUZZ_ITERATIONS={} cargo test --test fuzz {}",
            self.target,
            self.seed,
            index + 1,
            self.target
        );
    }

    /// Print the corpus size and time, as the issue asks (visible with `--nocapture`).
    fn finish(self, corpus: usize) {
        let known: Vec<String> = self
            .known
            .iter()
            .zip(&self.known_hits)
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{n} × known panic `{}` (see {})", k.message, k.test))
            .collect();
        let known = if known.is_empty() { String::new() } else { format!("; {}", known.join(", ")) };
        eprintln!(
            "fuzz {}: {} cases (corpus: {corpus} seed inputs), seed {:#x}, {:.2} s{known}",
            self.target,
            self.cases,
            self.seed,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// Run `check` on `input`; the panic's message and location if it panicked.
fn catch<T>(check: &mut impl FnMut(&T), input: &T) -> Option<String> {
    QUIET.with(|q| q.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(|| check(input)));
    QUIET.with(|q| q.set(false));
    let payload = result.err()?;
    let message = payload_text(&*payload);
    let here = thread::current().name().unwrap_or("").to_string();
    let location = take_panics(|t| t == here).pop().map_or(String::new(), |p| format!(" at {}", p.location));
    Some(format!("{message}{location}"))
}

/// Try smaller inputs while they still fail, a few hundred tries at most: enough to
/// turn a page of random text into the few characters that matter.
fn shrink<T: Input>(mut input: T, mut failure: String, check: &mut impl FnMut(&T)) -> (T, String) {
    let mut budget = 400;
    'outer: while budget > 0 {
        for candidate in input.smaller() {
            budget -= 1;
            if let Some(f) = catch(check, &candidate) {
                (input, failure) = (candidate, f);
                continue 'outer;
            }
            if budget == 0 {
                break;
            }
        }
        break;
    }
    (input, failure)
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".to_string(),
    }
}

// Panics on threads the code under test spawns (outbox workers, the Telegram adapter's
// I/O helper) do not reach `catch_unwind`: a hook records every panic with its thread and
// location, and the targets look for the ones on their threads.

struct PanicRecord {
    thread: String,
    message: String,
    location: String,
}

static PANICS: Mutex<Vec<PanicRecord>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while a case runs on this thread: its panics are reported by the runner, so
    /// the default hook need not print them (known ones would flood the output).
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Threads whose names contain this are spawned for fuzz cases; their panics are
/// collected and reported by the targets, not printed.
const FUZZ_THREAD_MARK: &str = "fz";

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let thread = thread::current().name().unwrap_or("").to_string();
            let location = info.location().map_or(String::new(), |l| format!("{}:{}", l.file(), l.line()));
            let message = payload_text(info.payload());
            let quiet = QUIET.with(|q| q.get()) || thread.contains(FUZZ_THREAD_MARK);
            PANICS.lock().unwrap_or_else(|e| e.into_inner()).push(PanicRecord { thread, message, location });
            if !quiet {
                default(info);
            }
        }));
    });
}

/// Remove and return the recorded panics of the threads `which` selects.
fn take_panics(which: impl Fn(&str) -> bool) -> Vec<PanicRecord> {
    let mut all = PANICS.lock().unwrap_or_else(|e| e.into_inner());
    let (taken, kept) = all.drain(..).partition(|p| which(&p.thread));
    *all = kept;
    taken
}

/// Re-raise, on the case's thread, a panic recorded on one of the code's own threads.
fn raise_thread_panics(thread_prefix: &str) {
    if let Some(p) = take_panics(|t| t.starts_with(thread_prefix)).into_iter().next() {
        panic!("thread `{}` panicked: {} at {}", p.thread, p.message, p.location);
    }
}

// =======================================================================================
// Generators

/// Characters and snippets that break parsers: line breaks, Markdown fences and inline
/// code, the config's `${VAR}` syntax, target quoting, emoji (2 UTF-16 units), a ZWJ
/// family and a flag (grapheme clusters), combining marks, the code points on either side
/// of the surrogate range, non-ASCII whitespace, bidi overrides, NUL.
#[rustfmt::skip] // A table reads better in a few lines than in a column.
const SPICE: &[&str] = &[
    "\n", "\n\n", "\r\n", "\r", "\t", " ", "  ", "`", "``", "```", "```rust\n", "\n```\n", "```\n", ":", "\"",
    "'", "$", "${", "}", "{", "$$", "${HOME}", "\\", "\\u0000", "/", "@", "#", "[", "]", "=", ",", ".", "..",
    "-", "_", "😀", "👨\u{200d}👩\u{200d}👧", "🇫🇷", "e\u{301}", "\u{301}", "\u{200d}", "\u{d7ff}", "\u{e000}",
    "\u{fffd}", "\u{feff}", "\u{ffff}", "\u{10000}", "\u{10ffff}", "\u{2028}", "\u{a0}", "\u{3000}", "\u{202e}",
    "\u{0}", "é", "ß", "İ", "ﬃ", " (1/2)", "origin", "0", "-1", "9223372036854775807", "null", "true",
];

/// Random text up to `max` characters, mixing plain words with [`SPICE`] and arbitrary
/// code points.
fn text(rng: &mut Rng, max: usize) -> String {
    let target = rng.len(max);
    let mut out = String::new();
    while out.chars().count() < target {
        match rng.below(10) {
            0..=4 => {
                let word_len = 1 + rng.below(8);
                out.extend((0..word_len).map(|_| char::from(b'a' + rng.below(26) as u8)));
            }
            5..=7 => out.push_str(rng.pick_str(SPICE)),
            8 => out.push(' '),
            _ => out.push(any_char(rng)),
        }
    }
    out
}

/// Any Unicode scalar value, half of the time from the planes where real text lives.
fn any_char(rng: &mut Rng) -> char {
    let limit = if rng.one_in(2) { 0x3_0000 } else { 0x11_0000 };
    loop {
        if let Some(c) = char::from_u32(rng.below(limit) as u32) {
            return c;
        }
    }
}

fn bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    let n = rng.len(max);
    (0..n).map(|_| rng.next() as u8).collect()
}

/// Numbers at the edges of every integer type the code reads, and floats JSON allows.
fn boundary_number(rng: &mut Rng) -> Value {
    let numbers = [
        json!(0),
        json!(1),
        json!(-1),
        json!(255),
        json!(65_536),
        json!(u32::MAX),
        json!(u64::from(u32::MAX) + 1),
        json!(i32::MIN),
        json!(i64::MAX),
        json!(i64::MAX - 1),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(1e308),
        json!(-1e308),
        json!(0.5),
        json!(-0.0),
        json!(1e-300),
        json!(1_700_000_000),
    ];
    rng.pick(&numbers).clone()
}

/// A value for a structure-aware JSON mutation: an edge number, another type, or text.
fn boundary_value(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0..=2 => boundary_number(rng),
        3 => Value::String(text(rng, 40)),
        4 => Value::String(
            rng.pick(&["", "0", "-1", "../x", "a/b", ".", "NaN", "private", "channel", "user"]).to_string(),
        ),
        5 => Value::String("x".repeat(3000)),
        6 => rng.pick(&[Value::Null, json!(true), json!(false)]).clone(),
        _ => rng.pick(&[json!([]), json!({}), json!([null]), json!({"": ""})]).clone(),
    }
}

/// JSON pointers to every node of `v` (the root is `""`).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                pointers(child, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// Change one node of `v`: replace it, drop or add a field, duplicate or drop an element,
/// or rewrite a string. Keeps the document JSON, so the parser gets past the syntax and
/// the loader's own reading of the fields is what is tested.
fn mutate_json(rng: &mut Rng, v: &mut Value) {
    let mut all = Vec::new();
    pointers(v, String::new(), &mut all);
    let at = rng.pick(&all).clone();
    // `at` was taken from `v` just now, so it points at a node.
    let node = v.pointer_mut(&at).expect("pointer from pointers()");
    match (rng.below(5), node) {
        (0, Value::Object(map)) if !map.is_empty() => {
            let key = map.keys().nth(rng.below(map.len())).cloned().unwrap_or_default();
            map.remove(&key);
        }
        (1, Value::Object(map)) => {
            map.insert(text(rng, 12), boundary_value(rng));
        }
        (0, Value::Array(items)) if !items.is_empty() => {
            items.remove(rng.below(items.len()));
        }
        (1, Value::Array(items)) if !items.is_empty() => {
            let copy = items[rng.below(items.len())].clone();
            items.push(copy);
        }
        (2, Value::String(s)) => *s = text(rng, 30),
        (_, node) => *node = boundary_value(rng),
    }
}

/// 1–4 byte-level changes: truncate, flip a bit, drop or repeat a range, insert a
/// [`SPICE`] snippet, or splice in a piece of another seed.
fn mutate_bytes(rng: &mut Rng, data: &[u8], others: &[&[u8]]) -> Vec<u8> {
    let mut out = data.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        let end = (at + 1 + rng.below(16)).min(out.len());
        match rng.below(7) {
            0 => out.truncate(at),
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            2 => drop(out.drain(at..end)),
            3 => {
                let piece = out[at..end].to_vec();
                out.splice(at..at, piece);
            }
            4 => drop(out.splice(at..at, rng.pick(SPICE).bytes())),
            5 if !others.is_empty() => {
                let other = rng.pick(others);
                let from = rng.below(other.len() + 1);
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            _ if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            _ => {}
        }
    }
    out
}

/// The files under `tests/fuzz/<dir>`, sorted: the checked-in seeds of a target.
fn corpus(dir: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz").join(dir);
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir).expect("tests/fuzz corpus").flatten().map(|e| e.path()).collect();
    paths.sort();
    paths.iter().map(|p| fs::read_to_string(p).expect("a UTF-8 seed")).collect()
}

/// A scratch directory on tmpfs when there is one: the loaders fsync every write, and
/// thousands of cases on a real disk would blow the time budget.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    dir.expect("a temporary directory")
}

// =======================================================================================
// Config parser

const CONFIG_KNOWN: &[Known] = &[];

/// Values a mutation puts after `key =`: every TOML type, edge numbers, durations that
/// overflow, and `${VAR}` forms (set, unset, empty, malformed).
#[rustfmt::skip] // A table reads better in a few lines than in a column.
const TOML_VALUES: &[&str] = &[
    "\"${TELEGRAM_BOT_TOKEN}\"", "\"${OPENAI_API_KEY}\"", "\"x${OPENAI_API_KEY}y\"", "\"${UNSET_VAR}\"",
    "\"${EMPTY_VAR}\"", "\"${HOME}\"", "\"$${X}\"", "\"${\"", "\"${1BAD}\"", "\"${}\"", "\"\"", "\" \"", "0",
    "-1", "4294967296", "9223372036854775807", "-9223372036854775808", "1.5", "nan", "-inf", "1e400", "true",
    "[]", "[\"a\", 1]", "[[]]", "{}", "{ a = 1 }", "\"0s\"", "\"1ms\"", "\"99999999999999999999h\"",
    "\"18446744073709551615ms\"", "\"30\"", "\"5 m\"", "\"http://x\"", "\"ftp://x\"", "0x10", "0o7", "0b1",
    "1_000", "'literal'", "\"\"\"multi\nline\"\"\"", "1979-05-27T07:32:00Z",
];

/// Lines a mutation inserts: headers of every kind, a second bot, array tables.
#[rustfmt::skip] // A table reads better in a few lines than in a column.
const TOML_LINES: &[&str] = &[
    "[gateway]", "[platforms.tg2]\nkind = \"telegram\"\ntoken = \"${TELEGRAM_BOT_TOKEN}\"",
    "[platforms.Bad.Name]", "[platforms.\"a b\"]", "[[platforms]]", "[platforms.console.extra]",
    "platforms = 1", "[agent]\nbackend = \"openai\"", "[unknown]", "enabled = false", "kind = \"telegram\"",
    "kind = \"telegarm\"", "token = \"${TELEGRAM_BOT_TOKEN}\"",
];

/// One structure-aware change to a TOML text: a value, a key, a header, a line.
fn mutate_toml_line(rng: &mut Rng, text_in: &str) -> String {
    let mut lines: Vec<String> = text_in.lines().map(str::to_string).collect();
    let i = rng.below(lines.len());
    match rng.below(7) {
        0 | 1 if !lines.is_empty() => {
            if let Some((key, _)) = lines[i].split_once('=') {
                let value =
                    if rng.one_in(4) { format!("{:?}", text(rng, 20)) } else { rng.pick(TOML_VALUES).to_string() };
                lines[i] = format!("{key}= {value}");
            }
        }
        2 if !lines.is_empty() => {
            // A typo in a key: two neighbouring characters swapped.
            let mut chars: Vec<char> = lines[i].chars().collect();
            if chars.len() > 2 {
                let j = rng.below(chars.len() - 1);
                chars.swap(j, j + 1);
            }
            lines[i] = chars.into_iter().collect();
        }
        3 if !lines.is_empty() => drop(lines.remove(i)),
        4 if !lines.is_empty() => {
            let copy = lines[i].clone();
            lines.insert(rng.below(lines.len() + 1), copy);
        }
        5 => lines.insert(i, rng.pick(TOML_LINES).to_string()),
        _ => lines.insert(i, text(rng, 30)),
    }
    let mut out = lines.join("\n");
    if rng.one_in(2) {
        out.push('\n');
    }
    out
}

fn config_case(rng: &mut Rng, seeds: &[String]) -> String {
    match rng.below(8) {
        0 => String::from_utf8_lossy(&bytes(rng, 400)).into_owned(),
        1 => text(rng, 400),
        _ => {
            let mut out = rng.pick(seeds).clone();
            for _ in 0..1 + rng.below(4) {
                out = mutate_toml_line(rng, &out);
            }
            if rng.one_in(4) {
                let others: Vec<&[u8]> = seeds.iter().map(|s| s.as_bytes()).collect();
                out = String::from_utf8_lossy(&mutate_bytes(rng, out.as_bytes(), &others)).into_owned();
            }
            out
        }
    }
}

/// A fake environment in which every variable holds a recognisable secret, except
/// `HOME` (the lock directory's default), `UNSET_*` and `EMPTY_*`.
fn fake_env(name: &str) -> Option<String> {
    match name {
        "HOME" => Some("/home/fuzz".to_string()),
        "SWITCHBOARD_LOCK_DIR" | "XDG_STATE_HOME" => None,
        n if n.starts_with("UNSET") => None,
        n if n.starts_with("EMPTY") => Some(String::new()),
        n => Some(format!("s3cr3t-{n}-Zq")),
    }
}

/// What every config error must look like: the file label first, a position that exists
/// in the text, and no value of the environment.
fn check_config(text: &str) {
    let label = "fuzz.toml";
    let Err(errors) = config::parse_str(text, Path::new(label), &fake_env) else { return };
    assert!(!errors.0.is_empty(), "an Err without errors");
    let lines: Vec<&str> = text.split('\n').collect();
    for e in &errors.0 {
        let shown = e.to_string();
        assert_eq!(e.file, label, "{shown}");
        assert!(shown.starts_with(&format!("{label}:")), "no file prefix: {shown}");
        if let Some((line, column)) = e.position {
            let here = lines.get(line.wrapping_sub(1)).unwrap_or_else(|| panic!("no line {line}: {shown}"));
            let width = here.chars().count() + 1;
            assert!(column >= 1 && column <= width, "column {column} of a {width}-wide line: {shown}");
            assert!(shown.starts_with(&format!("{label}:{line}:{column}:")), "{shown}");
        }
        assert!(!shown.contains("s3cr3t-"), "an env value in a config error: {shown}");
    }
}

#[test]
fn config_parser() {
    let mut seeds = corpus("config");
    seeds.push(config::DEFAULT_CONFIG.to_string());
    for seed in &seeds {
        // A seed that does not load would only exercise the error path.
        config::parse_str(seed, Path::new("seed.toml"), &fake_env).unwrap_or_else(|e| panic!("a seed fails: {e}"));
    }
    let (iterations, seed) = knobs(3000);
    let mut run = Run::new("config_parser", seed, CONFIG_KNOWN);
    for i in 0..iterations {
        run.case(i, |rng| config_case(rng, &seeds), |t: &String| check_config(t));
    }
    run.finish(seeds.len());
}

// =======================================================================================
// Telegram update parser, through the real adapter

/// The adapter's instance name; its I/O threads are `adapter-fztg-io`.
const TG_NAME: &str = "fztg";

const TELEGRAM_KNOWN: &[Known] = &[];

#[derive(Debug)]
enum TgCase {
    /// Restart the adapter with this offset file.
    Cursor(Vec<u8>),
    /// Answer the next `getUpdates` calls with these (status, body) pairs, then with an
    /// update of the second id.
    Answers(Vec<(u16, String)>, i64),
}

impl Input for TgCase {}

/// A fake Bot API and an adapter polling it, restarted when a case ends it.
struct TgRig {
    fake: FakeTelegram,
    dir: tempfile::TempDir,
    live: Option<Live>,
}

struct Live {
    stop: Stop,
    done: Receiver<thread::Result<Result<(), Fatal>>>,
    inbound: Receiver<Accepted>,
}

impl Live {
    fn stop_and_wait(self) {
        drop(self.stop);
        let _ = self.done.recv_timeout(Duration::from_secs(5));
    }
}

/// Ids at which this target's updates start: above the fake's own ids (its wake-up
/// messages), so each batch moves the offset on.
const TG_FIRST_ID: i64 = 1_000_000;

/// Update ids each case may use.
const TG_IDS_PER_CASE: i64 = 16;

impl TgRig {
    fn new() -> TgRig {
        TgRig { fake: FakeTelegram::start(TOKEN), dir: scratch(), live: None }
    }

    fn cursor(&self) -> PathBuf {
        self.dir.path().join("cursors").join(format!("telegram-{TG_NAME}.offset"))
    }

    /// Network retries unlimited and without waits: a malformed answer or a 5xx is
    /// retried at once, so one adapter lives through any number of them. The 1 s long
    /// poll is only held until a case pushes its wake-up message.
    fn settings(&self) -> TelegramSettings {
        TelegramSettings {
            api_base: self.fake.url(),
            poll_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            allowed_updates: vec!["message".into(), "channel_post".into()],
            network_retries: u32::MAX,
            network_retry_wait: Duration::ZERO,
            ..TelegramSettings::new(Secret::new(TOKEN))
        }
    }

    /// Connect a new adapter to `fake` and run it on its own thread, catching its panic.
    fn start_on(&self, fake: &FakeTelegram) -> Result<Live, Fatal> {
        let (tx, inbound) = unbounded();
        let (ctx, stop) = Context::new(TG_NAME, self.dir.path().to_path_buf(), tx);
        let settings = TelegramSettings { api_base: fake.url(), ..self.settings() };
        let mut platform = TelegramSpec::new(settings).build();
        platform.connect(&ctx)?;
        let (done_tx, done) = bounded(1);
        thread::Builder::new()
            .name(format!("{TG_NAME}-run"))
            .spawn(move || {
                let _ = done_tx.send(panic::catch_unwind(AssertUnwindSafe(|| platform.run(&ctx))));
            })
            .expect("spawn the adapter");
        Ok(Live { stop, done, inbound })
    }

    fn stop(&mut self) {
        if let Some(live) = self.live.take() {
            live.stop_and_wait();
        }
    }

    /// A fresh adapter with no offset file, unless one is running and its offset is
    /// still below this target's ids (an edge-valued id pushes it past them).
    fn ensure_live(&mut self) {
        let stored = fs::read_to_string(self.cursor()).ok().and_then(|t| t.trim().parse::<i64>().ok());
        if self.live.is_some() && stored.is_none_or(|o| o < TG_FIRST_ID * 1_000) {
            return;
        }
        self.stop();
        let _ = fs::remove_file(self.cursor());
        // A fresh fake too: the old one remembers the offsets the old adapter polled
        // with, which a wait for the next case's offset would take for progress.
        self.fake = FakeTelegram::start(TOKEN);
        let live = self.start_on(&self.fake).unwrap_or_else(|f| panic!("a clean adapter does not connect: {f:?}"));
        self.live = Some(live);
    }

    fn check(&mut self, case: &TgCase) {
        match case {
            TgCase::Cursor(bytes) => self.check_cursor(bytes),
            TgCase::Answers(answers, sentinel) => drop(self.check_answers(answers, *sentinel)),
        }
    }

    /// A stored offset is resumed at exactly; an unreadable one is ignored (not UTF-8:
    /// a retryable state error). Never a panic. A fake of its own, so that no poll of
    /// the previous adapter can be taken for the first poll of this one.
    fn check_cursor(&mut self, bytes: &[u8]) {
        self.stop();
        fs::create_dir_all(self.cursor().parent().expect("cursor dir")).expect("create cursors/");
        fs::write(self.cursor(), bytes).expect("write the offset file");
        let fake = FakeTelegram::start(TOKEN);
        match self.start_on(&fake) {
            Ok(live) => {
                let polled = fake.wait_count("getUpdates", 1, support::deadline(Duration::from_secs(5)));
                live.stop_and_wait();
                assert!(polled >= 1, "no getUpdates after connecting");
                let first = &fake.calls("getUpdates")[0].params;
                let want = std::str::from_utf8(bytes).ok().and_then(|t| t.trim().parse::<i64>().ok());
                assert_eq!(first.get("offset").and_then(Value::as_i64), want, "resumed at the wrong offset");
            }
            Err(fatal) => {
                assert!(std::str::from_utf8(bytes).is_err(), "a UTF-8 offset file fails the connect: {fatal:?}");
                assert_eq!(fatal.code, "telegram_state_error");
            }
        }
        let _ = fs::remove_file(self.cursor());
        raise_thread_panics(&format!("adapter-{TG_NAME}"));
    }

    /// Serve `answers` to the next polls, then a sentinel update with id `sentinel`;
    /// wake the held poll, and wait until a poll asks for the offset past the sentinel:
    /// every answer before it was handled, and the adapter is still alive. Returns what
    /// the adapter delivered meanwhile.
    fn check_answers(&mut self, answers: &[(u16, String)], sentinel: i64) -> Vec<Accepted> {
        self.ensure_live();
        let last = json!({"ok": true, "result": [{"update_id": sentinel, "message": {"message_id": 1, "chat": {"id": 1, "type": "private"}, "text": "sentinel"}}]});
        for (status, body) in answers.iter().cloned().chain([(200, last.to_string())]) {
            self.fake.inject("getUpdates", Fault::Raw(status, body), 1);
        }
        self.fake.push_text(1, 1, "wake up");
        let live = self.live.as_ref().expect("ensure_live started one");
        let deadline = support::deadline(Duration::from_secs(10));
        let mut ended = None;
        let mut reached = false;
        while !reached && ended.is_none() && Instant::now() < deadline {
            let slice = support::deadline(Duration::from_millis(20)).min(deadline);
            reached = self.fake.wait_offset(sentinel + 1, slice).is_some_and(|o| o > sentinel);
            ended = live.done.try_recv().ok();
        }
        let delivered: Vec<Accepted> = live.inbound.try_iter().collect();
        if let Some(end) = ended {
            self.live = None;
            if let Err(payload) = end {
                let at = take_panics(|t| t == format!("{TG_NAME}-run")).pop().map(|p| p.location).unwrap_or_default();
                panic!("the adapter panicked: {} at {at}", payload_text(&*payload));
            }
            raise_thread_panics(&format!("adapter-{TG_NAME}"));
            panic!("the adapter ended: {end:?}");
        }
        raise_thread_panics(&format!("adapter-{TG_NAME}"));
        assert!(reached, "the adapter stopped polling before the sentinel {sentinel}");
        for a in &delivered {
            assert_eq!(a.msg.source.platform, TG_NAME);
        }
        delivered
    }
}

/// One `getUpdates` answer: mostly a valid envelope of mutated seed updates, sometimes a
/// mutated envelope, broken bytes or noise; mostly 200, sometimes a 5xx.
fn tg_answer(rng: &mut Rng, seeds: &[Value], next_id: &mut i64) -> (u16, String) {
    let status = if rng.one_in(10) { *rng.pick(&[500, 502, 503, 504]) } else { 200 };
    let updates: Vec<Value> = (0..rng.below(4))
        .map(|_| {
            let mut u = rng.pick(seeds).clone();
            u["update_id"] = json!(*next_id);
            *next_id += 1;
            for _ in 0..rng.below(4) {
                mutate_json(rng, &mut u);
            }
            u
        })
        .collect();
    let mut envelope = json!({ "ok": true, "result": updates });
    let body = match rng.below(10) {
        0 => {
            mutate_json(rng, &mut envelope);
            envelope.to_string()
        }
        1 => String::from_utf8_lossy(&mutate_bytes(rng, envelope.to_string().as_bytes(), &[])).into_owned(),
        2 => text(rng, 200),
        _ => envelope.to_string(),
    };
    (status, body)
}

/// The contents of an offset file: numbers at the edges, with whitespace, or junk.
fn tg_cursor(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => bytes(rng, 24),
        1 => text(rng, 24).into_bytes(),
        _ => {
            let n = boundary_number(rng);
            let pad = |rng: &mut Rng| rng.pick(&["", " ", "\n", "\t", "\u{a0}", "+", "0"]).to_string();
            format!("{}{n}{}", pad(rng), pad(rng)).into_bytes()
        }
    }
}

#[test]
fn telegram_updates() {
    let seeds: Vec<Value> = corpus("telegram")
        .iter()
        .flat_map(|s| match serde_json::from_str::<Value>(s).expect("a JSON seed") {
            Value::Array(items) => items,
            one => vec![one],
        })
        .collect();
    let (iterations, seed) = knobs(150);
    let mut run = Run::new("telegram_updates", seed, TELEGRAM_KNOWN);
    let rig = RefCell::new(TgRig::new());
    for i in 0..iterations {
        let make = |rng: &mut Rng| {
            if rng.one_in(8) {
                return TgCase::Cursor(tg_cursor(rng));
            }
            // Up to 3 answers of up to 3 updates: ids base..base + 9, the sentinel after them.
            let base = TG_FIRST_ID + (i as i64) * TG_IDS_PER_CASE;
            let mut next_id = base;
            let answers = (0..1 + rng.below(3)).map(|_| tg_answer(rng, &seeds, &mut next_id)).collect();
            TgCase::Answers(answers, base + TG_IDS_PER_CASE - 1)
        };
        run.case(i, make, |c: &TgCase| rig.borrow_mut().check(c));
    }
    rig.borrow_mut().stop();
    run.finish(seeds.len());
}

// =======================================================================================
// Message splitter

#[derive(Debug)]
struct SplitCase {
    text: String,
    limit: Limit,
}

impl Input for SplitCase {
    fn smaller(&self) -> Vec<SplitCase> {
        self.text.smaller().into_iter().map(|text| SplitCase { text, limit: self.limit }).collect()
    }
}

/// Markdown-heavy text: paragraphs, fences with and without a language, inline code,
/// long words, all over [`SPICE`].
fn split_text(rng: &mut Rng) -> String {
    let mut out = String::new();
    let pieces = if rng.one_in(10) { 400 } else { 40 };
    for _ in 0..rng.len(pieces) {
        match rng.below(8) {
            0 => out.push_str(rng.pick_str(&["\n```\n", "\n```rust\n", "```py  x\n", "\n    ```\n", "\n\n", "\n"])),
            1 => out.push_str(&"w".repeat(rng.below(60))),
            2 => out.push_str(&format!("`{}`", text(rng, 8))),
            3 => out.push_str(&"😀".repeat(rng.below(20))),
            _ => {
                out.push_str(&text(rng, 12));
                out.push(' ');
            }
        }
    }
    out
}

fn split_case(rng: &mut Rng) -> SplitCase {
    let unit = *rng.pick(&[Unit::Chars, Unit::Utf16, Unit::Bytes]);
    let max = match rng.below(10) {
        0 => rng.below(14),
        1 => 4096,
        _ => 14 + rng.below(300),
    };
    let text = if rng.one_in(5) { text(rng, 300) } else { split_text(rng) };
    SplitCase { text, limit: Limit { max, unit } }
}

fn squeeze(s: &str) -> Vec<char> {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Whether `small` is `big` with some characters left out (order kept).
fn is_subsequence(small: &[char], big: &[char]) -> bool {
    let mut rest = big.iter();
    small.iter().all(|c| rest.any(|b| b == c))
}

const SPLIT_KNOWN: &[Known] = &[];

/// What `text.rs` promises: a blank text gives no chunks; a text that fits is sent whole;
/// no chunk is blank; with several, chunk i ends in ` (i/n)`; each chunk fits the limit
/// once the limit leaves room for the markers (see [`check_fit`]); and, markers and the
/// fences of code blocks aside, no non-whitespace character is lost or reordered.
fn check_split(case: &SplitCase) {
    let (text, limit) = (&case.text, case.limit);
    let chunks = text::split(text, limit);
    if text.trim().is_empty() {
        assert!(chunks.is_empty(), "a blank text gave chunks: {chunks:?}");
        return;
    }
    if limit.unit.len(text) <= limit.max {
        assert_eq!(chunks, std::slice::from_ref(text), "a text that fits was changed");
        return;
    }
    assert!(!chunks.is_empty(), "a non-blank text gave no chunks");
    let n = chunks.len();
    let mut bodies = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        assert!(!chunk.trim().is_empty(), "blank chunk {i}: {chunks:?}");
        let marker = if n > 1 { format!(" ({}/{n})", i + 1) } else { String::new() };
        let body = chunk.strip_suffix(&marker).unwrap_or_else(|| panic!("chunk {i} lacks {marker:?}: {chunk:?}"));
        bodies.push(body);
    }
    check_fit(limit, &chunks);
    check_content(text, &bodies);
}

/// Every chunk fits, unless the limit is smaller than the markers themselves: the
/// ` (n/n)`, a fence closed at the cut, and one character that cannot be cut (the
/// doc's "a dozen units").
fn check_fit(limit: Limit, chunks: &[String]) {
    let n = chunks.len();
    let markers = format!(" ({n}/{n})").len() + "\n```".len() + 4;
    if limit.max < markers {
        return;
    }
    let Some(over) = chunks.iter().find(|c| limit.unit.len(c) > limit.max) else { return };
    let first_line = over.split('\n').next().unwrap_or("");
    if over.starts_with("```") && limit.unit.len(first_line) + 1 + markers > limit.max {
        panic!("known gap: a reopened fence line fills the room: {over:?} is over {limit:?}");
    }
    panic!("{over:?} is over {limit:?}");
}

/// Without code blocks, the chunks hold the text's non-whitespace characters exactly;
/// with them, those characters in order plus at most the closed and reopened fences.
fn check_content(text: &str, bodies: &[&str]) {
    let (original, joined) = (squeeze(text), squeeze(&bodies.concat()));
    assert!(is_subsequence(&original, &joined), "content lost or reordered: {bodies:?}");
    let has_blocks = text.split('\n').any(|l| l.trim_start().starts_with("```"));
    if !has_blocks && joined != original {
        if text.contains("```") {
            panic!("known gap: inline ``` read as a fence after a cut: {bodies:?}");
        }
        panic!("fences added to a text without code blocks: {bodies:?}");
    }
    // What may be added: a closing fence per chunk and each reopened fence line.
    let reopened: usize =
        bodies.iter().filter(|b| b.starts_with("```")).map(|b| squeeze(b.split('\n').next().unwrap_or("")).len()).sum();
    assert!(joined.len() <= original.len() + reopened + 3 * bodies.len(), "more was added than fences: {bodies:?}");
}

/// `truncate`: unchanged when it fits; else a prefix of the text and `…`, within the
/// limit when the limit has room for the `…`.
fn check_truncate(case: &SplitCase) {
    let (text, limit) = (&case.text, case.limit);
    let short = text::truncate(text, limit);
    if limit.unit.len(text) <= limit.max {
        assert_eq!(&short, text);
        return;
    }
    let kept = short.strip_suffix('…').unwrap_or_else(|| panic!("no ellipsis: {short:?}"));
    assert!(text.starts_with(kept), "not a prefix: {short:?}");
    if limit.max >= limit.unit.len("…") {
        assert!(limit.unit.len(&short) <= limit.max, "{short:?} is over {limit:?}");
    }
}

#[test]
fn message_splitter() {
    let (iterations, seed) = knobs(2500);
    let mut run = Run::new("message_splitter", seed, SPLIT_KNOWN);
    for i in 0..iterations {
        run.case(i, split_case, |c: &SplitCase| {
            check_split(c);
            check_truncate(c);
        });
    }
    run.finish(0);
}

// =======================================================================================
// Delivery targets and chat commands

const TARGET_KNOWN: &[Known] = &[];

/// Pieces of targets: names in both cases, separators, quotes, whitespace (ASCII and
/// not), and ids of several platforms.
#[rustfmt::skip] // A table reads better in a few lines than in a column.
const TARGET_PARTS: &[&str] = &[
    "tg", "TG", "Telegram", "origin", "ORIGIN", "a-b_1", ":", ":", "\"", "\"", " ", "\t", "\u{a0}", "!room",
    "example.org", "$ev", "123", "-100", "é", "😀", "::", "\"\"", "x\"y",
];

/// Half of the cases have the shape `NAME:ID[:ID]` with bare or quoted ids, so most get
/// past the first `:`; the rest are free sequences of [`TARGET_PARTS`] or random text.
fn target_text(rng: &mut Rng) -> String {
    let parts = |rng: &mut Rng, n: usize| -> String { (0..n).map(|_| *rng.pick(TARGET_PARTS)).collect() };
    match rng.below(6) {
        0 => text(rng, 30),
        1 | 2 => {
            let n = 1 + rng.below(8);
            parts(rng, n)
        }
        _ => {
            let name = *rng.pick(&["tg", "TG", "origin", "Origin", "a-b_1", "matrix"]);
            let mut out = name.to_string();
            for _ in 0..1 + rng.below(2) {
                let n = 1 + rng.below(3);
                let id = parts(rng, n);
                out.push(':');
                out.push_str(&if rng.one_in(2) { format!("\"{id}\"") } else { id });
            }
            out
        }
    }
}

fn check_target(text: &str) {
    let Ok(target) = parse_target(text) else { return };
    let shown = target.to_string();
    let back = parse_target(&shown);
    assert_eq!(back.as_ref(), Ok(&target), "round trip failed: {text:?} → {target:?} → {shown:?}");
}

fn check_command(text: &str) {
    let parsed = commands::parse(text);
    assert_eq!(parsed, commands::parse(&format!(" \t{text}\n ")), "surrounding whitespace mattered");
    if parsed.is_some() {
        assert!(text.trim().starts_with('/'), "{text:?} is no command");
    }
    if let Some(Command::Queue(rest)) = parsed {
        assert!(!rest.is_empty() && rest.trim() == rest && text.contains(&rest), "{rest:?} from {text:?}");
    }
}

fn command_text(rng: &mut Rng) -> String {
    const WORDS: &[&str] = &["new", "reset", "stop", "status", "help", "queue", "NEW", "Queue", "", "unknown", "/"];
    if rng.one_in(4) {
        return text(rng, 40);
    }
    let bot = if rng.one_in(3) { "@switchboard_bot" } else { "" };
    let sep = *rng.pick(&[" ", "\n", "\t", "\u{a0}", "\u{3000}", ""]);
    format!("/{}{bot}{sep}{}", rng.pick(WORDS), text(rng, 20))
}

#[test]
fn delivery_targets() {
    let (iterations, seed) = knobs(4000);
    let mut run = Run::new("delivery_targets", seed, TARGET_KNOWN);
    for i in 0..iterations {
        run.case(i, target_text, |t: &String| check_target(t));
    }
    run.finish(0);
}

#[test]
fn chat_commands() {
    let (iterations, seed) = knobs(4000);
    let mut run = Run::new("chat_commands", seed, &[]);
    for i in 0..iterations {
        run.case(i, command_text, |t: &String| check_command(t));
    }
    run.finish(0);
}

// =======================================================================================
// State files: seeds written by the real code, then broken

/// A set of state files (paths relative to the state directory), and which of them are
/// still exactly as the real code wrote them.
struct Files {
    files: Vec<(String, Vec<u8>)>,
    pristine: Vec<bool>,
    /// A truncation case: one seed file cut short, the others intact.
    sweep: bool,
}

impl fmt::Debug for Files {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for ((path, bytes), pristine) in self.files.iter().zip(&self.pristine) {
            let tag = if *pristine { "intact" } else { "changed" };
            list.entry(&format_args!("{path} ({tag}, {} bytes): {:?}", bytes.len(), String::from_utf8_lossy(bytes)));
        }
        list.finish()
    }
}

impl Input for Files {}

impl Files {
    fn write_to(&self, dir: &Path) {
        for (path, bytes) in &self.files {
            let path = dir.join(path);
            fs::create_dir_all(path.parent().expect("a file in a directory")).expect("create the state dirs");
            fs::write(path, bytes).expect("write a state file");
        }
    }
}

/// Every file under `dir`, as paths relative to it: a seed set.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<PathBuf> =
            fs::read_dir(dir).expect("read a seed dir").flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(root, &path, out);
            } else if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
                out.push((rel, fs::read(&path).expect("read a seed file")));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// How many cases truncate a seed file: one per byte of every file.
fn sweep_len(seeds: &[(String, Vec<u8>)]) -> usize {
    seeds.iter().map(|(_, b)| b.len()).sum()
}

/// Case `index` of a state-file target: the first [`sweep_len`] cases truncate one file
/// at every byte in turn; the rest change one to three files at random.
fn state_case(rng: &mut Rng, index: usize, seeds: &[(String, Vec<u8>)]) -> Files {
    let mut files = Files { files: seeds.to_vec(), pristine: vec![true; seeds.len()], sweep: false };
    let mut at = index;
    for (k, (_, bytes)) in seeds.iter().enumerate() {
        if at < bytes.len() {
            files.files[k].1.truncate(at);
            files.pristine[k] = false;
            files.sweep = true;
            return files;
        }
        at -= bytes.len();
    }
    for _ in 0..1 + rng.below(3) {
        mutate_state_file(rng, &mut files, seeds);
    }
    files
}

/// Names that are not seeds: stray temp files, `.corrupt` leftovers, odd characters.
const JUNK_NAMES: &[&str] =
    &["junk.json", ".hidden.json", "x.sending", "x.corrupt", "a b.json", "é.json", "-.json", "..json"];

fn mutate_state_file(rng: &mut Rng, files: &mut Files, seeds: &[(String, Vec<u8>)]) {
    let k = rng.below(files.files.len());
    let others: Vec<&[u8]> = seeds.iter().map(|(_, b)| b.as_slice()).collect();
    let original = files.files[k].1.clone();
    let changed = match rng.below(8) {
        0..=2 => mutate_json_file(rng, &original),
        3 | 4 => mutate_bytes(rng, &original, &others),
        5 => bytes(rng, 300),
        6 => {
            // A stray file next to the seed, holding a copy of some seed or noise.
            let dir = Path::new(&files.files[k].0).parent().map(Path::to_path_buf).unwrap_or_default();
            let name = dir.join(rng.pick(JUNK_NAMES)).to_string_lossy().into_owned();
            let content = if rng.one_in(2) { rng.pick(&others).to_vec() } else { bytes(rng, 200) };
            files.files.push((name, content));
            files.pristine.push(false);
            return;
        }
        _ => Vec::new(),
    };
    if changed != original {
        files.files[k].1 = changed;
        files.pristine[k] = false;
    }
}

/// A JSON file with one to three nodes changed; a JSON Lines file with lines changed,
/// dropped, repeated or swapped. Byte-level when it is neither.
fn mutate_json_file(rng: &mut Rng, data: &[u8]) -> Vec<u8> {
    if let Ok(mut v) = serde_json::from_slice::<Value>(data) {
        for _ in 0..1 + rng.below(3) {
            mutate_json(rng, &mut v);
        }
        return if rng.one_in(2) { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }
            .expect("JSON serializes");
    }
    let mut lines: Vec<Vec<u8>> = data.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let i = rng.below(lines.len());
    match (rng.below(4), serde_json::from_slice::<Value>(&lines[i])) {
        (0, Ok(mut v)) => {
            mutate_json(rng, &mut v);
            lines[i] = serde_json::to_vec(&v).expect("JSON serializes");
        }
        (1, _) => drop(lines.remove(i)),
        (2, _) => lines.insert(i, lines[i].clone()),
        (_, _) => {
            let j = rng.below(lines.len());
            lines.swap(i, j);
        }
    }
    lines.join(&b'\n')
}

/// Run a state-file target: seeds from `seed`, then every truncation and `iterations`
/// random cases through `check`.
fn state_target(
    name: &'static str,
    known: &'static [Known],
    default_iterations: usize,
    seed_files: impl FnOnce(&Path),
    mut check: impl FnMut(&Files),
) {
    let dir = scratch();
    seed_files(dir.path());
    let seeds = snapshot(dir.path());
    assert!(!seeds.is_empty(), "{name}: the real code wrote no files");
    let (iterations, seed) = knobs(default_iterations);
    let mut run = Run::new(name, seed, known);
    for i in 0..sweep_len(&seeds) + iterations {
        run.case(i, |rng| state_case(rng, i, &seeds), &mut check);
    }
    run.finish(seeds.len());
}

fn source(platform: &str, chat: &str, chat_type: ChatType, user: &str) -> Source {
    Source {
        platform: platform.into(),
        chat_id: chat.into(),
        chat_type,
        chat_name: Some(format!("chat {chat} 😀")),
        user_id: Some(user.into()),
        user_name: Some("Ann \"the\" user".into()),
        thread_id: (chat_type == ChatType::Group).then(|| "7".into()),
    }
}

fn inbound(platform: &str, message_id: Option<&str>, text: &str) -> Inbound {
    Inbound {
        source: source(platform, "42", ChatType::Dm, "42"),
        message_id: message_id.map(Into::into),
        text: text.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Inbox

fn inbox_seeds(dir: &Path) {
    let inbox = Inbox::open(dir).expect("open an inbox");
    inbox.accept(inbound("tg", Some("101"), "hello `code` 😀")).expect("accept");
    inbox.accept(inbound("tg", Some("a/../b"), "id with a slash")).expect("accept");
    inbox.accept(inbound("console", None, "no id\nsecond line")).expect("accept");
    let done = inbox.accept(inbound("tg", Some("100"), "answered")).expect("accept").expect("new");
    inbox.complete(&done.id);
}

/// The ids a cut-short journal still holds as pending: accepted on a whole line, and not
/// done on one. The lines are the real code's, so every whole one parses (the last one
/// too when only its newline was cut), and a torn one never does.
fn pending_in_prefix(journal: &[u8]) -> BTreeSet<String> {
    let mut pending = BTreeSet::new();
    for line in journal.split(|&b| b == b'\n') {
        let Ok(v) = serde_json::from_slice::<Value>(line) else { continue };
        if let Some(id) = v.pointer("/accept/id").and_then(Value::as_str) {
            pending.insert(id.to_string());
        }
        if let Some(hash) = v.pointer("/answered/hash").and_then(Value::as_str) {
            pending.retain(|id| format!("{:016x}", switchboard::inbox::id_hash(id)) != hash);
        }
        // Journals written before answered ids were hashed.
        if let Some(id) = v.pointer("/done/id").and_then(Value::as_str) {
            pending.remove(id);
        }
    }
    pending
}

fn pending_ids(inbox: &Inbox) -> BTreeSet<String> {
    inbox.pending().into_iter().map(|a| a.id).collect()
}

/// Opening never fails on a damaged journal; a cut-short one keeps every message
/// accepted on a complete line; reopening (after the compaction opening does) gives the
/// same pending messages; the inbox still accepts, completes, and recognises a replay.
fn check_inbox(files: &Files) {
    let dir = scratch();
    files.write_to(dir.path());
    let inbox = Inbox::open(dir.path()).expect("Inbox::open on a damaged journal");
    let pending = pending_ids(&inbox);
    if files.sweep {
        let journal = &files.files.iter().find(|(p, _)| p == "inbox/journal").expect("the journal").1;
        let lost: Vec<String> = pending_in_prefix(journal).difference(&pending).cloned().collect();
        assert!(lost.is_empty(), "complete lines lost: {lost:?}");
    }
    drop(inbox);
    let again = Inbox::open(dir.path()).expect("reopen");
    assert_eq!(pending_ids(&again), pending, "reopening changed what is pending");
    let fresh = inbound("fz", Some("fresh"), "after the damage");
    let accepted = again.accept(fresh.clone()).expect("accept after loading").expect("a new id is no replay");
    again.complete(&accepted.id);
    drop(again);
    let third = Inbox::open(dir.path()).expect("reopen after a turn");
    assert_eq!(third.accept(fresh).expect("accept a replay"), None, "a done message was accepted again");
    assert_eq!(pending_ids(&third), pending);
}

#[test]
fn inbox_loader() {
    state_target("inbox_loader", &[], 300, inbox_seeds, check_inbox);
}

// ---------------------------------------------------------------------------------------
// Sessions

/// Sessions never expire here, so a loaded session is the one a turn continues.
fn session_config() -> SessionConfig {
    SessionConfig { reset: ResetMode::None, ..SessionConfig::default() }
}

fn session_sources() -> [Source; 2] {
    [source("tg", "42", ChatType::Dm, "42"), source("tg", "-100", ChatType::Group, "43")]
}

fn session_seeds(dir: &Path) {
    let store = SessionStore::open(dir, session_config(), 3600).expect("open the sessions");
    let now = SystemTime::now();
    for (i, src) in session_sources().iter().enumerate() {
        let entry = store.begin_turn(src, now).expect("begin a turn").entry;
        let said = [
            ChatMessage::new(Role::User, format!("question {i} 😀")),
            ChatMessage::new(Role::Assistant, "answer\n```\nx\n```"),
        ];
        store.append(&entry.key, &said, 10, 20, now).expect("append");
    }
    store.flush().expect("flush");
    // Keep a journal next to the snapshot: a reset after the flush is only in the journal.
    store.reset(&session_sources()[1], now).expect("reset");
}

/// Loading never fails on bad files; every session it knows has a readable history;
/// a turn after loading ends up last in its transcript.
fn check_sessions(files: &Files) {
    let dir = scratch();
    files.write_to(dir.path());
    let store = SessionStore::open(dir.path(), session_config(), 3600).expect("SessionStore::open on damaged files");
    for src in session_sources() {
        if let Some(entry) = store.get(&session_key(&src, true)) {
            store.history(&entry.session_id).expect("the history of a loaded session");
        }
    }
    let _ = store.history("../index");
    let src = &session_sources()[0];
    let now = SystemTime::now();
    let entry = store.begin_turn(src, now).expect("a turn after loading").entry;
    let said = ChatMessage::new(Role::User, "after the damage");
    store.append(&entry.key, std::slice::from_ref(&said), 1, 1, now).expect("append after loading");
    let history = store.history(&entry.session_id).expect("history after appending");
    assert_eq!(history.last(), Some(&said), "the new message is not last in {}", entry.session_id);
    store.flush().expect("flush after loading");
}

#[test]
fn session_loader() {
    state_target("session_loader", &[], 300, session_seeds, check_sessions);
}

// ---------------------------------------------------------------------------------------
// Outbox

/// The outbox's platform here; its worker thread is `outbox-fzob`.
const OUTBOX_NAME: &str = "fzob";

const OUTBOX_KNOWN: &[Known] = &[];

/// Answers sends in turn: sent, transient failure, refused, unknown outcome.
struct CyclingOutlet {
    calls: AtomicUsize,
}

impl CyclingOutlet {
    fn starting_at(n: usize) -> Arc<CyclingOutlet> {
        Arc::new(CyclingOutlet { calls: AtomicUsize::new(n) })
    }
}

impl Outlet for CyclingOutlet {
    fn send(&self, _msg: &Outbound) -> Result<Option<String>, SendError> {
        match self.calls.fetch_add(1, Ordering::Relaxed) % 4 {
            0 => Ok(Some("1".into())),
            1 => Err(SendError::Transient("fuzz".into())),
            2 => Err(SendError::Rejected("fuzz".into())),
            _ => Err(SendError::Unknown("fuzz".into())),
        }
    }

    fn edit(&self, _chat_id: &str, _message_id: &str, _text: &str) -> Result<(), SendError> {
        self.send(&Outbound {
            chat_id: String::new(),
            thread_id: None,
            reply_to: None,
            edit_of: None,
            text: String::new(),
        })
        .map(drop)
    }
}

/// Waits in milliseconds and few attempts, so every delivery settles within a case.
fn outbox_config() -> DeliveryConfig {
    DeliveryConfig {
        max_delivery_attempts: 3,
        retry_wait: Duration::from_millis(1),
        retry_cap: Duration::from_millis(2),
        ..DeliveryConfig::default()
    }
}

fn outbox_limits() -> Vec<(String, Limit)> {
    vec![(OUTBOX_NAME.to_string(), Limit { max: 40, unit: Unit::Utf16 })]
}

fn outbox_seeds(dir: &Path) {
    let outbox = Outbox::open(dir, outbox_config(), &outbox_limits()).expect("open the outbox");
    let msg = |text: &str, edit_of: Option<&str>| Outbound {
        chat_id: "-100".into(),
        thread_id: Some("7".into()),
        reply_to: Some("5".into()),
        edit_of: edit_of.map(Into::into),
        text: text.into(),
    };
    outbox.enqueue(OUTBOX_NAME, msg("hello 😀", None)).expect("enqueue");
    outbox.enqueue(OUTBOX_NAME, msg("a reply long enough to be split into two chunks", None)).expect("enqueue");
    outbox.enqueue(OUTBOX_NAME, msg("an edit", Some("9"))).expect("enqueue");
    // One delivery claimed by a run that stopped mid-send, and one of each parked kind.
    let queue = dir.join("outbox").join(OUTBOX_NAME);
    let mut stems: Vec<PathBuf> = fs::read_dir(&queue).expect("queue").flatten().map(|e| e.path()).collect();
    stems.sort();
    let copy = fs::read(&stems[0]).expect("a queued file");
    fs::rename(&stems[0], stems[0].with_extension("sending")).expect("claim");
    for parked in [
        queue.join("unknown/00000000000000000001-0000000001-0.json"),
        dir.join("deadletter/fzob/00000000000000000002-0000000001-0.json"),
    ] {
        fs::create_dir_all(parked.parent().expect("parent")).expect("parked dir");
        fs::write(parked, &copy).expect("a parked file");
    }
}

/// Opening tidies any mess; with an outlet every queued delivery settles (sent, retried
/// to the dead letters, or set aside) and none is left; the status listings read
/// whatever is parked.
fn check_outbox(files: &Files) {
    check_outbox_with(files, CyclingOutlet::starting_at(0));
}

fn check_outbox_with(files: &Files, outlet: Arc<dyn Outlet>) {
    let dir = scratch();
    files.write_to(dir.path());
    let outbox = Outbox::open(dir.path(), outbox_config(), &outbox_limits()).expect("Outbox::open on damaged files");
    let _ = (delivery::dead_letters(dir.path()), delivery::unknown_outcomes(dir.path()));
    if files.sweep {
        // A cut-short record is never valid JSON, so it is set aside at opening and the
        // workers would only send the intact seeds again: not worth their time here.
        return;
    }
    outbox.publish(OUTBOX_NAME, 1, outlet, outbox_limits()[0].1);
    outbox.start_workers().expect("start the worker");
    let left = outbox.drain(support::deadline(Duration::from_secs(5)));
    outbox.quit();
    let joined = outbox.join(support::deadline(Duration::from_secs(5)));
    raise_thread_panics(&format!("outbox-{OUTBOX_NAME}"));
    assert!(joined, "the worker did not end");
    assert_eq!(left, 0, "deliveries left unsettled");
    let _ = (delivery::dead_letters(dir.path()), delivery::unknown_outcomes(dir.path()));
    let queued = delivery::queued(dir.path());
    assert!(queued.iter().all(|(_, n)| *n == 0), "still queued on disk: {queued:?}");
}

#[test]
fn outbox_loader() {
    state_target("outbox_loader", OUTBOX_KNOWN, 200, outbox_seeds, check_outbox);
}

// ---------------------------------------------------------------------------------------
// Pairing

const PAIRING_PLATFORM: &str = "fzp";

const PAIRING_KNOWN: &[Known] = &[];

fn pairing_seeds(dir: &Path) {
    let pairing = Pairing::open(dir);
    let now = SystemTime::now();
    let Request::Issued(code) = pairing.request(PAIRING_PLATFORM, "u1", Some("Ann"), now).expect("request") else {
        panic!("a first request gets a code");
    };
    pairing.request(PAIRING_PLATFORM, "u2", None, now).expect("request");
    pairing.approve(PAIRING_PLATFORM, code.reveal(), now).expect("approve");
    let _ = pairing.approve(PAIRING_PLATFORM, "ABCDEFGH", now);
    pairing.request("other", "u3", Some("Cy 😀"), now).expect("request");
}

/// Reading never panics and never fails on a bad file; a new user can still be paired
/// (unless the file asks for a lockout or is full of pending requests).
fn check_pairing(files: &Files) {
    let dir = scratch();
    files.write_to(dir.path());
    let pairing = Pairing::open(dir.path());
    let now = SystemTime::now();
    pairing.list(now).expect("list damaged pairing files");
    pairing.is_approved(PAIRING_PLATFORM, "u1").expect("is_approved on a damaged file");
    match pairing.request(PAIRING_PLATFORM, "fresh-user", None, now).expect("a request after loading") {
        Request::Issued(code) => {
            if pairing.approve(PAIRING_PLATFORM, code.reveal(), now).is_ok() {
                assert!(pairing.is_approved(PAIRING_PLATFORM, "fresh-user").expect("is_approved"));
            }
        }
        Request::TooMany => {}
        Request::AlreadyPending => panic!("a user never seen is already pending"),
    }
    pairing.list(now).expect("list after pairing");
}

#[test]
fn pairing_loader() {
    state_target("pairing_loader", PAIRING_KNOWN, 400, pairing_seeds, check_pairing);
}

// ---------------------------------------------------------------------------------------
// Channel directory and status

fn directory_seeds(dir: &Path) {
    let directory = Directory::load(dir);
    directory.observe(&source("tg", "42", ChatType::Dm, "42"));
    directory.observe(&source("tg", "-100", ChatType::Group, "43"));
    directory.observe(&source("news", "-200", ChatType::Channel, "44"));
    directory.rebuild();
}

/// Loading never fails; after a chat is seen and the directory rebuilt, the file reads
/// back and holds that chat.
fn check_directory(files: &Files) {
    let dir = scratch();
    files.write_to(dir.path());
    let _ = Directory::read(dir.path());
    let directory = Directory::load(dir.path());
    directory.observe(&source("fzd", "c1", ChatType::Dm, "1"));
    directory.rebuild();
    let file = Directory::read(dir.path()).expect("the rebuilt directory reads back");
    let chats = file.platforms.get("fzd").expect("the platform just seen");
    assert!(chats.iter().any(|c| c.id == "c1"), "the chat just seen is missing");
}

#[test]
fn directory_loader() {
    state_target("directory_loader", &[], 300, directory_seeds, check_directory);
}

fn status_seeds(dir: &Path) {
    let platform = |state: &str, attempts: u32, error: bool| PlatformStatus {
        kind: "telegram".into(),
        state: state.into(),
        attempts,
        next_retry_at: error.then_some(1_700_000_042.5),
        error_code: error.then(|| "telegram_network_error".into()),
        error_message: error.then(|| "getUpdates: connection refused".into()),
        connected_since: (!error).then_some(1_700_000_000.0),
        last_event_at: Some(1_699_999_990.25),
    };
    let status = Status {
        pid: 4242,
        state: "degraded".into(),
        exit_reason: Some("a reason".into()),
        updated_at: 1_700_000_001.0,
        platforms: [
            ("tg".to_string(), platform("retrying", 2, true)),
            ("console".to_string(), platform("connected", 0, false)),
        ]
        .into(),
    };
    status.write(dir).expect("write status.json");
}

/// Reading fails or gives a status that renders, and that can be written and read again.
fn check_status(files: &Files) {
    let dir = scratch();
    files.write_to(dir.path());
    let Ok(status) = Status::read(dir.path()) else { return };
    let _ = (status.render(true, 1_700_000_100.0), status.render(false, 0.0), status.render(true, -1e308));
    let again = scratch();
    status.write(again.path()).expect("write a status that was read");
    Status::read(again.path()).expect("read back a status just written");
}

#[test]
fn status_loader() {
    state_target("status_loader", &[], 300, status_seeds, check_status);
}

// =======================================================================================
// Waits and numbers from the network (issue 7 §1)
//
// A server's numbers are hostile: `retry_after` 2^64 − 1 and a `Retry-After` date in the
// year 10^12 both panicked the gateway. These targets feed every wait and every number a
// platform reads (Telegram: `retry_after`, `migrate_to_chat_id`, the sent `message_id`,
// and in updates `update_id`, `message_id`, the chat and user ids, `message_thread_id`;
// OpenAI: `Retry-After`, the `usage` token counts) through the real parsers, the real
// adapters and the real wire, and check what each promises besides not panicking.

const RETRY_AFTER_KNOWN: &[Known] = &[];

/// One `Retry-After` value, the clock it is read at, and the wait it must give when the
/// generator knows (before the clamp).
#[derive(Debug)]
struct RetryAfterCase {
    value: String,
    now: u64,
    expect: Option<Duration>,
}

impl Input for RetryAfterCase {}

/// Whole seconds at the edges of the clamp and of the integer types.
const EDGE_SECONDS: &[u64] = &[
    0,
    1,
    59,
    3599,
    3600,
    3601,
    86_400,
    4_294_967_295,
    4_294_967_296,
    9_223_372_036_854_775_807,
    18_446_744_073_709_551_614,
    18_446_744_073_709_551_615,
];

/// Clocks to read a date at: the epoch, RFC 9110's example day, today-ish, 2100, 9999.
const NOWS: &[u64] = &[0, 784_111_767, 1_700_000_000, 4_102_444_800, 253_402_300_799];

/// `secs` since the epoch as an IMF-fixdate (the weekday is not checked by anyone).
fn imf_date(secs: u64) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (y, m, d) = session::civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!("Sun, {d:02} {} {y} {:02}:{:02}:{:02} GMT", MONTHS[(m - 1) as usize], s / 3600, s / 60 % 60, s % 60)
}

/// A date with edge fields: years far beyond any clock, days and times out of range.
fn wild_date(rng: &mut Rng) -> String {
    let day = rng.pick_str(&["0", "1", "01", "29", "31", "32", "99", "-1", "18446744073709551616"]);
    let month = rng.pick_str(&["Jan", "Feb", "Dec", "jan", "Foo", ""]);
    let year = rng.pick_str(&[
        "0",
        "1969",
        "1970",
        "2038",
        "9999",
        "10000",
        "1000000000000",
        "18446744073709551615",
        "18446744073709551616",
        "-2000",
    ]);
    let time = rng.pick_str(&["00:00:00", "23:59:60", "24:00:00", "12:60:00", "1:2:3", "99:99:99", "::", "12:00"]);
    let zone = rng.pick_str(&["GMT", "GMT", "UTC", "gmt", ""]);
    format!("{}, {day} {month} {year} {time} {zone}", rng.pick_str(&["Sun", "Mon", "Xyz", ""]))
}

/// A generated `Retry-After` value that HTTP allows in a header (visible ASCII, spaces
/// and tabs), so the fakes can send it and the answer stays well-formed.
fn retry_after_header(rng: &mut Rng) -> Option<String> {
    let value = retry_after_case(rng).value;
    value.bytes().all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b)).then_some(value)
}

fn retry_after_case(rng: &mut Rng) -> RetryAfterCase {
    let now = *rng.pick(NOWS);
    let pad = |rng: &mut Rng| rng.pick_str(&["", "", " ", "\t", "  "]).to_string();
    let (value, expect) = match rng.below(7) {
        0 => {
            let n = *rng.pick(EDGE_SECONDS);
            (format!("{}{n}{}", pad(rng), pad(rng)), Some(Duration::from_secs(n)))
        }
        1 => ("9".repeat(20 + rng.below(40)), Some(Duration::MAX)),
        2 => {
            // A date around the clock: past dates are a zero wait.
            let offset = *rng.pick(&[-86_400i64, -1, 0, 1, 59, 3599, 3600, 3601, 86_400, 31_536_000]);
            let at = (now as i64).saturating_add(offset).max(0) as u64;
            let wait = Duration::from_secs(at.saturating_sub(now));
            (format!("{}{}{}", pad(rng), imf_date(at), pad(rng)), Some(wait))
        }
        3 => (wild_date(rng), None),
        4 => {
            let seed = imf_date(now + rng.below(7200) as u64);
            (String::from_utf8_lossy(&mutate_bytes(rng, seed.as_bytes(), &[])).into_owned(), None)
        }
        5 => (rng.pick_str(&["", " ", "-1", "+5", "1.5", "1e9", "0x10", "١٢", "5 s", "NaN"]).to_string(), None),
        _ => (text(rng, 40), None),
    };
    RetryAfterCase { value, now, expect }
}

/// No panic; never more than the clamp; delay-seconds and dates give exactly their wait
/// (clamped); the header reader agrees with the value reader.
fn check_retry_after(case: &RetryAfterCase) {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(case.now);
    let got = http::parse_retry_after(&case.value, now);
    if let Some(wait) = got {
        assert!(wait <= net::MAX_SERVER_WAIT, "a wait of {wait:?} was not clamped");
    }
    if let Some(want) = case.expect {
        assert_eq!(got, Some(want.min(net::MAX_SERVER_WAIT)), "the wrong wait");
    }
    if let Ok(value) = ureq::http::HeaderValue::from_str(&case.value)
        && value.to_str().is_ok()
    {
        let mut headers = ureq::http::HeaderMap::new();
        headers.insert("retry-after", value);
        assert_eq!(http::retry_after(&headers, now), got, "the header reader disagrees");
    }
}

#[test]
fn retry_after_values() {
    let (iterations, seed) = knobs(20_000);
    let mut run = Run::new("retry_after_values", seed, RETRY_AFTER_KNOWN);
    for i in 0..iterations {
        run.case(i, retry_after_case, check_retry_after);
    }
    run.finish(0);
}

/// Numbers at the edges of `i64` and `u64`, floats, and two integers JSON can write but
/// neither type holds (the placeholders [`BIG_LITERALS`] replaces in the written body).
fn hostile_number(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => json!(*rng.pick(&["@@BIG_U@@", "@@BIG_I@@"])),
        1 => rng.pick(&[json!("7"), json!(null), json!(true), json!([1]), json!({})]).clone(),
        2 => json!(*rng.pick(EDGE_SECONDS)),
        3 => json!(rng.next() as i64),
        _ => boundary_number(rng),
    }
}

/// Integers beyond `u64` and below `i64`, written into a body where a placeholder stands.
const BIG_LITERALS: &[(&str, &str)] =
    &[("\"@@BIG_U@@\"", "18446744073709551616"), ("\"@@BIG_I@@\"", "-9223372036854775809")];

fn with_big_literals(json: String) -> String {
    BIG_LITERALS.iter().fold(json, |text, (placeholder, literal)| text.replace(placeholder, literal))
}

/// Whether `v` is one of the placeholders for [`BIG_LITERALS`].
fn is_big(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.starts_with("@@BIG"))
}

// ---------------------------------------------------------------------------------------
// Telegram's answers to sendMessage, through the real outlet

const TELEGRAM_ANSWERS_KNOWN: &[Known] = &[];

/// One answer to `sendMessage`, and what `send` must make of it (`None`: only bounds).
#[derive(Debug)]
struct TgSendCase {
    status: u16,
    body: String,
    headers: Vec<(String, String)>,
    expect: Option<Result<Option<String>, SendError>>,
}

impl Input for TgSendCase {}

fn tg_send_case(rng: &mut Rng) -> TgSendCase {
    let status = *rng.pick(&[429, 429, 429, 400, 400, 200, 200, 502, 403]);
    let number = |rng: &mut Rng| if rng.one_in(5) { json!(*rng.pick(EDGE_SECONDS)) } else { hostile_number(rng) };
    let mut body = if status == 200 {
        json!({"ok": true, "result": {"message_id": number(rng), "date": number(rng), "chat": {"id": number(rng), "type": "private"}, "text": "x"}})
    } else {
        json!({"ok": false, "error_code": number(rng), "description": "Too Many Requests",
               "parameters": {"retry_after": number(rng), "migrate_to_chat_id": number(rng)}})
    };
    let intact = !rng.one_in(4);
    if !intact {
        for _ in 0..1 + rng.below(3) {
            mutate_json(rng, &mut body);
        }
    }
    let mut headers = vec![];
    if rng.one_in(3)
        && let Some(value) = retry_after_header(rng)
    {
        headers.push(("Retry-After".to_string(), value));
    }
    let expect = intact.then(|| tg_send_expect(status, &body, &headers)).flatten();
    TgSendCase { status, body: with_big_literals(body.to_string()), headers, expect }
}

/// What `send` returns for an intact answer, where the generator can tell.
fn tg_send_expect(
    status: u16,
    body: &Value,
    headers: &[(String, String)],
) -> Option<Result<Option<String>, SendError>> {
    match status {
        200 => Some(match body["result"]["message_id"].as_i64() {
            Some(id) => Ok(Some(id.to_string())),
            None => Err(SendError::Unknown(String::new())),
        }),
        429 => {
            let asked = &body["parameters"]["retry_after"];
            let wait = match asked.as_u64() {
                Some(secs) => Duration::from_secs(secs),
                // Fractions and the rest: only the bounds are checked.
                None if asked.is_number() || is_big(asked) || !headers.is_empty() => return None,
                None => Duration::from_secs(5),
            };
            Some(Err(SendError::RetryAfter(wait.min(net::MAX_SERVER_WAIT))))
        }
        400 | 403 => {
            let migrated = body["parameters"]["migrate_to_chat_id"].as_i64();
            Some(Err(SendError::Rejected(migrated.map_or(String::new(), |id| format!("now chat {id}")))))
        }
        _ => Some(Err(SendError::Transient(String::new()))),
    }
}

/// A connected Telegram outlet on a fake Bot API.
struct TgOutletRig {
    fake: FakeTelegram,
    outlet: Arc<dyn Outlet>,
    _dir: tempfile::TempDir,
    _stop: Stop,
}

impl TgOutletRig {
    fn new() -> TgOutletRig {
        let fake = FakeTelegram::start(TOKEN);
        let dir = scratch();
        let (tx, _) = unbounded();
        let (ctx, stop) = Context::new("fztg-send", dir.path().to_path_buf(), tx);
        let settings = TelegramSettings {
            api_base: fake.url(),
            request_timeout: Duration::from_secs(5),
            ..TelegramSettings::new(Secret::new(TOKEN))
        };
        let outlet = TelegramSpec::new(settings).build().connect(&ctx).expect("connect to the fake");
        TgOutletRig { fake, outlet, _dir: dir, _stop: stop }
    }

    fn check(&self, case: &TgSendCase) {
        let fault = Fault::WithHeaders(case.status, case.body.clone(), case.headers.clone());
        self.fake.inject("sendMessage", fault, 1);
        let msg = Outbound { chat_id: "1".into(), thread_id: None, reply_to: None, edit_of: None, text: "x".into() };
        let got = self.outlet.send(&msg);
        let text = format!("{got:?}");
        assert!(!text.contains(TOKEN), "the token leaked: {text}");
        match (&got, &case.expect) {
            (Err(SendError::RetryAfter(wait)), _) => assert!(*wait <= net::MAX_SERVER_WAIT, "not clamped: {wait:?}"),
            (_, _) if case.status == 429 => panic!("a 429 is not a rate limit: {got:?}"),
            _ => {}
        }
        let Some(want) = &case.expect else { return };
        match (&got, want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(SendError::RetryAfter(got)), Err(SendError::RetryAfter(want))) => assert_eq!(got, want),
            (Err(SendError::Rejected(why)), Err(SendError::Rejected(part))) => {
                assert!(why.contains(part.as_str()), "{why:?} does not say {part:?}")
            }
            (Err(SendError::Unknown(_)), Err(SendError::Unknown(_))) => {}
            (Err(SendError::Transient(_)), Err(SendError::Transient(_))) => {}
            _ => panic!("send gave {got:?}, expected {want:?}"),
        }
    }
}

#[test]
fn telegram_send_answers() {
    let (iterations, seed) = knobs(400);
    let mut run = Run::new("telegram_send_answers", seed, TELEGRAM_ANSWERS_KNOWN);
    let rig = TgOutletRig::new();
    for i in 0..iterations {
        run.case(i, tg_send_case, |c: &TgSendCase| rig.check(c));
    }
    run.finish(0);
}

// ---------------------------------------------------------------------------------------
// The numbers of Telegram updates, through the real adapter

const TELEGRAM_NUMBERS_KNOWN: &[Known] = &[];

/// One update of a batch: its JSON, and whether it must, may or must not arrive.
#[derive(Debug)]
struct TgNumbered {
    update: Value,
    /// `Some(expected Inbound fields)` when it must arrive; `None` when it must not.
    want: Option<(String, String, Option<String>, Option<String>)>,
    /// The update id is hostile: whether it arrives depends on the adapter's offset.
    maybe: bool,
}

#[derive(Debug)]
struct TgNumbersCase {
    updates: Vec<TgNumbered>,
    body: String,
    sentinel: i64,
}

impl Input for TgNumbersCase {}

/// A batch of 1–3 text updates whose numbers are hostile, with the marker text
/// `fzn{case}-{k}` so that the check can tell them from the rig's own messages.
fn tg_numbers_case(rng: &mut Rng, case: usize) -> TgNumbersCase {
    let base = TG_FIRST_ID + (case as i64) * TG_IDS_PER_CASE;
    let pick = |rng: &mut Rng, normal: Value| if rng.one_in(3) { hostile_number(rng) } else { normal };
    let updates = (0..1 + rng.below(3))
        .map(|k| {
            let hostile_id = rng.one_in(6);
            let update_id = if hostile_id { hostile_number(rng) } else { json!(base + k as i64) };
            let (message_id, chat_id, user_id) = (pick(rng, json!(7 + k)), pick(rng, json!(42)), pick(rng, json!(5)));
            let thread = if rng.one_in(2) { Some(pick(rng, json!(3))) } else { None };
            let topic = rng.one_in(2);
            let chat_type = if rng.one_in(2) { "private" } else { "supergroup" };
            let mut message = json!({"message_id": message_id, "chat": {"id": chat_id, "type": chat_type},
                                     "from": {"id": user_id, "first_name": "F"}, "text": format!("fzn{case}-{k}")});
            if let Some(t) = &thread {
                message["message_thread_id"] = t.clone();
                message["is_topic_message"] = json!(topic);
            }
            let valid_thread = thread.as_ref().is_none_or(|t| t.is_null() || t.as_i64().is_some());
            let fields = (message_id.as_i64(), chat_id.as_i64(), user_id.as_i64());
            let want = match fields {
                (Some(m), Some(c), Some(u)) if valid_thread => {
                    let thread_id = thread.as_ref().and_then(Value::as_i64).filter(|_| topic).map(|t| t.to_string());
                    Some((m.to_string(), c.to_string(), Some(u.to_string()), thread_id))
                }
                _ => None,
            };
            let update = json!({"update_id": update_id, "message": message});
            TgNumbered { update, want, maybe: hostile_id }
        })
        .collect::<Vec<_>>();
    let values: Vec<&Value> = updates.iter().map(|u| &u.update).collect();
    let body = with_big_literals(json!({"ok": true, "result": values}).to_string());
    TgNumbersCase { updates, body, sentinel: base + TG_IDS_PER_CASE - 1 }
}

fn check_tg_numbers(rig: &mut TgRig, case: &TgNumbersCase, index: usize) {
    let delivered = rig.check_answers(&[(200, case.body.clone())], case.sentinel);
    let marker = format!("fzn{index}-");
    let mut seen = BTreeSet::new();
    for a in &delivered {
        let Some(k) = a.msg.text.strip_prefix(&marker).and_then(|k| k.parse::<usize>().ok()) else { continue };
        assert!(seen.insert(k), "update {k} arrived twice");
        let u = &case.updates[k];
        let Some((message_id, chat_id, user_id, thread_id)) = &u.want else {
            panic!("update {k} arrived though it does not fit: {:?}", a.msg);
        };
        let s = &a.msg.source;
        assert_eq!(a.msg.message_id.as_ref(), Some(message_id), "message_id");
        assert_eq!((&s.chat_id, &s.user_id, &s.thread_id), (chat_id, user_id, thread_id), "ids");
    }
    for (k, u) in case.updates.iter().enumerate() {
        if u.want.is_some() && !u.maybe {
            assert!(seen.contains(&k), "update {k} was lost: {}", u.update);
        }
    }
}

#[test]
fn telegram_update_numbers() {
    let (iterations, seed) = knobs(100);
    let mut run = Run::new("telegram_update_numbers", seed, TELEGRAM_NUMBERS_KNOWN);
    let rig = RefCell::new(TgRig::new());
    for i in 0..iterations {
        run.case(i, |rng| tg_numbers_case(rng, i), |c: &TgNumbersCase| check_tg_numbers(&mut rig.borrow_mut(), c, i));
    }
    rig.borrow_mut().stop();
    run.finish(0);
}

// ---------------------------------------------------------------------------------------
// OpenAI: token counts and Retry-After, through the real agent

const OPENAI_KNOWN: &[Known] = &[];

#[derive(Debug)]
struct OpenAiCase {
    status: u16,
    body: Value,
    retry_after: Option<String>,
}

impl Input for OpenAiCase {}

fn openai_case(rng: &mut Rng) -> OpenAiCase {
    let status = *rng.pick(&[200, 200, 200, 429, 503]);
    let mut body = json!({"choices": [{"message": {"content": "fz"}}]});
    if status == 200 {
        body["usage"] = match rng.below(6) {
            0 => hostile_number(rng),
            1 => json!({}),
            _ => json!({"prompt_tokens": hostile_number(rng), "completion_tokens": hostile_number(rng)}),
        };
    } else {
        body = json!({"error": {"message": "slow down", "type": "requests", "code": null}});
    }
    let retry_after = if status != 200 || rng.one_in(4) { retry_after_header(rng) } else { None };
    OpenAiCase { status, body, retry_after }
}

fn check_openai(fake: &FakeOpenAi, agent: &dyn agent::Agent, case: &OpenAiCase) {
    let headers: Vec<(String, String)> = case.retry_after.iter().map(|v| ("Retry-After".into(), v.clone())).collect();
    // Big literals are out of reach here (the fake writes a `Value`); floats and the
    // integer edges are not.
    fake.push(Answer::Status { status: case.status, body: case.body.clone(), headers });
    let source = Source::dm("fz", "1");
    let turn = Turn { text: "hi", session_key: "fz:dm:1", history: &[], source: &source };
    let got = agent.reply(&turn, &Cancel::new(), &mut |_| {});
    raise_thread_panics("agent-openai");
    match case.status {
        200 => {
            let reply = got.unwrap_or_else(|e| panic!("a 200 with a reply failed: {e:?}"));
            assert_eq!(reply.text, "fz");
            let usage = case.body.get("usage").filter(|u| u.is_object());
            let count = |key: &str| usage.and_then(|u| u[key].as_u64()).unwrap_or(0);
            assert_eq!((reply.input_tokens, reply.output_tokens), (count("prompt_tokens"), count("completion_tokens")));
        }
        429 => assert_eq!(got.map_err(|e| e.kind), Err(AgentErrorKind::RateLimited)),
        _ => assert!(got.is_err(), "a 503 gave a reply"),
    }
}

#[test]
fn openai_answers() {
    let (iterations, seed) = knobs(300);
    let mut run = Run::new("openai_answers", seed, OPENAI_KNOWN);
    let fake = FakeOpenAi::start();
    // No retries: a Retry-After is read and judged, never waited out.
    let settings =
        OpenAiSettings { max_retries: 0, timeout: Duration::from_secs(5), ..OpenAiSettings::new(&fake.url(), "m") };
    let agent = agent::build(&AgentConfig { backend: AgentBackend::OpenAi(settings), ..AgentConfig::default() }, &[]);
    for i in 0..iterations {
        run.case(i, openai_case, |c: &OpenAiCase| check_openai(&fake, &*agent, c));
    }
    run.finish(0);
}

// =======================================================================================
// Regressions: inputs the fuzzer found, each named after what it broke. The comments
// describe the bug as it was found; the ones still `#[ignore]`d are not fixed yet (and
// have an entry in their target's `known` table).

/// `telegram.rs` `Telegram::handle` moves the offset to `last + 1`: an update whose
/// `update_id` is `i64::MAX` (a broken or hostile `api_base`) overflows it: a panic in
/// debug builds; in release a wrap to `i64::MIN`, a negative offset, which asks Telegram
/// for the newest updates again on every poll.
#[test]
fn r_telegram_update_id_i64_max() {
    install_panic_hook();
    let mut rig = TgRig::new();
    rig.ensure_live();
    let body = json!({"ok": true, "result": [{"update_id": i64::MAX, "message": {"message_id": 1, "chat": {"id": 1, "type": "private"}, "text": "x"}}]});
    let _ = rig.check_answers(&[(200, body.to_string())], TG_FIRST_ID);
    rig.stop();
}

/// `pairing.rs` `time(secs)` adds the stored seconds to `UNIX_EPOCH` unchecked, so a
/// pairing file with a huge `approved_at` (or `created_at`) makes `pairing list` panic.
#[test]
fn r_pairing_list_time_u64_max() {
    let dir = scratch();
    let file = dir.path().join(format!("pairing/{PAIRING_PLATFORM}.json"));
    fs::create_dir_all(file.parent().expect("parent")).expect("pairing dir");
    fs::write(&file, json!({"approved": [{"user_id": "u1", "user_name": null, "approved_at": u64::MAX}]}).to_string())
        .expect("write");
    Pairing::open(dir.path()).list(SystemTime::now()).expect("list");
}

/// `outbox.rs` `Outbox::failed` does `record.attempts += 1` on a count read from the
/// file: `"attempts": 4294967295` and one transient failure panic the platform's worker
/// thread (debug builds), after which nothing more is sent to that platform.
#[test]
fn r_outbox_attempts_u32_max() {
    install_panic_hook();
    let record = json!({
        "outbound": {"chat_id": "1", "thread_id": null, "reply_to": null, "edit_of": null, "text": "x"},
        "created_at": 1,
        "attempts": u32::MAX,
    });
    let path = format!("outbox/{OUTBOX_NAME}/00000000000000000001-0000000001-0.json");
    let files = Files { files: vec![(path, record.to_string().into_bytes())], pristine: vec![false], sweep: false };
    // Starting at the outlet's transient failure.
    check_outbox_with(&files, CyclingOutlet::starting_at(1));
}

/// A quoted id may hold anything but `"`, but `Display` quotes only ids with a `:` or a
/// leading `"`: `tg:"x "` reads as chat `x ` and prints as `tg:x `, which reads as `x`.
#[test]
fn r_target_quoted_id_with_trailing_space() {
    let t = parse_target("tg:\"x \"").expect("a quoted id");
    assert_eq!(parse_target(&t.to_string()), Ok(t));
}

/// `ORIGIN` is the home channel of a platform instance named `origin`, but it prints as
/// `origin`, which reads as the `origin` target.
#[test]
fn r_target_platform_named_origin() {
    let t = parse_target("ORIGIN").expect("a platform name");
    assert_eq!(parse_target(&t.to_string()), Ok(t));
}

/// Durations, choices, platform kinds and URLs quote the *expanded* value in their
/// errors, so a secret used by mistake in such a key (`log_level = "${TELEGRAM_BOT_TOKEN}"`,
/// a token variable pasted into `kind`) is printed by `switchboard check` and the log.
#[test]
fn r_config_errors_quote_expanded_values() {
    let cases = [
        "[gateway]\nlog_level = \"${TOKEN}\"",
        "[reconnect]\nbase = \"${TOKEN}\"",
        "[platforms.tg]\nkind = \"${TOKEN}\"",
        "[platforms.tg]\nkind = \"telegram\"\ntoken = \"a\"\napi_base = \"${TOKEN}\"",
    ];
    for text in cases {
        let errors = config::parse_str(text, Path::new("t.toml"), &fake_env).expect_err("invalid").to_string();
        assert!(!errors.contains("s3cr3t-"), "{errors}");
    }
}

/// A code block whose opening line is longer than the room (a fence followed at once
/// by a long line, e.g. minified JSON: its "language" is the whole line) is reopened
/// with that line at the start of every chunk: each chunk is over the limit, so Telegram
/// refuses them all, and a 5 kB reply becomes thousands of chunks.
#[test]
fn r_split_long_fence_line() {
    let limit = Limit { max: 4096, unit: Unit::Utf16 };
    let text = format!("```{}\n{}```\n", "{\"k\":1,".repeat(700), "line\n".repeat(2000));
    let chunks = text::split(&text, limit);
    assert!(chunks.len() < 10, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| limit.unit.len(c) <= limit.max));
}

/// A cut just before an inline ```` ``` ```` puts it at the start of the next chunk, where
/// it reads as an opening fence: the splitter then closes and reopens a code block that
/// the text never had, and every later chunk renders as code.
#[test]
fn r_split_inline_backticks_at_a_cut() {
    let text = "see ```this``` and ".repeat(10) + &"word ".repeat(30);
    let chunks = text::split(&text, Limit { max: 60, unit: Unit::Chars });
    assert!(chunks.iter().all(|c| !c.contains("\n```")), "{chunks:#?}");
}
