/*!
The validated configuration (`gateway.toml`) and how it is loaded.

Loading happens once, in `main`, and either yields a complete [`Config`] or every problem
in the file at once ([`ConfigErrors`], one `file:line:column: key: message` per line).
Nothing after `main` sees raw TOML or raw strings.

The file is parsed with `toml`'s span-keeping `DeTable`, not deserialized into serde
structs: each `[platforms.NAME]` table's schema belongs to its platform kind
(`crate::platforms::KINDS`), which reads it through a [`Section`]. The section records which
keys were asked for, so unknown keys are reported with the nearest known one, wherever the
schema lives. The gateway's own sections are read the same way.

Pieces: `section.rs` (typed getters and unknown-key detection), `expand.rs` (`${VAR}`),
`duration.rs` (`"30s"`), `error.rs` (the error type, line/column, suggestions).
*/

mod duration;
mod error;
mod expand;
mod section;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::de::DeTable;

use crate::delivery::Pacing;
use crate::platform::PlatformSpec;
use crate::platforms::Kind;

pub(crate) use duration::parse as parse_duration;
pub use error::{ConfigError, ConfigErrors};
use section::Doc;
pub use section::Section;

/// The embedded default configuration: the `gateway.toml` shipped in the repository.
/// Used when no config file exists at the default path, so a fresh checkout runs.
pub const DEFAULT_CONFIG: &str = include_str!("../../gateway.toml");

/// Where the config is looked for when none is given.
pub const DEFAULT_PATH: &str = "./gateway.toml";

/// The file label of the embedded default, in errors and in [`Config::file`].
pub const EMBEDDED_LABEL: &str = "<embedded default>";

/// The whole validated configuration. Nothing after `main` sees raw TOML.
#[derive(Clone)]
pub struct Config {
    /// The file it came from (`<embedded default>` when none existed).
    pub file: PathBuf,
    pub gateway: Gateway,
    pub reconnect: Reconnect,
    /// `[agent]`: who answers, read by the agent module.
    pub agent: crate::agent::AgentConfig,
    /// `[sessions]`: per-conversation history and reset policy.
    pub sessions: crate::session::SessionConfig,
    /// `[access]`: who may talk to the bot (per-platform keys are in each instance).
    pub access: crate::auth::AccessConfig,
    /// `[delivery]`: the outbox.
    pub delivery: crate::delivery::DeliveryConfig,
    /// Every `[platforms.NAME]` table, enabled or not, sorted by name.
    pub platforms: Vec<PlatformInstance>,
    /// Things in the file that work but should change (a key no longer used): printed by
    /// `check`, logged by `run`.
    pub warnings: Vec<ConfigError>,
}

/// `[gateway]`
#[derive(Clone, Debug)]
pub struct Gateway {
    pub state_dir: PathBuf,
    pub log_level: log::LevelFilter,
    pub log_file: Option<PathBuf>,
    /// `dedup_window`: how long answered message ids are remembered, to recognise a
    /// message a platform delivers again (default a week).
    pub dedup_window: Duration,
}

/// `[reconnect]`: the supervisor's timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconnect {
    pub base: Duration,
    pub cap: Duration,
    /// 0 means retry forever.
    pub max_attempts: u32,
    pub connect_timeout: Duration,
}

