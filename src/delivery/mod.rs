/*!
Outbound delivery: targets, and a durable outbox per platform instance.

Every reply and every `switchboard send` is written to the outbox on disk before anything
else happens, and sent from there by that platform's worker thread while the platform is
connected. A platform that is down keeps its queue; a gateway that stops or crashes finds
it again on the next start. So nothing accepted is lost, and — the other half of
DESIGN.md's durability rules — nothing is sent twice behind the user's back: a send whose
outcome is unknown (the request went out, no answer came) is set aside, not repeated,
unless the platform de-duplicates by itself.

- [`target`]: `origin`, `NAME`, `NAME:CHAT[:THREAD]`, with quoting for ids that contain
  `:` (Matrix); [`parse_target`] and [`Target::resolve`].
- [`Outbox`] (`outbox.rs`): the handle the gateway holds — enqueue, publish and withdraw
  outlets, workers, drain, quit — and the retry policy.
- `lane.rs`: the schedule of one instance — per chat in order, chats in parallel up to
  `max_in_flight`, waits that hold only the chat they concern.
- `limiter.rs`: the platform's send limits ([`SendLimits`]), enforced before each message.
- `store.rs`: the layout on disk (`state_dir/outbox/NAME/`: the journal, a spool for
  other processes, `unknown/`; `state_dir/deadletter/NAME/`), claims, crash recovery.
- `journal.rs`: the append-only journal of queued deliveries, with group commit (one
  `fdatasync` for every delivery queued while the previous one ran) and compaction.

Texts are split to the platform's limit when they are queued ([`crate::text::split`]);
all chunks of a message share one record, replaced after each chunk is sent, so the
sender sees a message whole or not at all, and a crash in the middle of a long reply
resumes with the next chunk instead of repeating the first.

Dead letters and unknown-outcome files are kept for `retention`, then removed (at
startup and about daily), so months of unattended running do not fill the disk.

`[delivery]` settings: `max_delivery_attempts` (default 10), `retry_wait` ("2s", the
wait after the first failed attempt, doubling after each), `retry_cap` ("5m"),
`max_message_bytes` (64 KiB). The last bounds one message: 20 MB piped into
`switchboard send` became 4,902 Telegram messages. `send` refuses a longer text; an
answer of the gateway's own (an agent run wild) is cut to the limit with a visible
marker and a warning ([`cap_message`]), never split into thousands. `retention` ("720h":
30 days) bounds how long parked deliveries are kept.

Per instance, in its `[platforms.NAME]` table ([`parse_pacing`], kept in
[`DeliveryConfig::pacing`]): `max_in_flight` (8), `send_limits` (`true`: the limits the
platform declares, [`crate::platform::PlatformSpec::send_limits`]; `false`: none), and
`send_rate`, `chat_send_rate`, `group_send_rate` to override one (`"30/1s"`, `"off"`).
They live in the platform's table because they are the platform's: a bot with raised
limits, a test fake with none.
*/

mod journal;
mod lane;
mod limiter;
mod outbox;
mod store;
pub mod target;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::message::Outbound;

pub use limiter::{Rate, SendLimits};
pub use outbox::Outbox;

pub use store::{Parked, ParkedSummary};
pub use target::{Address, Target, parse_target};

use crate::config::{Config, Section};
use crate::text::Limit;

/// `[delivery]`: the outbox's retry policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Failed attempts (transient failures; rate limits do not count) before a delivery
    /// is dead-lettered.
    pub max_delivery_attempts: u32,
    /// The wait after the first failed attempt; it doubles after each one.
    pub retry_wait: Duration,
    /// The longest wait between attempts.
    pub retry_cap: Duration,
    /// The longest text one message may have, in bytes (UTF-8), before it is split to
    /// the platform's limit.
    pub max_message_bytes: usize,
    /// How long dead letters and unknown-outcome files are kept before they are
    /// removed (at startup, and about daily while running).
    pub retention: Duration,
    /// How each platform instance sends, by instance name (read from its
    /// `[platforms.NAME]` table); an instance not named here gets [`Pacing::default`].
    pub pacing: BTreeMap<String, Pacing>,
}

