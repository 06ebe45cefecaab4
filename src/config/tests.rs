//! Loader behaviour, one test per rule. They use their own platform kinds (`plain`, a
//! kind with no keys, and `bot`, a kind with a token and a few typed keys) and a fake
//! environment, so they depend on neither the real platforms nor the process env.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::platform::Platform;

const SECRET: &str = "123456:SECRET-token-value";

fn env(name: &str) -> Option<String> {
    match name {
        "HOME" => Some("/home/u".into()),
        "TOKEN" => Some(SECRET.into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

struct PlainSpec;

impl PlatformSpec for PlainSpec {
    fn build(&self) -> Box<dyn Platform> {
        unreachable!("config tests never run a platform")
    }
    fn describe(&self) -> String {
        "plain".into()
    }
}

fn parse_plain(_: &mut Section) -> Arc<dyn PlatformSpec> {
    Arc::new(PlainSpec)
}

struct BotSpec {
    token: Secret,
    api_base: String,
    poll_timeout: Duration,
    chats: Vec<String>,
}

impl PlatformSpec for BotSpec {
    fn build(&self) -> Box<dyn Platform> {
        unreachable!("config tests never run a platform")
    }
    fn lock_identity(&self) -> Option<&Secret> {
        Some(&self.token)
    }
    fn describe(&self) -> String {
        format!("{} poll {:?} token {} chats {:?}", self.api_base, self.poll_timeout, self.token, self.chats)
    }
}

fn parse_bot(s: &mut Section) -> Arc<dyn PlatformSpec> {
    let token = s.secret("token");
    let api_base = s.string_or("api_base", "https://api.example");
    if !api_base.starts_with("http") {
        s.invalid("api_base", "must be an http(s) URL");
    }
    let poll_timeout = s.duration_or("poll_timeout", Duration::from_secs(50));
    let chats = s.string_list("chats").unwrap_or_default();
    Arc::new(BotSpec { token, api_base, poll_timeout, chats })
}

static KINDS: &[Kind] = &[Kind { name: "plain", parse: parse_plain }, Kind { name: "bot", parse: parse_bot }];

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    parse_with_kinds(text, Path::new("gateway.toml"), &env, KINDS)
}

fn errors(text: &str) -> Vec<String> {
    parse(text).unwrap_err().0.iter().map(ToString::to_string).collect()
}

fn bot(config: &Config, name: &str) -> Secret {
    let p = config.platforms.iter().find(|p| p.name == name).expect("platform present");
    p.spec.lock_identity().cloned().expect("a bot has a token")
}

#[test]
fn defaults_fill_every_section() {
    let config = parse("").unwrap();
    assert_eq!(config.gateway.state_dir, Path::new("./state"));
    assert!(config.warnings.is_empty());
    assert_eq!(config.gateway.log_level, log::LevelFilter::Info);
    assert_eq!(config.gateway.log_file, None);
    assert_eq!(config.reconnect, Reconnect::default());
    assert_eq!(config.reconnect.base, Duration::from_secs(30));
    assert_eq!(config.reconnect.cap, Duration::from_secs(300));
    assert_eq!(config.reconnect.max_attempts, 20);
    assert_eq!(config.agent.backend, crate::agent::AgentBackend::Echo);
    assert!(config.platforms.is_empty());
}

/// Token locks are abstract sockets now: a config that still sets `lock_dir` keeps
/// loading, with a warning that names the key and its line.
#[test]
fn token_locks_need_no_lock_dir_and_an_old_lock_dir_is_a_warning() {
    let old = parse("[gateway]\nlock_dir = \"/run/locks\"\n").unwrap();
    let warnings: Vec<String> = old.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].starts_with("gateway.toml:2:1: gateway.lock_dir: no longer used"), "{warnings:?}");
    // No environment at all ($HOME unset) is fine: nothing depends on it any more.
    assert!(parse_with_kinds("", Path::new("g.toml"), &|_| None, KINDS).is_ok());
}

