/*!
Who may talk to the bot: allowlists, `allow_all`, and pairing for strangers.

A gateway that answers anyone who finds the bot gives strangers the agent (and its
tools and bill), so every inbound message passes [`Auth::check`] before the router does
anything with it. The rules, first match wins:

1. A platform of kind `console` is always allowed: it is the local terminal, and
   whoever types there already owns the machine (and the config).
2. A message without a user id is refused: nothing to check it against.
3. `allow_all` (the platform's own value if set, else `[access]`'s) allows everyone.
4. A user id in the platform's `allowed_users` or in `[access] allowed_users` is allowed.
5. A user the owner approved by pairing on that platform instance is allowed.

Everyone else is unknown. In groups and channels they are ignored without a word (a
bot that answers every stranger in a busy group is noise, and a probe target). In a
DM, `unauthorized_dm = "pair"` (the default) answers with a pairing code the owner
approves with `switchboard pairing approve`; `"ignore"` sends nothing. Those answers are
rate-limited per user and per platform ([`throttle`]), so a flood of DMs cannot fill the
outbox. Unknown users are logged at info with platform and user id (a dropped answer at
debug); a code is never logged.

The pairing store, shared with the CLI in another process, is in [`pairing`].
*/

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::SystemTime;

use log::{debug, info, warn};
use parking_lot::Mutex;

use crate::config::Section;
use crate::message::{ChatType, Source};

pub mod pairing;
pub mod throttle;

pub use pairing::{
    ApprovedUser, Pairing, PairingCode, PairingError, PendingRequest, PlatformPairing, Request, format_age,
};

/// The platform kind that is always allowed (the local terminal).
pub const CONSOLE_KIND: &str = "console";

/// The reply to a stranger whose request is already pending.
pub const ALREADY_PENDING_TEXT: &str = "A pairing request is already pending; ask the bot owner to approve it.";
/// The reply to a stranger when the platform has too many pending requests.
pub const TOO_MANY_TEXT: &str = "Too many pairing requests right now; please try again later.";

/// What to do with a DM from an unknown user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnauthorizedDm {
    /// Answer with a pairing code.
    #[default]
    Pair,
    /// Send nothing.
    Ignore,
}

/// `[access]`
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AccessConfig {
    /// User ids allowed on every platform.
    pub allowed_users: Vec<String>,
    /// Allow everyone on every platform that does not set its own `allow_all`.
    pub allow_all: bool,
    pub unauthorized_dm: UnauthorizedDm,
}

/// The access keys of one `[platforms.NAME]` table. `None`: inherit `[access]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlatformAccess {
    /// User ids allowed on this platform, in addition to `[access] allowed_users`.
    pub allowed_users: Vec<String>,
    pub allow_all: Option<bool>,
    pub unauthorized_dm: Option<UnauthorizedDm>,
}

const DM_CHOICES: &[(&str, Option<UnauthorizedDm>)] =
    &[("pair", Some(UnauthorizedDm::Pair)), ("ignore", Some(UnauthorizedDm::Ignore))];

/// Read `[access]`. Problems are recorded in the section.
pub fn parse_config(s: &mut Section<'_>) -> AccessConfig {
    AccessConfig {
        allowed_users: allowed_users(s),
        allow_all: s.bool_or("allow_all", false),
        unauthorized_dm: s.choice("unauthorized_dm", DM_CHOICES, None).unwrap_or_default(),
    }
}

/// Read the access keys of a platform table (`allowed_users`, `allow_all`,
/// `unauthorized_dm`). Problems are recorded in the section.
pub fn parse_platform_access(s: &mut Section<'_>) -> PlatformAccess {
    PlatformAccess {
        allowed_users: allowed_users(s),
        allow_all: s.bool("allow_all"),
        unauthorized_dm: s.choice("unauthorized_dm", DM_CHOICES, None),
    }
}

