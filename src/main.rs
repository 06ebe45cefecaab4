/*!
The `switchboard` command line: `run`, `check`, `status`, `send`, `pairing`,
`--version`.

`main` parses arguments, loads the config and hands over: `run` starts logging and the
gateway (`switchboard::gateway`) and maps its end to the exit code: 0 stopped cleanly,
78 configuration or credentials unusable, 1 failure worth a restart.
*/

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use crossbeam_channel::{Receiver, unbounded};

use switchboard::config::{self, Config};
use switchboard::status::{self, Status};
use switchboard::supervisor::state::{EXIT_CONFIG, EXIT_FAILURE, EXIT_OK};
use switchboard::{auth, delivery, gateway, log as logging};

/// Exit code of a command that failed for a reason other than the config.
const EXIT_USAGE: i32 = 2;

const USAGE: &str = "\
usage: switchboard [--config PATH] [COMMAND [ARGS]]

commands:
  run                      start the gateway (the default)
  check                    validate the config and print a summary (exit 0, or 78 on errors)
  status [--json]          show the gateway's status, undelivered and dead-lettered messages
  send TARGET TEXT|-       queue a message (TEXT, or standard input for -), whether or not
                           the gateway runs; TARGET is NAME (its home_channel),
                           NAME:CHAT or NAME:CHAT:THREAD (quote ids with `:` as NAME:\"a:b\")
  pairing list             pending pairing requests and approved users
  pairing approve PLATFORM CODE
  pairing revoke PLATFORM USER

options:
  --config PATH   the config file (default: $SWITCHBOARD_CONFIG, else ./gateway.toml;
                  when ./gateway.toml does not exist the built-in default is used)
  --version       print the version
  --help          print this help";

/// What the command line asked for.
struct Cli {
    command: String,
    /// What follows the command (`send`'s target and text, `pairing`'s words).
    args: Vec<String>,
    /// `Some` when given with `--config` or `$SWITCHBOARD_CONFIG`: then it must exist.
    config: Option<PathBuf>,
    json: bool,
}

fn main() -> ExitCode {
    let cli = match parse_args() {
        Ok(Some(cli)) => cli,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e}\n\n{USAGE}");
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    let code = match cli.command.as_str() {
        "run" => with_config(&cli, run),
        "check" => with_config(&cli, check),
        "status" => with_config(&cli, |c| show_status(c, cli.json)),
        "send" => with_config(&cli, |c| send(c, &cli.args)),
        "pairing" => with_config(&cli, |c| pairing(c, &cli.args)),
        // `check_words` let no other command through.
        other => unreachable!("unknown command `{other}`"),
    };
    ExitCode::from(code as u8)
}

/// The command line, checked: `Err` says what is wrong (printed with the usage, exit 2).
fn parse_args() -> Result<Option<Cli>, String> {
    use lexopt::prelude::*;
    let config = std::env::var_os("SWITCHBOARD_CONFIG").map(PathBuf::from);
    let mut cli = Cli { command: "run".into(), args: vec![], config, json: false };
    let mut command = None;
    let mut parser = lexopt::Parser::from_env();
    let text = |v: std::ffi::OsString| v.string().map_err(|e| e.to_string());
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("config") | Short('c') => cli.config = Some(parser.value().map_err(|e| e.to_string())?.into()),
            Long("json") => cli.json = true,
            Long("version") | Short('V') => {
                println!("switchboard {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            Long("help") | Short('h') => {
                println!("{USAGE}");
                return Ok(None);
            }
            Value(v) if command.is_none() => command = Some(text(v)?),
            Value(v) => cli.args.push(text(v)?),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    cli.command = command.unwrap_or(cli.command);
    check_words(&cli)?;
    Ok(Some(cli))
}

/// Each command takes exactly its own words, and `--json` only `status`: a word too
/// many (`switchboard run extra`) is a mistake to point out, never ignored.
fn check_words(cli: &Cli) -> Result<(), String> {
    let words: Vec<&str> = cli.args.iter().map(String::as_str).collect();
    let (fits, expected) = match cli.command.as_str() {
        "run" | "check" | "status" => (words.is_empty(), "no arguments"),
        "send" => (words.len() == 2, "TARGET and TEXT (or - for standard input)"),
        "pairing" => (
            matches!(words.as_slice(), ["list"] | ["approve", _, _] | ["revoke", _, _]),
            "list, approve PLATFORM CODE, or revoke PLATFORM USER",
        ),
        other => return Err(format!("unknown command `{other}`")),
    };
    if !fits {
        let given = if words.is_empty() { "none".to_string() } else { format!("`{}`", words.join(" ")) };
        return Err(format!("`{}` takes {expected}; given: {given}", cli.command));
    }
    if cli.json && cli.command != "status" {
        return Err(format!("`--json` applies to `status` only, not to `{}`", cli.command));
    }
    Ok(())
}

/// Load the config, or print every problem in it and return 78.
fn with_config(cli: &Cli, f: impl FnOnce(Config) -> i32) -> i32 {
    // A path from --config or $SWITCHBOARD_CONFIG must exist; only the default path
    // falls back to the embedded config.
    // `status` and `pairing` only read the state directory: run from a shell without the
    // token variables, they must not fail on them.
    let needs = match cli.command.as_str() {
        "status" | "pairing" => config::Needs::NoSecrets,
        _ => config::Needs::Secrets,
    };
    let loaded = match &cli.config {
        Some(path) => config::load_for(path, true, needs),
        None => config::load_for(std::path::Path::new(config::DEFAULT_PATH), false, needs),
    };
    match loaded {
        Ok(config) => f(config),
        Err(errors) => {
            eprint!("{errors}");
            EXIT_CONFIG
        }
    }
}

fn check(config: Config) -> i32 {
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    print!("{}", config.summary());
    // What `run` would refuse, so that `check` never passes a config `run` rejects.
    let problems = config.run_problems();
    if !problems.is_empty() {
        eprint!("{}", config::ConfigErrors(problems));
        return EXIT_CONFIG;
    }
    println!("config OK");
    EXIT_OK
}

fn show_status(config: Config, json: bool) -> i32 {
    let dir = &config.gateway.state_dir;
    match Status::read(dir) {
        Ok(s) if json => {
            println!("{}", serde_json::to_string_pretty(&s).expect("status serializes"));
            EXIT_OK
        }
        Ok(s) => {
            print!("{}", s.render(status::pid_alive(s.pid), status::unix_now()));
            print!("{}", delivery_report(&config));
            EXIT_OK
        }
        Err(e) => {
            eprintln!("switchboard: no status in {} ({e}); has the gateway run with this config?", dir.display());
            // What waits to be sent is on disk whether or not a gateway ever ran.
            print!("{}", delivery_report(&config));
            EXIT_FAILURE
        }
    }
}

/// How many parked deliveries `status` shows one by one.
const NEWEST_SHOWN: usize = 5;

/// What waits in the outbox, and what was set aside: unknown outcomes (maybe
/// delivered, not re-sent) and dead letters (given up on). Set-aside deliveries are
/// summarised (counts per platform, the newest few, where the rest are): there may be
/// thousands of them.
fn delivery_report(config: &Config) -> String {
    let dir = &config.gateway.state_dir;
    let mut out = String::new();
    for (platform, n) in delivery::queued(dir).into_iter().filter(|(_, n)| *n > 0) {
        out.push_str(&format!("outbox: {n} message(s) queued for {platform}\n"));
    }
    let parked = [
        (
            "unknown outcome",
            "unknown outcomes (maybe delivered, not re-sent)",
            delivery::unknown_outcome_summary(dir, NEWEST_SHOWN),
        ),
        ("dead letter", "dead letters (given up)", delivery::dead_letter_summary(dir, NEWEST_SHOWN)),
    ];
    for (one, what, summary) in parked {
        if summary.is_empty() {
            continue;
        }
        let total: usize = summary.iter().map(|s| s.count).sum();
        let per: Vec<String> = summary.iter().map(|s| format!("{} {}", s.platform, s.count)).collect();
        let kept = status::span(config.delivery.retention.as_secs_f64());
        out.push_str(&format!("{what}: {total} ({}), each kept for {kept}\n", per.join(", ")));
        let mut newest: Vec<&delivery::Parked> = summary.iter().flat_map(|s| &s.newest).collect();
        newest.sort_by_key(|p| (p.parked_at.unwrap_or(p.created_at), p.file.clone()));
        let skip = newest.len().saturating_sub(NEWEST_SHOWN);
        if total > NEWEST_SHOWN {
            out.push_str(&format!("  the newest {NEWEST_SHOWN}:\n"));
        }
        for p in &newest[skip..] {
            let error = p.error.as_deref().unwrap_or("no error recorded");
            out.push_str(&format!(
                "{one}: {}:{} \"{}\" ({error}) {}\n",
                p.platform,
                p.chat_id,
                p.preview,
                p.file.display()
            ));
        }
        let dirs: Vec<String> = summary.iter().map(|s| s.dir.display().to_string()).collect();
        out.push_str(&format!(
            "  all of them: ls {}; to send one again, move its file into {}/outbox/PLATFORM/\n",
            dirs.join(" "),
            dir.display()
        ));
    }
    out
}

/// `switchboard run`
fn run(config: Config) -> i32 {
    switchboard::memory::exec_without_thread_caches();
    switchboard::memory::configure();
    // Read before any thread exists: the local offset cannot be read safely later.
    let utc_offset = time::UtcOffset::current_local_offset().map_or(0, |o| o.whole_seconds());
    let state_dir = &config.gateway.state_dir;
    // The state directory first: the log file usually lives in it, and a second gateway
    // on it must refuse before it opens (or logs into) anything there.
    let _state_lock = match gateway::claim_state_dir(state_dir) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return EXIT_CONFIG;
        }
    };
    let mut secrets: Vec<String> = config.secrets().iter().map(|s| s.expose().to_string()).collect();
    secrets.extend(config.agent.secrets().iter().map(|s| s.expose().to_string()));
    if let Err(e) = logging::init(config.gateway.log_level, config.gateway.log_file.as_deref(), secrets) {
        eprintln!("switchboard: cannot start logging: {e}");
        return EXIT_CONFIG;
    }
    // A panicking adapter is caught and reported by the harness; the panic message
    // itself belongs in the log (and the log file), not only on standard error.
    std::panic::set_hook(Box::new(|info| log::error!("{info}")));
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
    log::info!(
        "switchboard {} starting (config {}, state {})",
        env!("CARGO_PKG_VERSION"),
        config.file.display(),
        state_dir.display()
    );
    let started = listen_for_signals()
        .map_err(gateway::StartError::from)
        .and_then(|shutdown| gateway::run(&config, utc_offset, shutdown));
    started.unwrap_or_else(|e| {
        log::error!("{e}");
        if e.is_setup() { EXIT_CONFIG } else { EXIT_FAILURE }
    })
}