#[test]
fn durations_take_ms_s_m_h() {
    let text = "[reconnect]\nbase = \"250ms\"\ncap = \"5m\"\nconnect_timeout = \"1h\"\nmax_attempts = 0\n";
    let r = parse(text).unwrap().reconnect;
    assert_eq!(r.base, Duration::from_millis(250));
    assert_eq!(r.cap, Duration::from_secs(300));
    assert_eq!(r.connect_timeout, Duration::from_secs(3600));
    assert_eq!(r.max_attempts, 0);
}

#[test]
fn bad_duration_unit_is_an_error() {
    assert_eq!(
        errors("[reconnect]\nbase = \"30x\"\n"),
        [
            "gateway.toml:2:8: reconnect.base: invalid duration `30x`: write a whole number and a unit: ms, s, m or h (e.g. \"30s\")"
        ]
    );
}

#[test]
fn bare_integer_duration_is_an_error_with_a_hint() {
    assert_eq!(
        errors("[reconnect]\ncap = 300\n"),
        ["gateway.toml:2:7: reconnect.cap: expected a duration string, found integer (write \"300s\")"]
    );
}

#[test]
fn reconnect_timings_are_validated() {
    let e = errors("[reconnect]\nbase = \"5m\"\ncap = \"1m\"\n");
    assert_eq!(e, ["gateway.toml:3:7: reconnect.cap: must be at least base (5m)"]);
    let e = errors("[reconnect]\nbase = \"0s\"\nconnect_timeout = \"0s\"\n");
    assert!(e[0].starts_with("gateway.toml:2:8: reconnect.base: must be greater than 0"), "{e:?}");
    assert_eq!(e[1], "gateway.toml:3:19: reconnect.connect_timeout: must be greater than 0");
}

#[test]
fn env_variables_are_expanded_in_any_string() {
    let text = "[gateway]\nstate_dir = \"${HOME}/state\"\n[platforms.b]\nkind = \"bot\"\ntoken = \"${TOKEN}\"\n";
    let config = parse(text).unwrap();
    assert_eq!(config.gateway.state_dir, Path::new("/home/u/state"));
    assert_eq!(bot(&config, "b").expose(), SECRET);
}

#[test]
fn unset_variable_names_the_variable_file_line_and_key() {
    let text = "[platforms.b]\nkind = \"bot\"\ntoken = \"${NOT_SET}\"\n";
    assert_eq!(errors(text), ["gateway.toml:3:9: platforms.b.token: environment variable `NOT_SET` is not set"]);
}