/// `allowed_users`, trimmed and de-duplicated. Problems are recorded in the section.
fn allowed_users(s: &mut Section<'_>) -> Vec<String> {
    let (ids, had_empty) = dedup_ids(s.string_list("allowed_users").unwrap_or_default());
    if had_empty {
        s.invalid("allowed_users", "contains an empty user id");
    }
    ids
}

/// `ids` trimmed, in their first order, each once, and whether an empty one was among
/// them (left out). Linear: a list of millions of ids used to take minutes, each id
/// compared with every earlier one. Ids are compared exactly: platforms differ on case
/// (Slack `U123`, Matrix `@a:b`), so none is folded.
fn dedup_ids(ids: Vec<String>) -> (Vec<String>, bool) {
    let mut seen: HashSet<String> = HashSet::with_capacity(ids.len());
    let mut out = Vec::with_capacity(ids.len());
    let mut had_empty = false;
    for id in ids {
        let id = id.trim();
        if id.is_empty() {
            had_empty = true;
        } else if seen.insert(id.to_string()) {
            out.push(id.to_string());
        }
    }
    (out, had_empty)
}

/// The verdict on one inbound message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Hand the message to the router.
    Allow,
    /// Drop it and send nothing.
    Ignore,
    /// Drop it and send this text to the same chat (a pairing reply). It may hold a
    /// pairing code: send it, never log it.
    Reply(String),
}

/// The effective rules of one platform instance, `[access]` folded in.
#[derive(Debug)]
struct Rule {
    kind: &'static str,
    allow_all: bool,
    /// The platform's list and the global one.
    allowed: HashSet<String>,
    dm: UnauthorizedDm,
}

/// Access decisions for the running gateway. Thread-safe: the rules are fixed at start,
/// and the pairing files are re-read when a decision needs them.
#[derive(Debug)]
pub struct Auth {
    /// `[access]`'s `allow_all` and `allowed_users`, for platform names not given to
    /// [`Auth::new`].
    global_allow_all: bool,
    global_allowed: HashSet<String>,
    rules: BTreeMap<String, Rule>,
    pairing: Pairing,
    /// The replies recently sent to strangers.
    throttle: Mutex<throttle::Throttle>,
}