/// `switchboard send TARGET TEXT|-`
fn send(config: Config, args: &[String]) -> i32 {
    let [target, text] = args else {
        eprintln!("switchboard: usage: switchboard send TARGET TEXT (or - to read the text from standard input)");
        return EXIT_USAGE;
    };
    let mut text = text.clone();
    if text == "-" {
        text.clear();
        if let Err(e) = std::io::stdin().read_to_string(&mut text) {
            eprintln!("switchboard: cannot read standard input: {e}");
            return EXIT_FAILURE;
        }
        // `echo text | switchboard send T -` ends with a newline nobody meant to send.
        text.truncate(text.trim_end_matches(['\n', '\r']).len());
    }
    report(delivery::send_command(&config, target, &text))
}

/// `switchboard pairing list | approve PLATFORM CODE | revoke PLATFORM USER`
fn pairing(config: Config, args: &[String]) -> i32 {
    let known: Vec<String> = config.platforms.iter().filter(|p| p.enabled).map(|p| p.name.clone()).collect();
    report(auth::pairing_command(&config.gateway.state_dir, &known, args, std::time::SystemTime::now()))
}

/// Print a command's answer; its exit code.
fn report(result: Result<String, String>) -> i32 {
    match result {
        Ok(text) => {
            println!("{text}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("switchboard: {e}");
            EXIT_FAILURE
        }
    }
}

/// SIGINT and SIGTERM, forwarded into a channel the supervisor selects on.
fn listen_for_signals() -> std::io::Result<Receiver<()>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let (tx, rx) = unbounded();
    switchboard::supervise::spawn("signals", move || {
        for signal in signals.forever() {
            log::info!("received signal {signal}");
            if tx.send(()).is_err() {
                break;
            }
        }
    })?;
    Ok(rx)
}