#[test]
fn empty_or_missing_secret_is_an_error() {
    let e = errors("[platforms.b]\nkind = \"bot\"\ntoken = \"${EMPTY}\"\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("gateway.toml:3:9: platforms.b.token: the secret is empty (`${EMPTY}` expanded"), "{e:?}");
    let e = errors("[platforms.b]\nkind = \"bot\"\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("gateway.toml:1:1: platforms.b.token: required, but missing"), "{e:?}");
}

#[test]
fn unknown_key_has_position_and_suggestion() {
    let text = "[reconnect]\nbase = \"30s\"\nmax_atempts = 5\n";
    assert_eq!(errors(text), ["gateway.toml:3:1: reconnect.max_atempts: unknown key (did you mean `max_attempts`?)"]);
    let text = "[platforms.tg]\nkind = \"bot\"\ntoken = \"x\"\n  tokn = \"y\"\n";
    assert_eq!(errors(text), ["gateway.toml:4:3: platforms.tg.tokn: unknown key (did you mean `token`?)"]);
}

#[test]
fn unknown_key_far_from_any_known_key_has_no_suggestion() {
    assert_eq!(errors("[agent]\ncolour = \"blue\"\n"), ["gateway.toml:2:1: agent.colour: unknown key"]);
}

#[test]
fn unknown_section_is_an_error() {
    assert_eq!(
        errors("[gatway]\nstate_dir = \"x\"\n"),
        ["gateway.toml:1:2: gatway: unknown section (did you mean `gateway`?)"]
    );
    assert_eq!(errors("verbose = true\n"), ["gateway.toml:1:1: verbose: unknown key"]);
}

#[test]
fn unknown_kind_suggests_the_nearest() {
    let e = errors("[platforms.b]\nkind = \"bto\"\ntoken = \"x\"\n");
    assert_eq!(
        e,
        [
            "gateway.toml:2:8: platforms.b.kind: unknown platform kind `bto` (did you mean `bot`?) (known kinds: plain, bot)"
        ]
    );
}

#[test]
fn kind_defaults_to_the_table_name() {
    let config = parse("[platforms.plain]\n").unwrap();
    assert_eq!(config.platforms[0].kind, "plain");
    let e = errors("[platforms.plian]\n");
    assert_eq!(e.len(), 1, "no unknown-key noise for a table whose kind is unknown: {e:?}");
    assert!(
        e[0].starts_with("gateway.toml:1:1: platforms.plian.kind: missing; `plian` is not a platform kind"),
        "{e:?}"
    );
    assert!(e[0].contains("did you mean `plain`?"), "{e:?}");
}

#[test]
fn wrong_types_are_errors() {
    let text = "[reconnect]\nmax_attempts = \"20\"\n[platforms.p]\nkind = \"plain\"\nenabled = \"yes\"\n";
    assert_eq!(
        errors(text),
        [
            "gateway.toml:2:16: reconnect.max_attempts: expected an integer, found string",
            "gateway.toml:5:11: platforms.p.enabled: expected true or false, found string",
        ]
    );
    assert_eq!(
        errors("[reconnect]\nmax_attempts = -1\n"),
        ["gateway.toml:2:16: reconnect.max_attempts: must be a whole number from 0 to 4294967295"]
    );
    assert_eq!(errors("gateway = 1\n"), ["gateway.toml:1:11: gateway: expected a table, found integer"]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = "[gateway]\nlog_level = \"loud\"\n[reconnect]\nbase = 30\n[platforms.b]\nkind = \"bot\"\ntokn = \"x\"\n";
    let e = errors(text);
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(e[0].starts_with("gateway.toml:2:13: gateway.log_level: unknown value `loud`"), "{e:?}");
    assert!(e[1].starts_with("gateway.toml:4:8: reconnect.base: expected a duration string"), "{e:?}");
    assert!(e[2].starts_with("gateway.toml:5:1: platforms.b.token: required, but missing"), "{e:?}");
    assert!(e[3].starts_with("gateway.toml:7:1: platforms.b.tokn: unknown key (did you mean `token`?)"), "{e:?}");
    let shown = parse(text).unwrap_err().to_string();
    assert_eq!(shown.lines().count(), 4, "one line per problem: {shown}");
}

#[test]
fn three_problems_give_three_lines() {
    let text = "[reconnect]\nbse = \"1s\"\ncap = 5\n[agent]\nbackend = \"opnai\"\n";
    assert_eq!(parse(text).unwrap_err().to_string().lines().count(), 3);
}

#[test]
fn two_instances_of_one_kind() {
    let text =
        "[platforms.bot_a]\nkind = \"bot\"\ntoken = \"a\"\n[platforms.bot_b]\nkind = \"bot\"\ntoken = \"${TOKEN}\"\n";
    let config = parse(text).unwrap();
    let names: Vec<_> = config.platforms.iter().map(|p| (p.name.as_str(), p.kind)).collect();
    assert_eq!(names, [("bot_a", "bot"), ("bot_b", "bot")]);
    assert_eq!(bot(&config, "bot_a").expose(), "a");
    assert_eq!(bot(&config, "bot_b").expose(), SECRET);
}

#[test]
fn two_enabled_instances_may_not_share_a_token() {
    let text = "[platforms.a]\nkind = \"bot\"\ntoken = \"t\"\n[platforms.b]\nkind = \"bot\"\ntoken = \"t\"\n";
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("gateway.toml:4:12: platforms.b: uses the same bot token as [platforms.a]"), "{e:?}");
    assert!(!e[0].contains("\"t\""));
    // A disabled copy (a spare table kept for later) is fine.
    assert!(parse(&text.replace("[platforms.b]\n", "[platforms.b]\nenabled = false\n")).is_ok());
}

#[test]
fn platform_names_must_be_file_safe() {
    let e = errors("[platforms.\"Bot A\"]\nkind = \"plain\"\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("gateway.toml:1:12: platforms.Bot A: invalid platform name"), "{e:?}");
    assert!(errors("[platforms]\nb = 1\n")[0].contains("platforms.b: expected a table, found integer"));
}

#[test]
fn disabled_platform_may_lack_its_secrets() {
    let text = "[platforms.b]\nkind = \"bot\"\nenabled = false\ntoken = \"${NOT_SET}\"\napi_base = \"${ALSO_UNSET}\"\n";
    let config = parse(text).unwrap();
    assert!(!config.platforms[0].enabled);
    assert_eq!(bot(&config, "b").expose(), "");
    let config = parse("[platforms.b]\nkind = \"bot\"\nenabled = false\n").unwrap();
    assert_eq!(config.platforms.len(), 1);
}

#[test]
fn disabled_platform_is_still_checked_for_typos() {
    let text = "[platforms.b]\nkind = \"bot\"\nenabled = false\ntokn = \"x\"\npoll_timeout = 5\n";
    let e = errors(text);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].contains("platforms.b.tokn: unknown key (did you mean `token`?)"));
    assert!(e[1].contains("platforms.b.poll_timeout: expected a duration string"));
}

#[test]
fn syntax_errors_have_positions() {
    assert_eq!(
        errors("[reconnect]\nbase = 30s\n"),
        ["gateway.toml:2:8: string values must be quoted, expected literal string"]
    );
    let e = errors("[gateway\nstate_dir = \"x\"\n");
    assert!(e[0].starts_with("gateway.toml:1:9: "), "{e:?}");
}

#[test]
fn secrets_never_appear_in_errors_or_debug() {
    let text = format!(
        "[platforms.a]\nkind = \"bot\"\ntoken = \"{SECRET}\"\napi_base = \"ftp://x\"\ntokn = 1\n\
         [platforms.b]\nkind = \"bot\"\ntoken = \"${{TOKEN}}\"\nchats = [1]\n\
         [platforms.c]\nkind = \"bot\"\ntoken = 5\n[platforms.d]\nkind = \"bot\"\ntoken = \"${{{SECRET}}}\"\n"
    );
    let shown = parse(&text).unwrap_err();
    let (display, debug) = (shown.to_string(), format!("{shown:?}"));
    // a and b also share the token: a sixth error, which must not show it either.
    assert_eq!(display.lines().count(), 6, "{display}");
    assert!(!display.contains("SECRET") && !debug.contains("SECRET"), "{display}\n{debug}");

    let config = parse("[platforms.b]\nkind = \"bot\"\ntoken = \"${TOKEN}\"\n").unwrap();
    let (debug, summary) = (format!("{config:?}"), config.summary());
    assert!(!debug.contains("SECRET") && !summary.contains("SECRET"), "{debug}\n{summary}");
}

#[test]
fn syntax_error_text_is_not_quoted() {
    // The parser's own Display shows the offending line; we must not.
    let e = errors(&format!("token = \"{SECRET}\" extra\n"));
    assert!(!e.concat().contains("SECRET"), "{e:?}");
}

#[test]
fn log_level_and_backend_are_checked() {
    assert_eq!(parse("[gateway]\nlog_level = \"debug\"\n").unwrap().gateway.log_level, log::LevelFilter::Debug);
    assert_eq!(
        errors("[gateway]\nlog_level = \"wran\"\n"),
        [
            "gateway.toml:2:13: gateway.log_level: unknown value `wran` (did you mean `warn`?); expected one of: off, error, warn, info, debug, trace"
        ]
    );
    assert_eq!(
        errors("[agent]\nbackend = \"ecko\"\n"),
        [
            "gateway.toml:2:11: agent.backend: unknown value `ecko` (did you mean `echo`?); expected one of: echo, openai, command"
        ]
    );
}

#[test]
fn string_lists_and_paths() {
    let text = "[gateway]\nlog_file = \"/var/log/sb.log\"\n[platforms.b]\nkind = \"bot\"\ntoken = \"t\"\nchats = [\"a\", \"${HOME}\"]\n";
    let config = parse(text).unwrap();
    assert_eq!(config.gateway.log_file.as_deref(), Some(Path::new("/var/log/sb.log")));
    assert!(config.platforms[0].spec.describe().ends_with(r#"chats ["a", "/home/u"]"#));
    let e = errors("[gateway]\nstate_dir = \"\"\n[platforms.b]\nkind = \"bot\"\ntoken = \"t\"\nchats = [\"a\", 2]\n");
    assert_eq!(
        e,
        [
            "gateway.toml:2:13: gateway.state_dir: must not be empty",
            "gateway.toml:6:15: platforms.b.chats: expected a list of strings, found integer in it",
        ]
    );
}

#[test]
fn summary_lists_timings_and_platforms() {
    let text = "[reconnect]\nmax_attempts = 0\n[platforms.p]\nkind = \"plain\"\nenabled = false\n";
    let summary = parse(text).unwrap().summary();
    assert!(summary.contains("config: gateway.toml"), "{summary}");
    assert!(summary.contains("state_dir: ./state"), "{summary}");
    assert!(summary.contains("reconnect: base 30s, cap 5m, max_attempts forever, connect_timeout 30s"), "{summary}");
    assert!(summary.contains("agent: echo"), "{summary}");
    assert!(summary.contains("  p (plain): disabled – plain"), "{summary}");
}

#[test]
fn secrets_are_listed_for_log_redaction() {
    let text = "[platforms.a]\nkind = \"bot\"\ntoken = \"${TOKEN}\"\n[platforms.b]\nkind = \"bot\"\nenabled = false\ntoken = \"${UNSET}\"\n";
    let secrets = parse(text).unwrap().secrets();
    assert_eq!(secrets, [Secret::new(SECRET)], "empty secrets of disabled platforms are left out");
}

#[test]
fn section_for_test_reads_a_kind_table() {
    let mut s = Section::new_for_test("token = \"${T}\"\npol_timeout = \"5s\"\n", &[("T", "abc")]);
    let spec = parse_bot(&mut s);
    assert_eq!(spec.lock_identity().map(Secret::expose), Some("abc"));
    let problems: Vec<String> = s.finish().iter().map(ToString::to_string).collect();
    assert_eq!(problems, ["test.toml:2:1: platforms.test.pol_timeout: unknown key (did you mean `poll_timeout`?)"]);
}

#[test]
fn explicit_missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gateway.toml");
    let e = load_or_default(&missing, true).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}: cannot read the config file", missing.display())), "{e}");
    assert!(load(&missing).is_err(), "only ./gateway.toml falls back to the default");
}

#[test]
fn load_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sb.toml");
    std::fs::write(&path, "[reconnect]\nbase = \"1s\"\n").unwrap();
    let config = load(&path).unwrap();
    assert_eq!(config.file, path);
    assert_eq!(config.reconnect.base, Duration::from_secs(1));
}

#[test]
fn embedded_default_has_the_documented_shape() {
    // Stand-ins for the real kinds, which are still stubs: `console` has no keys, and
    // `telegram` reads the keys the commented-out example shows.
    static STAND_INS: &[Kind] =
        &[Kind { name: "console", parse: parse_plain }, Kind { name: "telegram", parse: parse_bot_as_telegram }];
    fn parse_bot_as_telegram(s: &mut Section) -> Arc<dyn PlatformSpec> {
        parse_bot(s)
    }
    let config = parse_with_kinds(DEFAULT_CONFIG, Path::new(EMBEDDED_LABEL), &env, STAND_INS).unwrap();
    assert_eq!(config.reconnect, Reconnect::default());
    assert_eq!(config.gateway.state_dir, Path::new("./state"));
    assert_eq!(config.agent.backend, crate::agent::AgentBackend::Echo);
    let names: Vec<_> = config.platforms.iter().map(|p| (p.name.as_str(), p.kind, p.enabled)).collect();
    assert_eq!(names, [("console", "console", true)]);

    // Uncommenting the Telegram example gives a valid table with the documented keys.
    let text = with_telegram_example();
    let env = |name: &str| (name == "TELEGRAM_BOT_TOKEN").then(|| "t".to_string()).or_else(|| env(name));
    let config = parse_with_kinds(&text, Path::new("g.toml"), &env, STAND_INS).unwrap();
    let p = config.platforms.iter().find(|p| p.name == "telegram").expect("telegram table");
    assert_eq!(p.spec.describe(), "https://api.telegram.org poll 50s token *** chats []");
}

/// The embedded default with its commented-out Telegram example uncommented.
fn with_telegram_example() -> String {
    let example = DEFAULT_CONFIG.find("# [platforms.telegram]").expect("the default shows a Telegram example");
    let uncommented: Vec<&str> =
        DEFAULT_CONFIG[example..].lines().map(|l| l.strip_prefix("# ").or(l.strip_prefix('#')).unwrap_or(l)).collect();
    format!("{}{}\n", &DEFAULT_CONFIG[..example], uncommented.join("\n"))
}

// The embedded default configures the console platform, whose `parse` is still an
// `unimplemented!` stub; un-ignore once it exists.
#[test]
fn embedded_default_parses() {
    let config = parse_str(DEFAULT_CONFIG, Path::new(EMBEDDED_LABEL), &env).unwrap();
    assert_eq!(config.reconnect, Reconnect::default());
    assert_eq!(config.gateway.state_dir, Path::new("./state"));
    assert_eq!(config.platforms.len(), 1);
    assert_eq!((config.platforms[0].name.as_str(), config.platforms[0].kind), ("console", "console"));
    let env = |name: &str| (name == "TELEGRAM_BOT_TOKEN").then(|| "123:abc".to_string()).or_else(|| env(name));
    let config = parse_str(&with_telegram_example(), Path::new("g.toml"), &env).unwrap();
    assert_eq!(config.platforms.len(), 2);
}

// Also needs the console platform: `load_or_default` parses the embedded default with
// the real kinds.
#[test]
fn missing_default_file_uses_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let config = load_or_default(&dir.path().join("gateway.toml"), false).unwrap();
    assert_eq!(config.file, Path::new(EMBEDDED_LABEL));
}

