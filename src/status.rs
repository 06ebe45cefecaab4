/*!
`state_dir/status.json`: what the gateway and each platform are doing, for people and
for monitoring.

The supervisor rewrites it atomically on every state change; `switchboard status` reads
it back and prints it (or the JSON). Times are Unix seconds as floats, or null. The
file never holds a secret: error messages are built without tokens by the adapters.
*/

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::supervisor::state::{PlatformRecord, Supervisor};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub state: String,
    pub exit_reason: Option<String>,
    pub updated_at: f64,
    pub platforms: BTreeMap<String, PlatformStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlatformStatus {
    pub kind: String,
    pub state: String,
    pub attempts: u32,
    pub next_retry_at: Option<f64>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub connected_since: Option<f64>,
    pub last_event_at: Option<f64>,
}

/// `state_dir/status.json`
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Turns the supervisor's monotonic instants into wall-clock seconds, both read at
/// the same moment.
struct Clock {
    instant: Instant,
    unix: f64,
}

impl Clock {
    fn unix(&self, t: Option<Instant>) -> Option<f64> {
        let t = t?;
        Some(match t.checked_duration_since(self.instant) {
            Some(ahead) => self.unix + ahead.as_secs_f64(),
            None => self.unix - self.instant.duration_since(t).as_secs_f64(),
        })
    }
}

impl Status {
    /// A snapshot of the supervisor, with `state` overriding the derived gateway state
    /// (`stopping` while the last replies drain, `stopped` at the end).
    pub fn of(sup: &Supervisor, state: Option<&str>) -> Status {
        let clock = Clock { instant: Instant::now(), unix: unix_now() };
        let platform = |r: &PlatformRecord| PlatformStatus {
            kind: r.kind.to_string(),
            state: r.state.as_str().to_string(),
            attempts: r.attempts,
            next_retry_at: clock.unix(r.next_retry),
            error_code: r.error.as_ref().map(|e| e.code.clone()),
            error_message: r.error.as_ref().map(|e| e.message.clone()),
            connected_since: clock.unix(r.connected_since),
            last_event_at: clock.unix(r.last_event_at),
        };
        Status {
            pid: std::process::id(),
            state: state.unwrap_or(sup.gateway_state().as_str()).to_string(),
            exit_reason: sup.exit_reason().map(str::to_string),
            updated_at: clock.unix,
            platforms: sup.platforms().iter().map(|(name, r)| (name.clone(), platform(r))).collect(),
        }
    }

    pub fn write(&self, state_dir: &Path) -> io::Result<()> {
        // Serializing plain structs of strings and numbers cannot fail.
        let json = serde_json::to_vec_pretty(self).expect("status serializes");
        fsutil::write_atomic(&path(state_dir), &json)
    }

    pub fn read(state_dir: &Path) -> io::Result<Status> {
        let text = std::fs::read(path(state_dir))?;
        serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The status for a person: one line for the gateway, one per platform.
    pub fn render(&self, pid_alive: bool, now: f64) -> String {
        let mut out = format!("gateway: {} (PID {})", self.state, self.pid);
        let ended = matches!(self.state.as_str(), "stopped" | "startup_failed");
        if !pid_alive && !ended {
            out.push_str(" — that process is no longer running; this status is stale");
        }
        out.push_str(&format!(", updated {}\n", ago(now - self.updated_at)));
        if let Some(reason) = &self.exit_reason {
            out.push_str(&format!("  exit reason: {reason}\n"));
        }
        for (name, p) in &self.platforms {
            out.push_str(&format!("  {name} ({}): {}", p.kind, p.state));
            if let Some(since) = p.connected_since.filter(|_| p.state == "connected") {
                out.push_str(&format!(" for {}", span(now - since)));
            }
            if p.attempts > 0 {
                out.push_str(&format!(", {} failed attempts", p.attempts));
            }
            if let Some(at) = p.next_retry_at {
                out.push_str(&format!(", next retry in {}", span((at - now).max(0.0))));
            }
            if let (Some(code), Some(msg)) = (&p.error_code, &p.error_message) {
                out.push_str(&format!("\n    last error {code}: {msg}"));
            }
            out.push('\n');
        }
        out
    }
}

/// Whether process `pid` is alive (Linux: it has a `/proc` entry).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `42 s`, `5 min`, `3 h`, `30 days`.
pub fn span(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

fn ago(secs: f64) -> String {
    format!("{} ago", span(secs.max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        let platform = PlatformStatus {
            kind: "telegram".into(),
            state: "retrying".into(),
            attempts: 2,
            next_retry_at: Some(1042.0),
            error_code: Some("telegram_network_error".into()),
            error_message: Some("connection refused".into()),
            connected_since: None,
            last_event_at: Some(990.0),
        };
        Status {
            pid: 7,
            state: "degraded".into(),
            exit_reason: None,
            updated_at: 995.0,
            platforms: [("tg".to_string(), platform)].into(),
        }
    }

    #[test]
    fn renders_next_retry_and_last_error() {
        let text = sample().render(true, 1000.0);
        assert!(text.starts_with("gateway: degraded (PID 7), updated 5 s ago"), "{text}");
        assert!(text.contains("tg (telegram): retrying, 2 failed attempts, next retry in 42 s"), "{text}");
        assert!(text.contains("last error telegram_network_error: connection refused"), "{text}");
        assert!(!text.contains("stale"));
    }

    #[test]
    fn says_when_the_recorded_pid_is_gone() {
        assert!(sample().render(false, 1000.0).contains("no longer running"));
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        sample().write(dir.path()).unwrap();
        assert_eq!(Status::read(dir.path()).unwrap(), sample());
    }
}