impl Default for Reconnect {
    /// 30 s doubling up to 5 min, 20 attempts: a platform outage of about an hour and a
    /// half is ridden out before giving up.
    fn default() -> Reconnect {
        Reconnect {
            base: Duration::from_secs(30),
            cap: Duration::from_secs(300),
            max_attempts: 20,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// One `[platforms.NAME]` table.
#[derive(Clone)]
pub struct PlatformInstance {
    pub name: String,
    /// The registry kind (`kind = ...`, defaulting to the table name).
    pub kind: &'static str,
    pub enabled: bool,
    pub spec: Arc<dyn PlatformSpec>,
    /// `allowed_users`, `allow_all`, `unauthorized_dm`: this platform's access rules,
    /// on top of `[access]`.
    pub access: crate::auth::PlatformAccess,
    /// `home_channel`: the chat the delivery target `NAME` means.
    pub home_channel: Option<String>,
}

/// A credential. Its `Debug` and `Display` never show the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The raw value, for building a request. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Load and validate `path`. When it does not exist and it is [`DEFAULT_PATH`]
/// (`./gateway.toml` or `gateway.toml`), the embedded default is used instead; any other
/// missing file is an error. Use [`load_or_default`] to say explicitly which case applies.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let is_default = path == Path::new(DEFAULT_PATH) || path == Path::new("gateway.toml");
    load_or_default(path, !is_default)
}

/// What the command loading the config needs from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Everything, secrets included (`run`, `check`, `send`): an unset `${VAR}` is an error.
    Secrets,
    /// Only where the state is (`status`, `pairing`): an unset `${VAR}` reads as absent,
    /// except in a path, so they work from a shell without the token variables.
    NoSecrets,
}

/// Load and validate `path`, with `${VAR}` taken from the process environment.
/// `explicit` says the user named the file (`--config`, `$SWITCHBOARD_CONFIG`): then a
/// missing file is an error. Otherwise a missing file means "use the embedded default",
/// so a fresh checkout runs with no setup.
pub fn load_or_default(path: &Path, explicit: bool) -> Result<Config, ConfigErrors> {
    load_for(path, explicit, Needs::Secrets)
}

/// [`load_or_default`] for a command that needs what `needs` says.
pub fn load_for(path: &Path, explicit: bool, needs: Needs) -> Result<Config, ConfigErrors> {
    let env = |name: &str| std::env::var(name).ok();
    let parse = |text: &str, file: &Path| parse_with(text, file, &env, crate::platforms::KINDS, needs);
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !explicit => parse(DEFAULT_CONFIG, Path::new(EMBEDDED_LABEL)),
        Err(e) => {
            Err(ConfigErrors::whole_file(&path.display().to_string(), format!("cannot read the config file: {e}")))
        }
    }
}

/// Parse and validate `text`, labelled `file` in errors, with `${VAR}` looked up in `env`
/// (tests pass a fake environment instead of touching the process's).
pub fn parse_str(text: &str, file: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    parse_with_kinds(text, file, env, crate::platforms::KINDS)
}

/// [`parse_str`] with a given table of platform kinds, so tests can use their own.
pub(crate) fn parse_with_kinds(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    kinds: &[Kind],
) -> Result<Config, ConfigErrors> {
    parse_with(text, file, env, kinds, Needs::Secrets)
}

/// [`parse_with_kinds`] for a command that needs what `needs` says.
pub(crate) fn parse_with(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    kinds: &[Kind],
    needs: Needs,
) -> Result<Config, ConfigErrors> {
    // Every value taken from the environment is remembered, so that no error message can
    // show one (a token put where a duration belongs would otherwise be quoted back).
    let used: RefCell<Vec<(String, String)>> = RefCell::new(Vec::new());
    let recording_env = |name: &str| {
        let value = env(name);
        if let Some(v) = &value {
            used.borrow_mut().push((name.to_string(), v.clone()));
        }
        value
    };
    let result = parse_document(text, file, &recording_env, kinds, needs);
    result.map_err(|errors| errors.without_values(&used.into_inner()))
}