#[test]
fn environment_values_never_appear_in_errors() {
    let text = "[reconnect]\nbase = \"${TOKEN}\"\n[platforms.a]\nkind = \"${TOKEN}\"\n";
    let e = errors(text);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e.iter().all(|e| !e.contains(SECRET) && e.contains("${TOKEN}")), "{e:?}");
}

#[test]
fn a_platform_may_not_be_called_origin() {
    let e = errors("[platforms.origin]\nkind = \"plain\"\n");
    assert!(e[0].contains("platforms.origin: `origin` is a delivery target"), "{e:?}");
}

/// Issue 7 §5 "Commands that need no secret must not require one": `status` and
/// `pairing` read the config without the token variables, but a path still needs its.
#[test]
fn commands_that_need_no_secret_do_not_require_one() {
    let text = "[gateway]\nstate_dir = \"/srv/state\"\n[platforms.tg]\nkind = \"bot\"\ntoken = \"${UNSET_TOKEN}\"\n";
    let strict = parse(text).unwrap_err().to_string();
    assert!(strict.contains("platforms.tg.token: environment variable `UNSET_TOKEN` is not set"), "{strict}");
    let config = parse_with(text, Path::new("gateway.toml"), &env, KINDS, Needs::NoSecrets).unwrap();
    assert_eq!(config.gateway.state_dir, Path::new("/srv/state"));
    assert_eq!(bot(&config, "tg").expose(), "");
    // Where the state is must still be known exactly.
    let text = "[gateway]\nstate_dir = \"${UNSET_DIR}/state\"\n";
    let e = parse_with(text, Path::new("gateway.toml"), &env, KINDS, Needs::NoSecrets).unwrap_err().to_string();
    assert!(e.contains("gateway.state_dir: environment variable `UNSET_DIR` is not set"), "{e}");
}