/// How the outbox of one platform instance sends: how many requests at once, how fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacing {
    /// Sends in flight at once, each to a different chat (`max_in_flight`).
    pub max_in_flight: usize,
    /// What the limiter enforces: the platform's declared limits, with the instance's
    /// overrides (`send_limits`, `send_rate`, `chat_send_rate`, `group_send_rate`).
    pub limits: SendLimits,
}

/// The default of `[platforms.NAME] max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;
/// The largest `max_in_flight` accepted: each one may become a thread.
const MAX_MAX_IN_FLIGHT: u64 = 64;

impl Default for Pacing {
    /// Eight at once and no limits: what an instance the config does not describe gets
    /// (a test harness).
    fn default() -> Pacing {
        Pacing { max_in_flight: DEFAULT_MAX_IN_FLIGHT, limits: SendLimits::NONE }
    }
}

/// Read the outbox keys of a `[platforms.NAME]` table, starting from the limits its
/// platform declares. Problems are recorded in the section.
pub fn parse_pacing(s: &mut Section<'_>, declared: SendLimits) -> Pacing {
    let max_in_flight = s.u64_or("max_in_flight", DEFAULT_MAX_IN_FLIGHT as u64);
    if !(1..=MAX_MAX_IN_FLIGHT).contains(&max_in_flight) {
        s.invalid("max_in_flight", &format!("must be from 1 to {MAX_MAX_IN_FLIGHT}"));
    }
    // In range, or an error was recorded and the value is not used.
    let max_in_flight = usize::try_from(max_in_flight.clamp(1, MAX_MAX_IN_FLIGHT)).unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    let mut limits = if s.bool_or("send_limits", true) { declared } else { SendLimits::NONE };
    for (key, scope) in
        [("send_rate", &mut limits.total), ("chat_send_rate", &mut limits.chat), ("group_send_rate", &mut limits.group)]
    {
        let Some(text) = s.string(key) else { continue };
        match parse_rate(&text) {
            Ok(rate) => *scope = rate,
            Err(why) => s.invalid(key, &why),
        }
    }
    Pacing { max_in_flight, limits }
}

/// `"30/1s"`, `"1/s"`, `"20/1m"`: at most that many messages in any window that long;
/// `"off"`: no limit.
fn parse_rate(text: &str) -> Result<Option<Rate>, String> {
    if text == "off" {
        return Ok(None);
    }
    let invalid = || format!("invalid rate `{text}`: write COUNT/DURATION, e.g. \"30/1s\" or \"20/1m\", or \"off\"");
    let (count, per) = text.split_once('/').ok_or_else(invalid)?;
    let count: u32 = count.trim().parse().map_err(|_| invalid())?;
    let per = per.trim();
    let per = if per.starts_with(|c: char| c.is_ascii_digit()) { per.to_string() } else { format!("1{per}") };
    let per = crate::config::parse_duration(&per).map_err(|_| invalid())?;
    if count == 0 || per.is_zero() {
        return Err(format!(
            "invalid rate `{text}`: the count and the duration must be greater than 0 (or write \"off\")"
        ));
    }
    Ok(Some(Rate::new(count, per)))
}

/// The default of `[delivery] max_message_bytes`: 64 KiB, 16 Telegram messages.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The smallest `max_message_bytes` accepted: room for the truncation marker and text.
const MIN_MAX_MESSAGE_BYTES: u64 = 1024;
/// What ends a message cut to `max_message_bytes`.
pub const TRUNCATED_MARKER: &str = "\n\n[… truncated: longer than the gateway's max_message_bytes]";

impl Default for DeliveryConfig {
    /// 10 attempts, 2 s doubling to 5 min: about a quarter of an hour of trying before a
    /// delivery is given up, by which time a platform that is down has been noticed and
    /// its outlet withdrawn (a withdrawn platform's queue waits without counting).
    fn default() -> DeliveryConfig {
        DeliveryConfig {
            max_delivery_attempts: 10,
            retry_wait: Duration::from_secs(2),
            retry_cap: Duration::from_secs(300),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            retention: Duration::from_secs(30 * 24 * 3600),
            pacing: BTreeMap::new(),
        }
    }
}