fn parse_document(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    kinds: &[Kind],
    needs: Needs,
) -> Result<Config, ConfigErrors> {
    let doc = Doc { file: file.display().to_string(), text, env, unset_ok: needs == Needs::NoSecrets };
    // The recovering parser reports every syntax error, not just the first. Only the
    // parser's message is used: the error's `Display` quotes the offending line, which
    // may hold a token.
    let (table, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let errors = syntax.iter().map(|e| syntax_error(&doc, e.span(), e.message())).collect();
        return Err(ConfigErrors::sorted(errors));
    }
    let mut errors = Vec::new();
    let mut root = Section::root(&doc, table.get_ref());
    let mut warnings = Vec::new();
    let gateway = read(&mut errors, root.section("gateway"), |s| read_gateway(s, &mut warnings));
    let reconnect = read(&mut errors, root.section("reconnect"), read_reconnect);
    let agent = read(&mut errors, root.section("agent"), |s| crate::agent::parse_config(s, &mut warnings));
    let sessions = read(&mut errors, root.section("sessions"), crate::session::parse_config);
    let access = read(&mut errors, root.section("access"), crate::auth::parse_config);
    let mut delivery = read(&mut errors, root.section("delivery"), crate::delivery::parse_config);
    let platforms = read_platforms(root.section("platforms"), kinds, &mut errors, &mut delivery.pacing);
    errors.extend(root.finish());
    if !errors.is_empty() {
        return Err(ConfigErrors::sorted(errors));
    }
    Ok(Config { file: file.to_path_buf(), gateway, reconnect, agent, sessions, access, delivery, platforms, warnings })
}

/// A parser error as a [`ConfigError`]. The parser says only "duplicate key"; the key (or
/// table) it means and where it was first defined are added from the text.
fn syntax_error(doc: &Doc<'_>, span: Option<std::ops::Range<usize>>, message: &str) -> ConfigError {
    match span.clone().filter(|_| message.starts_with("duplicate key")) {
        Some(span) => match error::duplicate(doc.text, span.start) {
            Some((key, message)) => doc.error(Some(span), Some(key), message),
            None => doc.error(Some(span), None, message.to_string()),
        },
        None => doc.error(span, None, message.to_string()),
    }
}

/// Run `f` on `section`, then collect the section's problems into `errors`.
fn read<T>(errors: &mut Vec<ConfigError>, mut section: Section<'_>, f: impl FnOnce(&mut Section<'_>) -> T) -> T {
    let value = f(&mut section);
    errors.extend(section.finish());
    value
}

const LOG_LEVELS: &[(&str, log::LevelFilter)] = &[
    ("off", log::LevelFilter::Off),
    ("error", log::LevelFilter::Error),
    ("warn", log::LevelFilter::Warn),
    ("info", log::LevelFilter::Info),
    ("debug", log::LevelFilter::Debug),
    ("trace", log::LevelFilter::Trace),
];

fn read_gateway(s: &mut Section<'_>, warnings: &mut Vec<ConfigError>) -> Gateway {
    let state_dir = s.path_or("state_dir", "./state");
    // Token locks used to be files in `lock_dir`; a directory that depended on who started
    // the gateway let two of them poll one token (`crate::lock` says what replaced it).
    // Old configs keep working: the key is accepted, ignored, and named in a warning.
    if s.path("lock_dir").is_some() {
        let message = "no longer used and ignored: bot-token locks are host-wide abstract sockets now; remove the key";
        warnings.push(s.note("lock_dir", message));
    }
    let log_level = s.choice("log_level", LOG_LEVELS, log::LevelFilter::Info);
    let log_file = s.path("log_file");
    let dedup_window = s.duration_or("dedup_window", crate::inbox::DEFAULT_DEDUP_WINDOW);
    if dedup_window.is_zero() {
        s.invalid("dedup_window", "must be greater than 0 (a platform's replays would be answered twice)");
    }
    Gateway { state_dir, log_level, log_file, dedup_window }
}

fn read_reconnect(s: &mut Section<'_>) -> Reconnect {
    let d = Reconnect::default();
    let base = s.duration_or("base", d.base);
    let cap = s.duration_or("cap", d.cap);
    let max_attempts = s.u32_or("max_attempts", d.max_attempts);
    let connect_timeout = s.duration_or("connect_timeout", d.connect_timeout);
    if base.is_zero() {
        s.invalid("base", "must be greater than 0 (a zero backoff retries in a busy loop)");
    } else if cap < base {
        s.invalid("cap", &format!("must be at least base ({})", duration::format(base)));
    }
    if connect_timeout.is_zero() {
        s.invalid("connect_timeout", "must be greater than 0");
    }
    Reconnect { base, cap, max_attempts, connect_timeout }
}