impl Auth {
    /// `platforms`: (instance name, kind, access keys) of every platform instance.
    pub fn new(state_dir: &Path, global: &AccessConfig, platforms: &[(String, &'static str, PlatformAccess)]) -> Auth {
        let rules = platforms
            .iter()
            .map(|(name, kind, access)| {
                let allowed = access.allowed_users.iter().chain(&global.allowed_users).cloned().collect();
                let rule = Rule {
                    kind,
                    allow_all: access.allow_all.unwrap_or(global.allow_all),
                    allowed,
                    dm: access.unauthorized_dm.unwrap_or(global.unauthorized_dm),
                };
                (name.clone(), rule)
            })
            .collect();
        let global_allowed = global.allowed_users.iter().cloned().collect();
        Auth {
            global_allow_all: global.allow_all,
            global_allowed,
            rules,
            pairing: Pairing::open(state_dir),
            throttle: Mutex::default(),
        }
    }

    /// May `source` talk to the bot, and if not, what to answer. `now` dates a pairing
    /// request. A platform name not given to [`Auth::new`] gets the `[access]` rules
    /// and no pairing (its store could not be approved from the CLI).
    pub fn check(&self, source: &Source, now: SystemTime) -> Decision {
        let platform = source.platform.as_str();
        let rule = self.rules.get(platform);
        if rule.is_some_and(|r| r.kind == CONSOLE_KIND) {
            return Decision::Allow;
        }
        let Some(user) = source.user_id.as_deref().filter(|u| !u.is_empty()) else {
            info!("unauthorised message on {platform}: no user id");
            return Decision::Ignore;
        };
        let allowed = match rule {
            Some(r) => r.allow_all || r.allowed.contains(user),
            None => self.global_allow_all || self.global_allowed.contains(user),
        };
        if allowed {
            return Decision::Allow;
        }
        let Some(rule) = rule else {
            warn!("message from user {user} on unknown platform instance {platform} refused");
            return Decision::Ignore;
        };
        match self.pairing.is_approved(platform, user) {
            Ok(true) => return Decision::Allow,
            Ok(false) => {}
            Err(e) => {
                // Fail closed: an unreadable store must not let strangers in.
                warn!("cannot read the pairing store, treating user {user} on {platform} as unknown: {e}");
                return Decision::Ignore;
            }
        }
        if source.chat_type != ChatType::Dm || rule.dm == UnauthorizedDm::Ignore {
            info!("unauthorised user {user} on {platform} ({})", source.chat_type.as_str());
            return Decision::Ignore;
        }
        self.pair(platform, user, source.user_name.as_deref(), now)
    }

    /// The DM answer to an unknown user: a new code, or why there is none, unless
    /// the throttle holds the answer back.
    fn pair(&self, platform: &str, user: &str, user_name: Option<&str>, now: SystemTime) -> Decision {
        let refusal = |text: &str, why: &str| {
            if self.throttle.lock().admit(platform, user, now) {
                info!("unauthorised user {user} on {platform} (dm): {why}");
                Decision::Reply(text.to_string())
            } else {
                debug!("unauthorised user {user} on {platform} (dm): {why}; not answered (throttled)");
                Decision::Ignore
            }
        };
        match self.pairing.request(platform, user, user_name, now) {
            Ok(Request::Issued(code)) => {
                self.throttle.lock().record_code(platform, user, now);
                info!("unauthorised user {user} on {platform} (dm): sent a pairing code");
                let code = code.reveal();
                Decision::Reply(format!(
                    "I don't know you yet. Your pairing code is {code}; ask the bot owner to run: \
                     switchboard pairing approve {platform} {code}"
                ))
            }
            Ok(Request::AlreadyPending) => refusal(ALREADY_PENDING_TEXT, "a request is already pending"),
            Ok(Request::TooMany) => refusal(TOO_MANY_TEXT, "no pairing code, too many pending requests"),
            Err(e) => {
                warn!("cannot issue a pairing code to user {user} on {platform}: {e}");
                Decision::Ignore
            }
        }
    }

    /// Platform instances open to pairing by anyone: no allowlist (neither theirs nor
    /// `[access]`'s), `allow_all` false, and not the console. Sorted by name.
    pub fn open_platforms(&self) -> Vec<String> {
        self.rules.iter().filter(|(_, r)| is_open(r)).map(|(name, _)| name.clone()).collect()
    }
}

fn is_open(r: &Rule) -> bool {
    r.kind != CONSOLE_KIND && !r.allow_all && r.allowed.is_empty()
}

/// The warning to log at startup when some platform has no allowlist, or `None`.
pub fn startup_warning(auth: &Auth) -> Option<String> {
    let open: Vec<(&String, &Rule)> = auth.rules.iter().filter(|(_, r)| is_open(r)).collect();
    let names = |dm: UnauthorizedDm| -> Vec<&str> {
        open.iter().filter(|(_, r)| r.dm == dm).map(|(n, _)| n.as_str()).collect()
    };
    let (pair, ignore) = (names(UnauthorizedDm::Pair), names(UnauthorizedDm::Ignore));
    let mut parts = Vec::new();
    if !pair.is_empty() {
        parts.push(format!(
            "no allowlist set and allow_all = false for {}: strangers get a pairing code \
             (set allowed_users, or allow_all = true)",
            pair.join(", ")
        ));
    }
    if !ignore.is_empty() {
        parts.push(format!(
            "no allowlist set and allow_all = false for {}: only users approved by pairing earlier \
             get answers, and unauthorized_dm = \"ignore\" gives strangers no code \
             (set allowed_users, or allow_all = true)",
            ignore.join(", ")
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

const USAGE: &str = "usage: switchboard pairing list | approve PLATFORM CODE | revoke PLATFORM USER_ID";

/// `switchboard pairing ARGS…`: the text to print on success, or the error to print.
/// Neither ends in a newline. `known_platforms`: the instance names in the config.
pub fn pairing_command(
    state_dir: &Path,
    known_platforms: &[String],
    args: &[String],
    now: SystemTime,
) -> Result<String, String> {
    let pairing = Pairing::open(state_dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["list"] => {
            let platforms = pairing.list(now).map_err(|e| format!("cannot read the pairing store: {e}"))?;
            Ok(list_text(&platforms, known_platforms, now))
        }
        ["approve", platform, code] => {
            check_known(platform, known_platforms)?;
            let user = pairing.approve(platform, code, now).map_err(|e| format!("not approved: {e}"))?;
            Ok(format!(
                "Approved {} on {platform}; their next message will be answered.",
                user_label(&user.user_id, user.user_name.as_deref())
            ))
        }
        ["revoke", platform, user] => {
            let on_disk = pairing.platforms().map_err(|e| format!("cannot read the pairing store: {e}"))?;
            if !on_disk.iter().any(|p| p == platform) {
                check_known(platform, known_platforms)?;
            }
            match pairing.revoke(platform, user).map_err(|e| format!("not revoked: {e}"))? {
                true => Ok(format!("Revoked {} on {platform}.", printable(user))),
                false => {
                    Ok(format!("{} was neither approved nor pending on {platform}; nothing to do.", printable(user)))
                }
            }
        }
        _ => Err(USAGE.to_string()),
    }
}

fn check_known(platform: &str, known: &[String]) -> Result<(), String> {
    if known.iter().any(|k| k == platform) {
        return Ok(());
    }
    let list = if known.is_empty() { "none configured".to_string() } else { known.join(", ") };
    Err(format!("unknown platform `{}`; known platforms: {list}", printable(platform)))
}

/// The `pairing list` report. Codes are not shown: they were never stored.
fn list_text(platforms: &[PlatformPairing], known: &[String], now: SystemTime) -> String {
    let since = |t: SystemTime| format_age(now.duration_since(t).unwrap_or_default());
    let until = |t: SystemTime| format_age(t.duration_since(now).unwrap_or_default());
    let label = |p: &str| {
        if known.iter().any(|k| k == p) { p.to_string() } else { format!("{p} (not in the config)") }
    };
    let mut pending = Vec::new();
    let mut approved = Vec::new();
    let mut locked = Vec::new();
    for p in platforms {
        for r in &p.pending {
            let who = user_label(&r.user_id, r.user_name.as_deref());
            let (asked, left) = (since(r.requested_at), until(r.expires_at));
            pending.push(format!("  {}  {who}  asked {asked} ago, expires in {left}", label(&p.platform)));
        }
        for a in &p.approved {
            let who = user_label(&a.user_id, a.user_name.as_deref());
            approved.push(format!("  {}  {who}  approved {} ago", label(&p.platform), since(a.approved_at)));
        }
        if let Some(left) = p.locked_for {
            let left = format_age(left);
            locked.push(format!("  {}  approvals locked for {left} after too many wrong codes", label(&p.platform)));
        }
    }
    let mut out = vec![section_text("Pending requests", &pending)];
    if !pending.is_empty() {
        out.push("  (approve with: switchboard pairing approve PLATFORM CODE; the code is in the user's chat)".into());
    }
    out.push(section_text("Approved users", &approved));
    if !locked.is_empty() {
        out.push(section_text("Locked", &locked));
    }
    out.join("\n")
}

fn section_text(title: &str, lines: &[String]) -> String {
    if lines.is_empty() { format!("{title}: none") } else { format!("{title}:\n{}", lines.join("\n")) }
}

fn user_label(id: &str, name: Option<&str>) -> String {
    match name {
        Some(name) if !name.is_empty() => format!("{} ({})", printable(id), printable(name)),
        _ => printable(id),
    }
}

/// User names come from strangers: control characters would reach the owner's
/// terminal as escape sequences, so they are replaced.
fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests;