/// Read `[delivery]`. Problems are recorded in the section.
pub fn parse_config(s: &mut Section<'_>) -> DeliveryConfig {
    let d = DeliveryConfig::default();
    let max_delivery_attempts = s.u32_or("max_delivery_attempts", d.max_delivery_attempts);
    let retry_wait = s.duration_or("retry_wait", d.retry_wait);
    let retry_cap = s.duration_or("retry_cap", d.retry_cap);
    let max_message_bytes = s.u64_or("max_message_bytes", d.max_message_bytes as u64);
    if max_message_bytes < MIN_MAX_MESSAGE_BYTES {
        s.invalid("max_message_bytes", &format!("must be at least {MIN_MAX_MESSAGE_BYTES}"));
    }
    // Beyond the address space it cannot be reached anyway.
    let max_message_bytes = usize::try_from(max_message_bytes).unwrap_or(usize::MAX);
    let retention = s.duration_or("retention", d.retention);
    if max_delivery_attempts == 0 {
        s.invalid("max_delivery_attempts", "must be at least 1");
    }
    if retry_wait.is_zero() {
        s.invalid("retry_wait", "must be greater than 0 (a zero wait retries in a busy loop)");
    } else if retry_cap < retry_wait {
        s.invalid("retry_cap", "must be at least retry_wait");
    }
    if retention.is_zero() {
        s.invalid("retention", "must be greater than 0 (a dead letter must stay long enough to be seen)");
    }
    DeliveryConfig {
        max_delivery_attempts,
        retry_wait,
        retry_cap,
        max_message_bytes,
        retention,
        pacing: BTreeMap::new(),
    }
}

/// `msg` with its text cut to `max` bytes (at a character boundary, the marker
/// included) when longer, with a warning naming `platform` and the chat.
pub fn cap_message(mut msg: Outbound, max: usize, platform: &str) -> Outbound {
    if msg.text.len() <= max {
        return msg;
    }
    log::warn!(
        "{platform}: a message of {} bytes for chat {} is longer than [delivery] max_message_bytes ({max}); \
         sending its first {max} bytes",
        msg.text.len(),
        msg.chat_id
    );
    let mut keep = max.saturating_sub(TRUNCATED_MARKER.len());
    while !msg.text.is_char_boundary(keep) {
        keep -= 1; // Terminates: 0 is a boundary.
    }
    msg.text.truncate(keep);
    msg.text.push_str(TRUNCATED_MARKER);
    msg
}

/// The enabled platform instances of `config` with their message limits, as
/// [`Outbox::open`] takes them.
pub fn platform_limits(config: &Config) -> Vec<(String, Limit)> {
    config.platforms.iter().filter(|p| p.enabled).map(|p| (p.name.clone(), p.spec.message_limit())).collect()
}

/// `switchboard send TARGET TEXT`: queue `text` for `target` in the outbox of
/// `config`'s state directory, whether or not a gateway is running (a running one sends
/// it within a second, otherwise the next start does). It writes a spool file, never
/// the gateway's journal, so any number of `send`s may run at once (see `store.rs`). `origin` is an error here: the
/// command line is no conversation. Returns a line for the user.
pub fn send_command(config: &Config, target: &str, text: &str) -> Result<String, String> {
    let target = parse_target(target)?;
    let address = target.resolve(config, None)?;
    let instance = config.platforms.iter().find(|p| p.name == address.platform);
    // `resolve` found the instance; a miss here would be a bug, reported, not a panic.
    let limit = instance.ok_or("the platform vanished from the config")?.spec.message_limit();
    let max = config.delivery.max_message_bytes;
    if text.len() > max {
        return Err(format!(
            "the text is {} bytes, more than [delivery] max_message_bytes ({max}); nothing queued \
             (raise max_message_bytes in {} to send it)",
            text.len(),
            config.file.display()
        ));
    }
    let record = outbox::to_record(address.message(text), limit).ok_or("nothing to send: the text is empty")?;
    let state_dir = &config.gateway.state_dir;
    check_owner(state_dir)?;
    let store = store::Store::new(state_dir, &address.platform);
    store.write_spool(&record).map_err(|e| format!("cannot write to the outbox in {}: {e}", state_dir.display()))?;
    let parts = if record.more.is_empty() { String::new() } else { format!(" in {} parts", record.more.len() + 1) };
    Ok(format!("queued for {address}{parts}"))
}

/// Whether an error from [`Outbox::enqueue`] will recur however often it is retried:
/// the platform instance is not configured (or not enabled) any more, or the message
/// itself is refused. Any other error (a full disk) may heal and is worth retrying.
pub fn is_permanent(e: &std::io::Error) -> bool {
    outbox::is_permanent(e)
}

