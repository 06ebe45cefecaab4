/*!
`[agent]`: which backend answers, and how the router runs turns.

The table mixes two concerns on purpose, because users think of them together: the
router's settings (`max_concurrent_turns`, `busy`, `stream`, `edit_interval`) and the chosen backend's
own keys. Only the chosen backend's keys are read, so a key of another backend is
reported as unknown (a `model` under `backend = "command"` is a mistake worth hearing
about).

| key             | backend  | default   | meaning                                                   |
|-----------------|----------|-----------|-----------------------------------------------------------|
| `backend`       | all      | `"echo"`  | `echo`, `openai` or `command`                             |
| `max_concurrent_turns` | all | 64     | turns running at once (each of another session), 1 to 1024 |
| `busy`          | all      | `"queue"` | a message during a turn: `queue` it, or `interrupt` the turn |
| `stream`        | all      | false     | stream replies (edit the message as text arrives); `openai` only |
| `edit_interval` | all      | `"1s"`    | least time between two edits of a streamed reply          |
| `base_url`      | openai   | required  | e.g. `https://api.openai.com/v1`, `http://127.0.0.1:11434/v1` |
| `api_key`       | openai   | none      | sent as `Authorization: Bearer`; local servers need none  |
| `model`         | openai   | required  | the model name the endpoint knows                         |
| `system_prompt` | openai   | none      | sent first in every request                               |
| `timeout`       | openai, command | `"120s"` | the whole turn: every request, retry wait and streamed piece / the run |
| `temperature`   | openai   | server's  | a number from 0 to 2                                      |
| `max_tokens`    | openai   | server's  | the longest answer, in tokens                             |
| `max_retries`   | openai   | 3         | retries of 429, 5xx and network failures                  |
| `retry_wait`    | openai   | `"1s"`    | first wait between retries, doubling (a `Retry-After` wins) |
| `command`       | command  | required  | `["program", "arg", …]`, run without a shell              |
| `env`           | command  | `["PATH", "HOME", "LANG", "TZ", "USER"]` | the only variables the program gets |

`max_concurrent_turns` used to be `workers` (default 4). The old name is still read, as a
deprecated alias that loads with a warning asking to rename it: a gateway.toml copied from
an old example must not stop a gateway on upgrade. Setting both is an error. A model
server with a few slots (llama.cpp's `--parallel`, Ollama's `OLLAMA_NUM_PARALLEL`) wants
the setting at its slot count: more turns would only wait in the server's queue, where
`/stop` cannot reach them cheaply.

`env` is an allowlist because the gateway's own environment holds the bot tokens and API
keys the config expands: a program with tools could print them into a chat. Even a listed
variable is withheld when its value holds one of the config's secrets (`command.rs`).
*/

use std::time::Duration;

use crate::config::{ConfigError, Secret, Section};

/// `[agent]`
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    pub backend: AgentBackend,
    /// `max_concurrent_turns`: how many turns (of different sessions) may run at once,
    /// from 1 to [`MAX_CONCURRENT_TURNS`].
    pub max_concurrent_turns: usize,
    /// `busy`: what a message for a session with a running turn does.
    pub busy: BusyMode,
    /// `stream`: deliver a reply while it is written, by editing one message.
    pub stream: bool,
    /// `edit_interval`: the least time between two edits of a streamed reply.
    pub edit_interval: Duration,
}

impl Default for AgentConfig {
    fn default() -> AgentConfig {
        AgentConfig {
            backend: AgentBackend::Echo,
            max_concurrent_turns: DEFAULT_CONCURRENT_TURNS,
            busy: BusyMode::Queue,
            stream: false,
            edit_interval: Duration::from_secs(1),
        }
    }
}

impl AgentConfig {
    /// One line for `switchboard check`. Never contains a secret.
    pub fn describe(&self) -> String {
        let stream = if self.stream { "on" } else { "off" };
        format!(
            "{}; up to {} turns at once, busy {}, stream {stream} (edit every {:?})",
            self.backend.describe(),
            self.max_concurrent_turns,
            self.busy.as_str(),
            self.edit_interval
        )
    }