/// Every `[platforms.NAME]` table, sorted by name. Tables that cannot be built (bad
/// kind) are left out; their problems are in `errors`, so the load fails anyway.
/// Each instance's outbox keys go into `pacing`.
fn read_platforms(
    mut table: Section<'_>,
    kinds: &[Kind],
    errors: &mut Vec<ConfigError>,
    pacing: &mut BTreeMap<String, Pacing>,
) -> Vec<PlatformInstance> {
    let mut out = Vec::new();
    for (name, mut section) in table.sections() {
        if !is_valid_name(&name) {
            let message = "invalid platform name: use only a-z, 0-9, `_` and `-` (it names files and threads)";
            table.key_error(&name, message);
        } else if name == "origin" {
            table.key_error(
                &name,
                "`origin` is a delivery target (the chat a message came from); name the platform otherwise",
            );
        }
        let instance = read_platform(name.clone(), &mut section, kinds);
        if let Some(p) = &instance {
            pacing.insert(name.clone(), crate::delivery::parse_pacing(&mut section, p.spec.send_limits()));
        }
        if let Some(other) = instance.as_ref().and_then(|p| same_token(p, &out)) {
            let message = format!(
                "uses the same bot token as [platforms.{other}]: two pollers on one token knock each other off"
            );
            table.key_error(&name, &message);
        }
        out.extend(instance);
        errors.extend(section.finish());
    }
    errors.extend(table.finish());
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The enabled instance among `others` whose bot token `p` also uses, if any.
fn same_token<'a>(p: &PlatformInstance, others: &'a [PlatformInstance]) -> Option<&'a str> {
    // An empty token is already an error of its own; it clashes with nothing.
    let token = p.spec.lock_identity().filter(|t| p.enabled && !t.expose().is_empty())?;
    let clash = |o: &&PlatformInstance| o.enabled && o.kind == p.kind && o.spec.lock_identity() == Some(token);
    others.iter().find(clash).map(|o| o.name.as_str())
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn read_platform(name: String, s: &mut Section<'_>, kinds: &[Kind]) -> Option<PlatformInstance> {
    let enabled = s.bool_or("enabled", true);
    // `kind` is read strictly, even in a disabled table: it decides which keys are valid.
    let kind_name = s.string("kind");
    let wanted = kind_name.as_deref().unwrap_or(&name);
    let Some(kind) = kinds.iter().find(|k| k.name == wanted) else {
        s.invalid("kind", &unknown_kind(wanted, kind_name.is_none(), kinds));
        s.skip_unknown_keys();
        return None;
    };
    // A disabled platform is still parsed, so a typo in it is caught today rather than on
    // the day it is enabled. But unset variables and empty secrets in it are not errors:
    // a user disables Telegram precisely because there is no token yet.
    s.set_lenient(!enabled);
    let access = crate::auth::parse_platform_access(s);
    let home_channel = s.string("home_channel");
    let spec = (kind.parse)(s);
    Some(PlatformInstance { name, kind: kind.name, enabled, spec, access, home_channel })
}

fn unknown_kind(wanted: &str, defaulted: bool, kinds: &[Kind]) -> String {
    let hint = error::did_you_mean(wanted, kinds.iter().map(|k| k.name));
    let known: Vec<&str> = kinds.iter().map(|k| k.name).collect();
    let known = known.join(", ");
    if defaulted {
        format!("missing; `{wanted}` is not a platform kind, so set `kind = \"...\"`{hint} (known kinds: {known})")
    } else {
        format!("unknown platform kind `{wanted}`{hint} (known kinds: {known})")
    }
}

