/*!
Counting the gateway's syncs and thread creations with `strace`.

The gateway runs under `strace -f --seccomp-bpf -y -T -e trace=fsync,fdatasync,clone,clone3,fork,vfork
-ttt -o FILE` ([`Strace::wrapper`]). With `--seccomp-bpf` only the traced calls stop the
process, so the rest of its work runs at full speed. Every call of every thread is one line
with a wall-clock timestamp, so [`Strace::count`] can count the calls made within any window
after the fact, once the gateway has exited and `strace` has written everything out.

Counting at the system call sees every sync, also one that does not go through
`switchboard::fsutil` (whose own `sync_count` would miss it), and every thread, also one
that lived a microsecond (which sampling `/proc/PID/task` would miss).

`BENCH_KEEP_TRACE=PREFIX` keeps a copy of each trace counted, as `PREFIX.FROM-TO` (the
window counted, in seconds since the epoch), to look at by hand.

Without `strace` on the machine, [`Strace::available`] is false and the bench reports the
figures as not measured.
*/

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// The calls that create a thread or a process.
const CREATE: [&str; 4] = ["clone", "clone3", "fork", "vfork"];
/// The calls that sync a file.
const SYNC: [&str; 2] = ["fsync", "fdatasync"];

/// One trace file.
pub struct Strace {
    file: PathBuf,
}

/// Calls counted in a window.
#[derive(Clone, Debug, Default)]
pub struct Calls {
    pub syncs: u64,
    pub creations: u64,
    /// Syncs per file, the path below the state directory with digits as `N`
    /// (`outbox/tg/journal`, `sessions/N.jsonl`): where they come from.
    pub syncs_by_file: BTreeMap<String, u64>,
    /// Seconds spent in the syncs (`-T`: from entry to return, as each thread waited).
    pub sync_seconds: f64,
}

impl Strace {
    /// Whether `strace` runs here.
    pub fn available() -> bool {
        let status = Command::new("strace").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
        status.is_ok_and(|s| s.success())
    }

    /// A trace written to `dir/strace.txt`.
    pub fn new(dir: &Path) -> Strace {
        Strace { file: dir.join("strace.txt") }
    }

    /// The command line to put before the gateway's.
    pub fn wrapper(&self) -> Vec<String> {
        let calls = format!("trace={}", [&CREATE[..], &SYNC[..]].concat().join(","));
        let args =
            ["strace", "-f", "--seccomp-bpf", "-qq", "-y", "-T", "-e", "signal=none", "-e", &calls, "-ttt", "-o"];
        args.iter().map(|a| a.to_string()).chain([self.file.display().to_string()]).collect()
    }

    /// The calls that began within `from..to` (wall clock). Read the trace after the
    /// gateway exited: `strace` buffers its output.
    pub fn count(&self, from: SystemTime, to: SystemTime) -> Calls {
        let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs_f64();
        let (from, to) = (secs(from), secs(to));
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        if let Some(keep) = std::env::var("BENCH_KEEP_TRACE").ok().filter(|k| !k.is_empty()) {
            // To look at by hand: the trace, with the window counted.
            let _ = std::fs::write(format!("{keep}.{from:.6}-{to:.6}"), &text);
        }
        let mut calls = Calls::default();
        // `PID SECONDS.MICROS name(args…) = result`, or `… <unfinished ...>` and later a
        // `PID SECONDS <... name resumed>` line, which is not a new call.
        for line in text.lines() {
            // The pid is padded to five columns: split on runs of spaces.
            let Some((_pid, rest)) = line.trim_start().split_once(' ') else { continue };
            let Some((at, call)) = rest.trim_start().split_once(' ') else { continue };
            let Ok(at) = at.parse::<f64>() else { continue };
            if at < from || at >= to {
                continue;
            }
            let name = call.split('(').next().unwrap_or_default();
            let resumed = call.strip_prefix("<... ").and_then(|c| c.split(' ').next()).unwrap_or_default();
            if SYNC.contains(&name) || SYNC.contains(&resumed) {
                calls.sync_seconds += call_seconds(call);
            }
            if SYNC.contains(&name) {
                calls.syncs += 1;
                *calls.syncs_by_file.entry(synced_file(call)).or_default() += 1;
            } else if CREATE.contains(&name) {
                calls.creations += 1;
            }
        }
        calls
    }
}

/// The time `-T` appends to a finished call (`… = 0 <0.001234>`); 0 for an unfinished one.
fn call_seconds(call: &str) -> f64 {
    let last = call.rsplit(' ').next().unwrap_or_default();
    last.strip_prefix('<').and_then(|t| t.strip_suffix('>')).and_then(|t| t.parse().ok()).unwrap_or(0.0)
}

/// The file of `fsync(5</tmp/x/state/outbox/tg/journal>) = 0` (as `-y` prints it), below
/// the state directory, digits replaced: `outbox/tg/journal`.
fn synced_file(call: &str) -> String {
    let path = call.split_once('<').and_then(|(_, rest)| rest.split_once('>')).map_or("?", |(path, _)| path);
    let below = path.split_once("/state/").map_or(path, |(_, rest)| rest);
    let below = if path.ends_with("/state") { "(the state directory)" } else { below };
    let mut generic = String::new();
    for c in below.chars() {
        if !c.is_ascii_digit() {
            generic.push(c);
        } else if !generic.ends_with('N') {
            generic.push('N');
        }
    }
    generic
}