    /// Every credential of the agent, so the logger can blank them out.
    pub fn secrets(&self) -> Vec<Secret> {
        match &self.backend {
            AgentBackend::OpenAi(s) => s.api_key.iter().filter(|k| !k.expose().is_empty()).cloned().collect(),
            AgentBackend::Echo | AgentBackend::Command(_) => Vec::new(),
        }
    }
}

/// `max_concurrent_turns` when absent. Real models take seconds: a small default makes
/// the fiftieth user wait for forty-nine answers. A turn thread costs little (its stack is
/// mostly untouched) and ends when idle (`crate::router`).
pub const DEFAULT_CONCURRENT_TURNS: usize = 64;
/// The most `max_concurrent_turns` may be: a thread each, and far beyond what one model
/// server answers at once.
pub const MAX_CONCURRENT_TURNS: u32 = 1024;

/// `busy`: what happens to a message that arrives while its session's turn runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusyMode {
    /// It becomes the next turn once the current one ends.
    Queue,
    /// The current turn is cancelled and the message starts a new one.
    Interrupt,
}

const BUSY_MODES: &[(&str, BusyMode)] = &[("queue", BusyMode::Queue), ("interrupt", BusyMode::Interrupt)];

impl BusyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BusyMode::Queue => "queue",
            BusyMode::Interrupt => "interrupt",
        }
    }
}

/// `backend` and its settings.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum AgentBackend {
    /// Replies `echo: <text>`.
    Echo,
    /// An OpenAI-compatible chat-completions endpoint.
    OpenAi(OpenAiSettings),
    /// A local program, the turn as JSON on stdin, the reply on stdout.
    Command(CommandSettings),
}

/// The backend names, for `backend = "..."`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Echo,
    OpenAi,
    Command,
}

const KINDS: &[(&str, Kind)] = &[("echo", Kind::Echo), ("openai", Kind::OpenAi), ("command", Kind::Command)];

impl AgentBackend {
    /// The name used in `backend = "..."`.
    pub fn name(&self) -> &'static str {
        match self {
            AgentBackend::Echo => "echo",
            AgentBackend::OpenAi(_) => "openai",
            AgentBackend::Command(_) => "command",
        }
    }

    fn describe(&self) -> String {
        match self {
            AgentBackend::Echo => "echo".to_string(),
            AgentBackend::OpenAi(s) => {
                let key = if s.api_key.is_some() { "api key set" } else { "no api key" };
                let mut extra = String::new();
                if let Some(t) = s.temperature {
                    extra.push_str(&format!(", temperature {t}"));
                }
                if let Some(n) = s.max_tokens {
                    extra.push_str(&format!(", max_tokens {n}"));
                }
                format!(
                    "openai: model {} at {} ({key}, timeout {:?}, max_retries {}{extra})",
                    s.model,
                    without_userinfo(&s.base_url),
                    s.timeout,
                    s.max_retries
                )
            }
            AgentBackend::Command(s) => {
                format!("command: {} (timeout {:?}, env {})", s.command.join(" "), s.timeout, s.env.join(" "))
            }
        }
    }
}

/// The `openai` backend's keys.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenAiSettings {
    /// `base_url`, without a trailing `/`; requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// `api_key`: `None` for servers that need none (Ollama, llama.cpp).
    pub api_key: Option<Secret>,
    pub model: String,
    pub system_prompt: Option<String>,
    /// `timeout`: the limit on the whole turn (requests, retry waits, the stream).
    pub timeout: Duration,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    /// `max_retries`: retries of 429, 5xx and network failures, so at most
    /// `1 + max_retries` requests per turn.
    pub max_retries: u32,
    /// `retry_wait`: the wait before the first retry, doubling after each (capped at
    /// 30 s); a `Retry-After` header replaces it.
    pub retry_wait: Duration,
}

impl OpenAiSettings {
    /// The defaults, for `model` at `base_url`.
    pub fn new(base_url: &str, model: &str) -> OpenAiSettings {
        OpenAiSettings {
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: None,
            model: model.to_string(),
            system_prompt: None,
            timeout: Duration::from_secs(120),
            temperature: None,
            max_tokens: None,
            max_retries: 3,
            retry_wait: Duration::from_secs(1),
        }
    }
}