impl Config {
    /// What `switchboard check` prints: where everything goes, the timings, and one line
    /// per platform instance, each line ending in a newline. Never contains a secret.
    pub fn summary(&self) -> String {
        let (g, r) = (&self.gateway, &self.reconnect);
        let log_file = g.log_file.as_ref().map_or(String::new(), |f| format!(", also to {}", f.display()));
        let attempts = if r.max_attempts == 0 { "forever".to_string() } else { r.max_attempts.to_string() };
        let mut lines = vec![
            format!("config: {}", self.file.display()),
            format!("state_dir: {}", g.state_dir.display()),
            format!("log: {}{log_file}", g.log_level.as_str().to_ascii_lowercase()),
            format!(
                "reconnect: base {}, cap {}, max_attempts {attempts}, connect_timeout {}",
                duration::format(r.base),
                duration::format(r.cap),
                duration::format(r.connect_timeout)
            ),
            format!("agent: {}", self.agent.describe()),
            "platforms:".to_string(),
        ];
        if self.platforms.is_empty() {
            lines.push("  (none)".to_string());
        }
        for p in &self.platforms {
            let state = if p.enabled { "enabled" } else { "disabled" };
            lines.push(format!("  {} ({}): {state} – {}", p.name, p.kind, p.spec.describe()));
        }
        lines.iter().map(|line| format!("{line}\n")).collect()
    }
}

impl Config {
    /// What `run` would refuse that loading cannot see, because it depends on the
    /// machine or on the whole file: no enabled platform (`run` exits 78 at once), and a
    /// `state_dir` or `log_file` that cannot be created. `check` reports these.
    pub fn run_problems(&self) -> Vec<ConfigError> {
        let file = self.file.display().to_string();
        let problem = |key: &str, message: String| ConfigError {
            file: file.clone(),
            position: None,
            key: Some(key.to_string()),
            message,
        };
        let mut problems = Vec::new();
        if !self.platforms.iter().any(|p| p.enabled) {
            let message = "no platform is enabled, so `run` would stop at once (exit 78); add one, \
                           e.g. `[platforms.console]` for the terminal";
            problems.push(problem("platforms", message.to_string()));
        }
        if let Some(why) = unusable_dir(&self.gateway.state_dir) {
            problems.push(problem("gateway.state_dir", format!("{}: {why}", self.gateway.state_dir.display())));
        }
        if let Some(log_file) = &self.gateway.log_file {
            let dir = log_file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let why = if log_file.is_dir() { Some("it is a directory".to_string()) } else { unusable_dir(dir) };
            if let Some(why) = why {
                problems.push(problem("gateway.log_file", format!("{}: {why}", log_file.display())));
            }
        }
        problems
    }
}

/// Why `dir` can be neither used nor created, if so: it, or the nearest part of it that
/// exists, is not a directory. (Permissions are left to `run`, which names the path.)
fn unusable_dir(dir: &Path) -> Option<String> {
    let existing = dir.ancestors().find(|a| !a.as_os_str().is_empty() && a.exists())?;
    if existing.is_dir() {
        return None;
    }
    Some(if existing == dir {
        "it is not a directory".to_string()
    } else {
        format!("cannot be created: {} is not a directory", existing.display())
    })
}

impl Config {
    /// Every secret of every platform instance, enabled or not, for log redaction.
    pub fn secrets(&self) -> Vec<Secret> {
        let all = self.platforms.iter().flat_map(|p| p.spec.secrets().into_iter().cloned());
        all.filter(|s| !s.expose().is_empty()).collect()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("file", &self.file)
            .field("gateway", &self.gateway)
            .field("reconnect", &self.reconnect)
            .field("agent", &self.agent)
            .field("platforms", &self.platforms)
            .finish()
    }
}

impl fmt::Debug for PlatformInstance {
    /// The spec is shown through `describe`, which never includes a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformInstance")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("enabled", &self.enabled)
            .field("spec", &self.spec.describe())
            .finish()
    }
}
