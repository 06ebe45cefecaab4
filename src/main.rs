/*!
The `switchboard` command line: `run`, `check`, `status`, `--version`.

`main` parses arguments, loads the config, starts logging and the gateway's threads,
runs the supervisor and maps its decision to the exit code: 0 stopped cleanly, 78
configuration or credentials unusable, 1 failure worth a restart.
*/

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crossbeam_channel::{Receiver, bounded, unbounded};

use switchboard::adapter::Wiring;
use switchboard::config::{self, Config};
use switchboard::delivery::{self, Outbox};
use switchboard::directory::Directory;
use switchboard::router::Router;
use switchboard::status::{self, Status};
use switchboard::supervisor::SupervisorLoop;
use switchboard::supervisor::state::{EXIT_CONFIG, EXIT_FAILURE, EXIT_OK};
use switchboard::{agent, fsutil, log as logging};

const USAGE: &str = "\
usage: switchboard [--config PATH] [COMMAND]

commands:
  run             start the gateway (the default)
  check           validate the config and print a summary (exit 0, or 78 on errors)
  status [--json] show the running gateway's status.json

options:
  --config PATH   the config file (default: $SWITCHBOARD_CONFIG, else ./gateway.toml;
                  when ./gateway.toml does not exist the built-in default is used)
  --version       print the version
  --help          print this help";

/// What the command line asked for.
struct Cli {
    command: String,
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
            return ExitCode::from(2);
        }
    };
    let code = match cli.command.as_str() {
        "run" => with_config(&cli, run),
        "check" => with_config(&cli, check),
        "status" => with_config(&cli, |c| show_status(c, cli.json)),
        other => {
            eprintln!("switchboard: unknown command `{other}`\n\n{USAGE}");
            2
        }
    };
    ExitCode::from(code as u8)
}

fn parse_args() -> Result<Option<Cli>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut cli =
        Cli { command: "run".into(), config: std::env::var_os("SWITCHBOARD_CONFIG").map(PathBuf::from), json: false };
    let mut command = None;
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") | Short('c') => cli.config = Some(parser.value()?.into()),
            Long("json") => cli.json = true,
            Long("version") | Short('V') => {
                println!("switchboard {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            Long("help") | Short('h') => {
                println!("{USAGE}");
                return Ok(None);
            }
            Value(v) if command.is_none() => command = Some(v.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    cli.command = command.unwrap_or(cli.command);
    Ok(Some(cli))
}

/// Load the config, or print every problem in it and return 78.
fn with_config(cli: &Cli, f: impl FnOnce(Config) -> i32) -> i32 {
    // A path from --config or $SWITCHBOARD_CONFIG must exist; only the default path
    // falls back to the embedded config.
    let loaded = match &cli.config {
        Some(path) => config::load_or_default(path, true),
        None => config::load_or_default(std::path::Path::new(config::DEFAULT_PATH), false),
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
    print!("{}", config.summary());
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
            EXIT_OK
        }
        Err(e) => {
            eprintln!("switchboard: no status in {} ({e}); has the gateway run with this config?", dir.display());
            EXIT_FAILURE
        }
    }
}

/// Start every thread and supervise until the gateway decides to exit.
fn run(config: Config) -> i32 {
    let secrets = config.secrets().iter().map(|s| s.expose().to_string()).collect();
    if let Err(e) = logging::init(config.gateway.log_level, config.gateway.log_file.as_deref(), secrets) {
        eprintln!("switchboard: cannot start logging: {e}");
        return EXIT_CONFIG;
    }
    // A panicking adapter is caught and reported by the harness; the panic message
    // itself belongs in the log (and the log file), not only on standard error.
    std::panic::set_hook(Box::new(|info| log::error!("{info}")));
    let state_dir = config.gateway.state_dir.clone();
    if let Err(e) = fsutil::create_private_dir(&state_dir) {
        log::error!("cannot create state_dir {}: {e}", state_dir.display());
        return EXIT_CONFIG;
    }
    match start(&config) {
        Ok(code) => code,
        Err(e) => {
            log::error!("cannot start: {e}");
            EXIT_FAILURE
        }
    }
}

fn start(config: &Config) -> std::io::Result<i32> {
    let state_dir = config.gateway.state_dir.clone();
    log::info!(
        "switchboard {} starting (config {}, state {})",
        env!("CARGO_PKG_VERSION"),
        config.file.display(),
        state_dir.display()
    );
    let (events_tx, events) = unbounded();
    // Bounded: a flood of inbound messages slows the adapters instead of filling memory.
    let (inbound_tx, inbound) = bounded(1024);
    // Opening the outbox picks up what an earlier run (or `switchboard send`) queued.
    let outlets = Outbox::open(&state_dir, config.delivery.clone(), &delivery::platform_limits(config))?;
    let directory = Arc::new(Directory::load(&state_dir));
    let router = Router::start(inbound, agent::build(&config.agent), outlets.clone(), directory.clone())?;
    outlets.start_workers()?;
    let wiring = Wiring {
        events: events_tx,
        inbound: inbound_tx,
        outlets: outlets.clone(),
        state_dir,
        lock_dir: config.gateway.lock_dir.clone(),
    };
    let shutdown = listen_for_signals()?;
    let decision = SupervisorLoop::new(config, wiring, directory).run(events, shutdown, |deadline| {
        if !router.drain(deadline) {
            log::warn!("stopping with messages still unanswered");
        }
        let left = outlets.drain(deadline);
        if left > 0 {
            log::warn!("stopping with {left} replies not delivered; they stay in the outbox for the next start");
        }
    });
    outlets.quit();
    // A send in flight when the process exits is found claimed on the next start and
    // set aside as unknown-outcome: give it a moment to finish instead.
    if !outlets.join(std::time::Instant::now() + std::time::Duration::from_secs(5)) {
        log::warn!("stopping while a delivery is being sent; its outcome will be unknown");
    }
    log::info!("stopped (exit code {})", decision.code);
    Ok(decision.code)
}

/// SIGINT and SIGTERM, forwarded into a channel the supervisor selects on.
fn listen_for_signals() -> std::io::Result<Receiver<()>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let (tx, rx) = unbounded();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            log::info!("received signal {signal}");
            if tx.send(()).is_err() {
                break;
            }
        }
    })?;
    Ok(rx)
}