/// The `command` backend's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandSettings {
    /// `command`: the program and its arguments; never empty.
    pub command: Vec<String>,
    /// `timeout`: after this the program (and everything it started) is killed.
    pub timeout: Duration,
    /// `env`: the names of the variables passed on to the program; nothing else is.
    pub env: Vec<String>,
}

/// `env` when absent: what a program needs to find its tools and speak the user's language.
pub const DEFAULT_ENV: &[&str] = &["PATH", "HOME", "LANG", "TZ", "USER"];

impl CommandSettings {
    /// The defaults, for `command`.
    pub fn new(command: &[&str]) -> CommandSettings {
        CommandSettings {
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(120),
            env: DEFAULT_ENV.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Read `[agent]`. Problems are recorded in the section; a deprecated key that still
/// works goes into `warnings`.
pub fn parse_config(s: &mut Section<'_>, warnings: &mut Vec<ConfigError>) -> AgentConfig {
    let d = AgentConfig::default();
    let kind = s.choice("backend", KINDS, Kind::Echo);
    let max_concurrent_turns = concurrent_turns(s, warnings);
    let edit_interval = positive_duration(s, "edit_interval", d.edit_interval);
    AgentConfig {
        max_concurrent_turns,
        busy: s.choice("busy", BUSY_MODES, d.busy),
        stream: s.bool_or("stream", d.stream),
        edit_interval,
        backend: match kind {
            Kind::Echo => AgentBackend::Echo,
            Kind::OpenAi => AgentBackend::OpenAi(parse_openai(s)),
            Kind::Command => AgentBackend::Command(parse_command(s)),
        },
    }
}

/// `max_concurrent_turns`, or its old name `workers` with a warning.
fn concurrent_turns(s: &mut Section<'_>, warnings: &mut Vec<ConfigError>) -> usize {
    const KEY: &str = "max_concurrent_turns";
    let (new, old) = (s.u32(KEY), s.u32("workers"));
    let (key, n) = match (new, old) {
        (Some(n), None) => (KEY, n),
        (None, Some(n)) => {
            let message = "renamed to `max_concurrent_turns` (read as that for now, default 64); rename the key";
            warnings.push(s.note("workers", message));
            ("workers", n)
        }
        (Some(n), Some(_)) => {
            s.key_error("workers", "the old name of `max_concurrent_turns`, which is set too; remove this one");
            (KEY, n)
        }
        (None, None) => return DEFAULT_CONCURRENT_TURNS,
    };
    if !(1..=MAX_CONCURRENT_TURNS).contains(&n) {
        s.invalid(key, &format!("must be from 1 to {MAX_CONCURRENT_TURNS}"));
    }
    n.clamp(1, MAX_CONCURRENT_TURNS) as usize
}

fn parse_openai(s: &mut Section<'_>) -> OpenAiSettings {
    let base_url = required(s, "base_url", "openai");
    let http = base_url.starts_with("http://") || base_url.starts_with("https://");
    if !base_url.is_empty() && !http {
        s.invalid("base_url", "must start with http:// or https://");
    }
    let mut settings = OpenAiSettings::new(&base_url, &required(s, "model", "openai"));
    settings.api_key = s.string("api_key").map(Secret::new);
    if settings.api_key.as_ref().is_some_and(|k| k.expose().is_empty()) {
        // Leaving the key out is how to say "none"; an empty one is a mistake, most
        // likely an empty variable.
        s.invalid("api_key", "the secret is empty; set it, or remove `api_key` for a server that needs none");
    }
    settings.system_prompt = s.string("system_prompt").filter(|p| !p.trim().is_empty());
    settings.timeout = positive_duration(s, "timeout", settings.timeout);
    settings.temperature = temperature(s);
    settings.max_tokens = max_tokens(s);
    settings.max_retries = s.u32_or("max_retries", settings.max_retries);
    settings.retry_wait = s.duration_or("retry_wait", settings.retry_wait);
    settings
}

fn parse_command(s: &mut Section<'_>) -> CommandSettings {
    let command = s.string_list("command").unwrap_or_default();
    if command.first().is_none_or(|prog| prog.is_empty()) {
        s.invalid("command", "required for backend \"command\": a non-empty list like [\"program\", \"arg\"]");
    }
    let timeout = positive_duration(s, "timeout", Duration::from_secs(120));
    CommandSettings { command, timeout, env: env_allowlist(s) }
}

/// `env = ["PATH", …]`: variable names, each once; a bad name is an error naming it.
fn env_allowlist(s: &mut Section<'_>) -> Vec<String> {
    let Some(names) = s.string_list("env") else { return CommandSettings::new(&[]).env };
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        if !is_variable_name(&name) {
            let hint = "is not a variable name (letters, digits and `_`, not starting with a digit)";
            s.invalid("env", &format!("{name:?} {hint}"));
        } else if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// A portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_variable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A string the backend cannot work without; empty (and an error) when missing.
fn required(s: &mut Section<'_>, key: &str, backend: &str) -> String {
    let value = s.string(key).unwrap_or_default();
    if value.trim().is_empty() {
        s.invalid(key, &format!("required for backend \"{backend}\""));
    }
    value
}

fn positive_duration(s: &mut Section<'_>, key: &str, default: Duration) -> Duration {
    let d = s.duration_or(key, default);
    if d.is_zero() {
        s.invalid(key, "must be more than 0");
        return default;
    }
    d
}

/// `temperature = 0.7`
fn temperature(s: &mut Section<'_>) -> Option<f64> {
    let t = s.float("temperature")?;
    if !(0.0..=2.0).contains(&t) {
        s.invalid("temperature", "must be a number from 0 to 2");
        return None;
    }
    Some(t)
}

/// `max_tokens`: absent is `None`; TOML integers are i64, so `u64::MAX` cannot be
/// written and safely marks "absent".
fn max_tokens(s: &mut Section<'_>) -> Option<u32> {
    match s.u64_or("max_tokens", u64::MAX) {
        u64::MAX => None,
        n => match u32::try_from(n) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                s.invalid("max_tokens", &format!("must be a whole number from 1 to {}", u32::MAX));
                None
            }
        },
    }
}

/// `url` without a `user:password@` part, for display.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str, env: &[(&str, &str)]) -> (AgentConfig, Vec<String>) {
        let (config, errors, warnings) = parse_warned(toml, env);
        assert!(warnings.is_empty(), "{warnings:?}");
        (config, errors)
    }