/// Issue 7 §9 "`check` passes what `run` rejects": a token with a space or a newline
/// made `run` fail with a hint about `api_base`. It is a config error naming the key.
#[test]
fn check_passes_what_run_rejects_a_token_with_a_space_or_newline() {
    for token in ["123:abc def", "123:abc\n", "${TOKEN} "] {
        let e = errors(&format!("[platforms.tg]\nkind = \"bot\"\ntoken = {token:?}\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("gateway.toml:3:9: platforms.tg.token: contains a space or a line break"), "{e:?}");
        assert!(!e[0].contains("abc") && !e[0].contains(SECRET), "{e:?}");
    }
}

/// Issue 7 §9 "`check` passes what `run` rejects": no enabled platform, and a state_dir
/// or log_file that cannot be created, are found before `run` meets them.
#[test]
fn check_passes_what_run_rejects_no_platform_and_uncreatable_directories() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let text = format!(
        "[gateway]\nstate_dir = \"{}\"\nlog_file = \"{}\"\n[platforms.tg]\nkind = \"plain\"\nenabled = false\n",
        file.display(),
        file.join("logs/switchboard.log").display()
    );
    let problems: Vec<String> = parse(&text).unwrap().run_problems().iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].starts_with("gateway.toml: platforms: no platform is enabled"), "{problems:?}");
    assert_eq!(problems[1], format!("gateway.toml: gateway.state_dir: {}: it is not a directory", file.display()));
    assert!(problems[2].contains(&format!("cannot be created: {} is not a directory", file.display())), "{problems:?}");
    // A log file whose directory does not exist yet is fine: `run` creates it.
    let text = format!(
        "[gateway]\nlog_file = \"{}\"\n[platforms.p]\nkind = \"plain\"\n",
        dir.path().join("new/x.log").display()
    );
    assert_eq!(parse(&text).unwrap().run_problems(), []);
}

/// Issue 7 §9 "The command line": a duplicate TOML table reported `duplicate key`
/// without naming it. The key, file and line are named, and where it first was.
#[test]
fn a_duplicate_toml_table_or_key_is_named_with_file_and_line() {
    let e = errors("[gateway]\nstate_dir = \"a\"\n[reconnect]\nbase = \"1s\"\n[gateway]\nlog_level = \"debug\"\n");
    assert_eq!(e, ["gateway.toml:5:2: gateway: duplicate table (first defined at line 1); merge the two into one"]);
    let e = errors("[platforms.a]\nkind = \"plain\"\n[platforms.a]\n");
    assert_eq!(
        e,
        ["gateway.toml:3:12: platforms.a: duplicate table (first defined at line 1); merge the two into one"]
    );
    let e = errors("[platforms.tg]\nkind = \"bot\"\ntoken = \"${TOKEN}\"\ntoken = \"x\"\n");
    assert_eq!(e, ["gateway.toml:4:1: platforms.tg.token: duplicate key (first defined at line 3); keep one"]);
}