/// Dead letters per platform: how many, and the newest `n`.
pub fn dead_letter_summary(state_dir: &Path, n: usize) -> Vec<ParkedSummary> {
    store::summarize_parked(state_dir, store::Park::Dead, n)
}

/// Unknown-outcome deliveries per platform: how many, and the newest `n`.
pub fn unknown_outcome_summary(state_dir: &Path, n: usize) -> Vec<ParkedSummary> {
    store::summarize_parked(state_dir, store::Park::Unknown, n)
}

/// `send` writes files the gateway must read: refuse when the state directory belongs to
/// another user (`sudo switchboard send` would leave a root-owned 0600 file the gateway
/// cannot read). A state directory that does not exist yet is ours to create.
fn check_owner(state_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(state_dir) else { return Ok(()) };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() == me {
        return Ok(());
    }
    Err(format!(
        "the state directory {} belongs to user id {}, not to you (user id {me}): the gateway could not read \
         what you queue; run this as that user, e.g. sudo -u '#{}' switchboard send …",
        state_dir.display(),
        meta.uid(),
        meta.uid()
    ))
}

/// Deliveries given up (refused, or failed `max_delivery_attempts` times), per platform
/// and oldest first.
pub fn dead_letters(state_dir: &Path) -> Vec<Parked> {
    store::list_parked(state_dir, store::Park::Dead)
}

/// Deliveries whose send may or may not have arrived, set aside rather than repeated.
pub fn unknown_outcomes(state_dir: &Path) -> Vec<Parked> {
    store::list_parked(state_dir, store::Park::Unknown)
}

/// Deliveries waiting to be sent, per platform instance, read from the files (for a
/// process other than the gateway; the gateway has [`Outbox::pending`]).
pub fn queued(state_dir: &Path) -> Vec<(String, usize)> {
    store::count_queued(state_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_config_section() {
        let mut s = Section::new_for_test(
            "max_delivery_attempts = 3\nretry_wait = \"10ms\"\nretry_cap = \"1s\"\nretention = \"48h\"",
            &[],
        );
        let got = parse_config(&mut s);
        assert!(s.finish().is_empty());
        let want = DeliveryConfig {
            max_delivery_attempts: 3,
            retry_wait: Duration::from_millis(10),
            retry_cap: Duration::from_secs(1),
            retention: Duration::from_secs(48 * 3600),
            ..DeliveryConfig::default()
        };
        assert_eq!(got, want);

        let mut s = Section::new_for_test("", &[]);
        assert_eq!(parse_config(&mut s), DeliveryConfig::default());
        assert!(s.finish().is_empty());

        let mut s = Section::new_for_test(
            "max_delivery_attempts = 0\nretry_wait = \"1m\"\nretry_cap = \"1s\"\nretries = 1",
            &[],
        );
        parse_config(&mut s);
        let errors: Vec<String> = s.finish().iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("retry_cap") && e.contains("at least retry_wait")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("retries")), "{errors:?}");

        let mut s = Section::new_for_test("max_message_bytes = 100", &[]);
        parse_config(&mut s);
        let errors: Vec<String> = s.finish().iter().map(|e| e.to_string()).collect();
        assert!(errors.iter().any(|e| e.contains("max_message_bytes") && e.contains("at least 1024")), "{errors:?}");
    }

    #[test]
    fn an_answer_longer_than_max_message_bytes_is_cut_with_a_marker() {
        let msg = |text: &str| Outbound {
            chat_id: "1".into(),
            thread_id: None,
            reply_to: None,
            edit_of: None,
            text: text.to_string(),
        };
        assert_eq!(cap_message(msg("short"), 1024, "tg").text, "short");
        // 20 MB of three-byte characters: cut at a boundary, the marker at the end.
        let long = "€".repeat(7_000_000);
        let cut = cap_message(msg(&long), DEFAULT_MAX_MESSAGE_BYTES, "tg").text;
        assert!(cut.len() <= DEFAULT_MAX_MESSAGE_BYTES && cut.len() > DEFAULT_MAX_MESSAGE_BYTES - 4, "{}", cut.len());
        assert!(cut.ends_with(TRUNCATED_MARKER));
        assert!(cut.trim_end_matches(TRUNCATED_MARKER).chars().all(|c| c == '€'));
    }
}