    /// The config, its errors and its warnings.
    fn parse_warned(toml: &str, env: &[(&str, &str)]) -> (AgentConfig, Vec<String>, Vec<String>) {
        let mut s = Section::new_for_test(toml, env);
        let mut warnings = vec![];
        let config = parse_config(&mut s, &mut warnings);
        let errors = s.finish().iter().map(|e| e.to_string()).collect();
        (config, errors, warnings.iter().map(|e| e.to_string()).collect())
    }

    fn ok(toml: &str) -> AgentConfig {
        let (config, errors) = parse(toml, &[("KEY", "sk-secret-123")]);
        assert!(errors.is_empty(), "{errors:?}");
        config
    }

    #[test]
    fn defaults_are_echo_with_64_queueing_turns() {
        let config = ok("");
        assert_eq!(config, AgentConfig::default());
        assert_eq!(config.max_concurrent_turns, 64);
        assert_eq!(config.busy, BusyMode::Queue);
        assert!(!config.stream);
        assert_eq!(config.edit_interval, Duration::from_secs(1));
        assert_eq!(config.describe(), "echo; up to 64 turns at once, busy queue, stream off (edit every 1s)");
    }

    #[test]
    fn router_settings() {
        let config = ok("max_concurrent_turns = 2\nbusy = \"interrupt\"\nstream = true\nedit_interval = \"500ms\"\n");
        assert_eq!((config.max_concurrent_turns, config.busy, config.stream), (2, BusyMode::Interrupt, true));
        assert_eq!(config.edit_interval, Duration::from_millis(500));
        let (config, errors) = parse("max_concurrent_turns = 0\nbusy = \"later\"\nedit_interval = \"0s\"\n", &[]);
        assert_eq!(config.max_concurrent_turns, 1);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("test.max_concurrent_turns: must be from 1 to 1024"), "{errors:?}");
        assert!(errors[1].contains("test.edit_interval: must be more than 0"), "{errors:?}");
        assert!(errors[2].contains("test.busy: unknown value `later`"), "{errors:?}");
    }

    /// Issue 8, section 1: `workers` was renamed; an old config still loads, with a
    /// warning naming the new key, and means the same.
    #[test]
    fn workers_is_a_deprecated_alias_of_max_concurrent_turns() {
        let (config, errors, warnings) = parse_warned("workers = 3\n", &[]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config.max_concurrent_turns, 3);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("test.workers: renamed to `max_concurrent_turns`"), "{warnings:?}");
        let (_, errors, _) = parse_warned("workers = 0\n", &[]);
        assert!(errors[0].contains("test.workers: must be from 1 to 1024"), "{errors:?}");
        let (config, errors, _) = parse_warned("workers = 3\nmax_concurrent_turns = 5\n", &[]);
        assert_eq!(config.max_concurrent_turns, 5);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("test.workers: the old name of `max_concurrent_turns`"), "{errors:?}");
        let (config, errors) = parse("max_concurrent_turns = 5000\n", &[]);
        assert_eq!(config.max_concurrent_turns, 1024);
        assert!(errors[0].contains("must be from 1 to 1024"), "{errors:?}");
    }

    #[test]
    fn openai_with_every_key() {
        let config = ok("backend = \"openai\"\nbase_url = \"http://127.0.0.1:11434/v1/\"\napi_key = \"${KEY}\"\n\
             model = \"llama3\"\nsystem_prompt = \"Be brief.\"\ntimeout = \"30s\"\ntemperature = 0.7\n\
             max_tokens = 500\nmax_retries = 1\nretry_wait = \"10ms\"\n");
        let AgentBackend::OpenAi(s) = &config.backend else { panic!("{config:?}") };
        assert_eq!(s.base_url, "http://127.0.0.1:11434/v1");
        assert_eq!(s.api_key.as_ref().map(Secret::expose), Some("sk-secret-123"));
        assert_eq!((s.model.as_str(), s.system_prompt.as_deref()), ("llama3", Some("Be brief.")));
        assert_eq!((s.timeout, s.temperature, s.max_tokens), (Duration::from_secs(30), Some(0.7), Some(500)));
        assert_eq!((s.max_retries, s.retry_wait), (1, Duration::from_millis(10)));
        let shown = config.describe();
        assert!(shown.starts_with("openai: model llama3 at http://127.0.0.1:11434/v1 (api key set"), "{shown}");
        assert!(!shown.contains("sk-secret"), "{shown}");
        assert!(!format!("{config:?}").contains("sk-secret"));
        assert_eq!(config.secrets(), [Secret::new("sk-secret-123")]);
    }

    #[test]
    fn openai_minimal_needs_no_key() {
        let config = ok("backend = \"openai\"\nbase_url = \"http://localhost:8080/v1\"\nmodel = \"m\"\n");
        let AgentBackend::OpenAi(s) = &config.backend else { panic!("{config:?}") };
        assert_eq!(*s, OpenAiSettings::new("http://localhost:8080/v1", "m"));
        assert!(config.describe().contains("no api key"));
        assert!(config.secrets().is_empty());
    }

    #[test]
    fn openai_problems() {
        let (_, errors) = parse("backend = \"openai\"\n", &[]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("test.base_url: required for backend \"openai\""), "{errors:?}");
        assert!(errors[1].contains("test.model: required"), "{errors:?}");
        let text = "backend = \"openai\"\nbase_url = \"ftp://x\"\nmodel = \"m\"\napi_key = \"${EMPTY}\"\n\
                    temperature = \"hot\"\nmax_tokens = 0\ntimeout = \"0s\"\n";
        let (_, errors) = parse(text, &[("EMPTY", "")]);
        let keys = ["base_url", "api_key", "timeout", "temperature", "max_tokens"];
        assert_eq!(errors.len(), keys.len(), "{errors:?}");
        for key in keys {
            assert!(errors.iter().any(|e| e.contains(&format!("test.{key}:"))), "{key}: {errors:?}");
        }
    }

    #[test]
    fn temperature_is_a_number_in_range() {
        let base = "backend = \"openai\"\nbase_url = \"http://x\"\nmodel = \"m\"\n";
        let config = ok(&format!("{base}temperature = 0.5\n"));
        let AgentBackend::OpenAi(settings) = config.backend else { panic!("not openai") };
        assert_eq!(settings.temperature, Some(0.5));
        let (_, errors) = parse(&format!("{base}temperature = 3\n"), &[]);
        assert!(errors[0].contains("test.temperature: must be a number from 0 to 2"), "{errors:?}");
        let (_, errors) = parse(&format!("{base}temperature = \"hot\"\n"), &[]);
        assert!(errors[0].contains("test.temperature: expected a number, found string"), "{errors:?}");
    }

    #[test]
    fn command_backend() {
        let config = ok("backend = \"command\"\ncommand = [\"./agent.sh\", \"--fast\"]\ntimeout = \"5s\"\n");
        let want =
            CommandSettings { timeout: Duration::from_secs(5), ..CommandSettings::new(&["./agent.sh", "--fast"]) };
        assert_eq!(want.env, ["PATH", "HOME", "LANG", "TZ", "USER"]);
        assert_eq!(config.backend, AgentBackend::Command(want));
        let shown = config.describe();
        assert!(shown.starts_with("command: ./agent.sh --fast (timeout 5s, env PATH HOME LANG TZ USER)"), "{shown}");
        for text in ["backend = \"command\"\n", "backend = \"command\"\ncommand = []\n"] {
            let (_, errors) = parse(text, &[]);
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].contains("test.command: required"), "{errors:?}");
        }
    }

    #[test]
    fn command_env_is_an_allowlist_of_names() {
        let config = ok("backend = \"command\"\ncommand = [\"x\"]\nenv = [\"PATH\", \"LC_ALL\", \"PATH\", \"_X1\"]\n");
        let AgentBackend::Command(s) = &config.backend else { panic!("{config:?}") };
        assert_eq!(s.env, ["PATH", "LC_ALL", "_X1"]);
        let config = ok("backend = \"command\"\ncommand = [\"x\"]\nenv = []\n");
        let AgentBackend::Command(s) = &config.backend else { panic!("{config:?}") };
        assert!(s.env.is_empty());
        let (_, errors) =
            parse("backend = \"command\"\ncommand = [\"x\"]\nenv = [\"A=b\", \"\", \"1X\", \"OK\"]\n", &[]);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("test.env: \"A=b\" is not a variable name"), "{errors:?}");
        assert!(errors[1].contains("test.env: \"\" is not a variable name"), "{errors:?}");
        assert!(errors[2].contains("test.env: \"1X\" is not a variable name"), "{errors:?}");
        let (_, errors) = parse("backend = \"command\"\ncommand = [\"x\"]\nenv = \"PATH\"\n", &[]);
        assert!(errors[0].contains("test.env: expected a list of strings"), "{errors:?}");
        let (_, errors) = parse("env = [\"PATH\"]\n", &[]);
        assert!(errors[0].contains("test.env: unknown key"), "{errors:?}");
    }

    #[test]
    fn keys_of_another_backend_are_unknown() {
        let (_, errors) = parse("backend = \"command\"\ncommand = [\"x\"]\nmodel = \"m\"\n", &[]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("test.model: unknown key"), "{errors:?}");
        let (_, errors) =
            parse("backend = \"openai\"\nbase_url = \"http://x\"\nmodel = \"m\"\ncommand = [\"x\"]\n", &[]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("test.command: unknown key"), "{errors:?}");
        let (_, errors) = parse("api_key = \"k\"\n", &[]);
        assert!(errors[0].contains("test.api_key: unknown key"), "{errors:?}");
    }

    #[test]
    fn userinfo_is_hidden() {
        assert_eq!(without_userinfo("https://u:p@host/v1"), "https://***@host/v1");
        assert_eq!(without_userinfo("https://host/v1?a=b@c"), "https://host/v1?a=b@c");
        assert_eq!(without_userinfo("host"), "host");
    }
}
