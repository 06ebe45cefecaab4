/*!
The supervisor's brain: a pure state machine over platform lifecycle events.

[`Supervisor::handle`] takes one [`Input`] and the current time and returns the
[`Action`]s to carry out (spawn, stop, write status, rebuild the directory, exit). It
does no I/O and starts no threads, so every rule of the reconnect table in DESIGN.md is
unit-tested here with made-up instants.

Bookkeeping per platform instance: its state, the current generation (events from any
other generation are stale and ignored), and `attempts`, the number of failed connects
in the current outage. A reconnect that drops again within [`FLAP_WINDOW`] did not end
the outage: it counts as one more failed attempt, so a link that connects and drops at
once (a proxy that cuts every long poll) backs off to the cap and eventually gives up,
instead of being reconnected every `base` for ever. Failed platforms wait in `retries`,
a `BTreeMap` keyed by `(next retry instant, name)`; connecting platforms have a deadline
in `connect_deadlines`. The loop in `supervisor.rs` sleeps until the earliest of both.
*/

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::adapter::Event;
use crate::backoff;
use crate::config::Reconnect;
use crate::platform::Fatal;

/// A platform that drops within this long of reconnecting is still in the same outage:
/// the drop counts as one more failed attempt, so a flapping link backs off instead of
/// being retried every `base`. (The first connect after startup is not a reconnect: its
/// drop is a runtime failure, queued at attempt 0.)
pub const FLAP_WINDOW: Duration = Duration::from_secs(60);

/// How long a graceful stop waits for adapters to report that they ended.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// Exit codes (sysexits): 0 clean, 78 configuration or credentials unusable, 1 failure
/// worth a restart by the service manager.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_CONFIG: i32 = 78;

/// Lifecycle state of one platform instance, as shown in `status.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformState {
    Connecting,
    Connected,
    /// Failed with a retryable error; waiting in the retry map.
    Retrying,
    /// Failed with a non-retryable error; never retried.
    Fatal,
    /// Retried `max_attempts` times without success.
    GaveUp,
    /// Ended cleanly (end of input, shutdown) or disabled.
    Stopped,
}

impl PlatformState {
    pub fn as_str(self) -> &'static str {
        match self {
            PlatformState::Connecting => "connecting",
            PlatformState::Connected => "connected",
            PlatformState::Retrying => "retrying",
            PlatformState::Fatal => "fatal",
            PlatformState::GaveUp => "gave_up",
            PlatformState::Stopped => "stopped",
        }
    }

    /// Still doing something: the gateway has a reason to keep running.
    fn is_live(self) -> bool {
        matches!(self, PlatformState::Connecting | PlatformState::Connected | PlatformState::Retrying)
    }
}

/// The gateway as a whole, as shown in `status.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayState {
    Starting,
    Running,
    Degraded,
    Stopping,
    Stopped,
    StartupFailed,
}

impl GatewayState {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayState::Starting => "starting",
            GatewayState::Running => "running",
            GatewayState::Degraded => "degraded",
            GatewayState::Stopping => "stopping",
            GatewayState::Stopped => "stopped",
            GatewayState::StartupFailed => "startup_failed",
        }
    }
}

/// What the supervisor knows of one platform instance.
#[derive(Clone, Debug)]
pub struct PlatformRecord {
    pub kind: &'static str,
    pub state: PlatformState,
    pub generation: u64,
    /// Failed connects in the current outage.
    pub attempts: u32,
    pub next_retry: Option<Instant>,
    /// The last failure; cleared on connect.
    pub error: Option<Fatal>,
    pub connected_since: Option<Instant>,
    pub last_event_at: Option<Instant>,
    /// `attempts` when the platform last connected at the end of an outage (`None` for
    /// the first connect): a drop within [`FLAP_WINDOW`] resumes the outage from there.
    flap_attempts: Option<u32>,
    /// Set once the first connect outcome is known; the startup phase ends when every
    /// enabled platform has one.
    started: bool,
}

/// One thing that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Adapter(Event),
    /// A retry or connect deadline may have passed.
    Deadline,
    /// SIGINT or SIGTERM.
    Shutdown,
}

/// One thing for the loop to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start generation `generation` of platform `name` (replacing any older one).
    Spawn {
        name: String,
        generation: u64,
    },
    /// Ask the running generation of `name` to stop.
    Stop {
        name: String,
    },
    WriteStatus,
    RebuildDirectory,
    Exit(ExitDecision),
}

/// How and why the gateway ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitDecision {
    pub code: i32,
    pub reason: Option<String>,
}

/// The platform table, the retry schedule and the startup/exit rules.
pub struct Supervisor {
    reconnect: Reconnect,
    platforms: BTreeMap<String, PlatformRecord>,
    retries: BTreeMap<(Instant, String), ()>,
    connect_deadlines: BTreeMap<(Instant, String), u64>,
    /// Set by a shutdown request: when adapters that have not stopped are abandoned.
    stop_deadline: Option<Instant>,
    exit: Option<ExitDecision>,
    /// Whether any platform has connected since the gateway started.
    ever_connected: bool,
}

impl Supervisor {
    /// A supervisor for the enabled platforms `(name, kind)`. Nothing runs until `start`.
    pub fn new(reconnect: Reconnect, platforms: impl IntoIterator<Item = (String, &'static str)>) -> Supervisor {
        let platforms = platforms
            .into_iter()
            .map(|(name, kind)| {
                let record = PlatformRecord {
                    kind,
                    state: PlatformState::Connecting,
                    generation: 0,
                    attempts: 0,
                    next_retry: None,
                    error: None,
                    connected_since: None,
                    last_event_at: None,
                    flap_attempts: None,
                    started: false,
                };
                (name, record)
            })
            .collect();
        Supervisor {
            reconnect,
            platforms,
            retries: BTreeMap::new(),
            connect_deadlines: BTreeMap::new(),
            stop_deadline: None,
            exit: None,
            ever_connected: false,
        }
    }

    pub fn platforms(&self) -> &BTreeMap<String, PlatformRecord> {
        &self.platforms
    }

    /// The gateway state derived from the platform table.
    pub fn gateway_state(&self) -> GatewayState {
        if let Some(exit) = &self.exit {
            let failed_start = exit.code != EXIT_OK && !self.ever_connected;
            return if failed_start { GatewayState::StartupFailed } else { GatewayState::Stopped };
        }
        if self.stop_deadline.is_some() {
            return GatewayState::Stopping;
        }
        let records = self.platforms.values();
        if records.clone().any(|r| !r.started) {
            return GatewayState::Starting;
        }
        if records.clone().all(|r| matches!(r.state, PlatformState::Connected | PlatformState::Stopped)) {
            GatewayState::Running
        } else {
            GatewayState::Degraded
        }
    }

    pub fn exit_reason(&self) -> Option<&str> {
        self.exit.as_ref().and_then(|e| e.reason.as_deref())
    }

    /// The earliest instant at which `handle(Input::Deadline, ..)` has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let retry = self.retries.keys().next().map(|(t, _)| *t);
        let connect = self.connect_deadlines.keys().next().map(|(t, _)| *t);
        [retry, connect, self.stop_deadline].into_iter().flatten().min()
    }

    /// Spawn every platform. With none enabled there is nothing to run.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = vec![];
        let names: Vec<String> = self.platforms.keys().cloned().collect();
        for name in names {
            self.spawn(&name, now, &mut actions);
        }
        if self.platforms.is_empty() {
            self.decide_exit(EXIT_CONFIG, Some("no platform is enabled in the configuration".into()), &mut actions);
        }
        actions.push(Action::WriteStatus);
        actions
    }

    /// React to one input.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut actions = vec![];
        if self.exit.is_some() {
            return actions;
        }
        match input {
            Input::Adapter(Event::Connected { name, generation }) => {
                self.on_connected(&name, generation, now, &mut actions)
            }
            Input::Adapter(Event::Fatal { name, generation, fatal }) => {
                if self.is_current(&name, generation) {
                    self.on_failure(&name, fatal, now);
                }
            }
            Input::Adapter(Event::Stopped { name, generation }) => self.on_stopped(&name, generation, now),
            Input::Deadline => self.on_deadline(now, &mut actions),
            Input::Shutdown => self.on_shutdown(now, &mut actions),
        }
        self.check_exit(&mut actions);
        actions.push(Action::WriteStatus);
        actions
    }

    /// Events of a generation the supervisor has replaced (after a connect timeout or
    /// a respawn), or of a platform that already ended, are stale.
    fn is_current(&self, name: &str, generation: u64) -> bool {
        self.platforms.get(name).is_some_and(|r| {
            r.generation == generation && matches!(r.state, PlatformState::Connecting | PlatformState::Connected)
        })
    }

    fn on_connected(&mut self, name: &str, generation: u64, now: Instant, actions: &mut Vec<Action>) {
        let Some(r) = self.platforms.get_mut(name).filter(|r| r.generation == generation) else { return };
        if r.state != PlatformState::Connecting {
            return;
        }
        self.connect_deadlines.retain(|(_, n), _| n != name);
        let reconnected = r.error.is_some();
        r.state = PlatformState::Connected;
        r.flap_attempts = reconnected.then_some(r.attempts);
        r.attempts = 0;
        r.error = None;
        r.next_retry = None;
        r.connected_since = Some(now);
        r.last_event_at = Some(now);
        r.started = true;
        self.ever_connected = true;
        if reconnected {
            log::info!("{name}: reconnected (generation {generation})");
        } else {
            log::info!("{name}: connected");
        }
        actions.push(Action::RebuildDirectory);
    }

    fn on_stopped(&mut self, name: &str, generation: u64, now: Instant) {
        if !self.is_current(name, generation) {
            return;
        }
        self.connect_deadlines.retain(|(_, n), _| n != name);
        let Some(r) = self.platforms.get_mut(name) else { return };
        r.state = PlatformState::Stopped;
        r.last_event_at = Some(now);
        r.started = true;
        log::info!("{name}: stopped");
    }

    /// A connect failed, timed out, or a connected adapter broke.
    fn on_failure(&mut self, name: &str, fatal: Fatal, now: Instant) {
        self.connect_deadlines.retain(|(_, n), _| n != name);
        let stopping = self.stop_deadline.is_some();
        let (base, cap, max) = (self.reconnect.base, self.reconnect.cap, self.reconnect.max_attempts);
        let Some(r) = self.platforms.get_mut(name) else { return };
        let was_connected = r.state == PlatformState::Connected;
        let up_for = r.connected_since.map(|since| now.saturating_duration_since(since));
        let flapped = was_connected && up_for.is_some_and(|d| d < FLAP_WINDOW) && r.flap_attempts.is_some();
        r.attempts = match (was_connected, r.flap_attempts) {
            (true, Some(before)) if flapped => before.saturating_add(1),
            (true, _) => 0,
            (false, _) => r.attempts.saturating_add(1),
        };
        r.last_event_at = Some(now);
        r.connected_since = None;
        r.started = true;
        if stopping {
            r.state = PlatformState::Stopped;
        } else if !fatal.retryable {
            log::error!("{name}: fatal error {} (not retried): {}", fatal.code, fatal.message);
            r.state = PlatformState::Fatal;
        } else if max > 0 && r.attempts >= max {
            log::error!("{name}: gave up after {} attempts; last error {}: {}", r.attempts, fatal.code, fatal.message);
            r.state = PlatformState::GaveUp;
            r.next_retry = None;
        } else {
            let wait = backoff::delay(r.attempts.max(1), base, cap);
            let at = backoff::deadline(now, wait);
            let how = match up_for {
                Some(up) if flapped => {
                    format!("disconnected {} after reconnecting, failed attempt {}", human(up), r.attempts)
                }
                _ if was_connected => "disconnected".to_string(),
                _ => "failed to connect".to_string(),
            };
            log::warn!(
                "{name}: {how} ({}: {}); queued for reconnection, attempt {} in {}",
                fatal.code,
                fatal.message,
                r.attempts + 1,
                human(wait)
            );
            r.state = PlatformState::Retrying;
            r.next_retry = Some(at);
            self.retries.insert((at, name.to_string()), ());
        }
        r.error = Some(fatal);
    }

    fn on_deadline(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if self.stop_deadline.is_some_and(|t| t <= now) {
            self.abandon_unstopped(actions);
            return;
        }
        while let Some(entry) = self.connect_deadlines.first_entry().filter(|e| e.key().0 <= now) {
            let ((_, name), generation) = entry.remove_entry();
            if self.is_current(&name, generation) {
                let timeout = self.reconnect.connect_timeout;
                let fatal = Fatal::retryable("connect_timeout", format!("no connection after {}", human(timeout)));
                actions.push(Action::Stop { name: name.clone() });
                self.on_failure(&name, fatal, now);
            }
        }
        while let Some(entry) = self.retries.first_entry().filter(|e| e.key().0 <= now) {
            let (_, name) = entry.remove_entry().0;
            let attempt = self.platforms.get(&name).map_or(0, |r| r.attempts + 1);
            log::info!("{name}: reconnecting (attempt {attempt})");
            self.spawn(&name, now, actions);
        }
    }

    fn spawn(&mut self, name: &str, now: Instant, actions: &mut Vec<Action>) {
        let Some(r) = self.platforms.get_mut(name) else { return };
        r.generation += 1;
        r.state = PlatformState::Connecting;
        r.next_retry = None;
        let deadline = backoff::deadline(now, self.reconnect.connect_timeout);
        self.connect_deadlines.insert((deadline, name.to_string()), r.generation);
        actions.push(Action::Spawn { name: name.to_string(), generation: r.generation });
    }

    fn on_shutdown(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if self.stop_deadline.is_some() {
            // A second signal: the user wants out now.
            self.abandon_unstopped(actions);
            return;
        }
        log::info!("stopping: shutdown requested");
        self.stop_deadline = Some(backoff::deadline(now, STOP_GRACE));
        self.retries.clear();
        self.connect_deadlines.clear();
        for (name, r) in &mut self.platforms {
            match r.state {
                PlatformState::Connecting | PlatformState::Connected => {
                    actions.push(Action::Stop { name: name.clone() })
                }
                PlatformState::Retrying => {
                    r.state = PlatformState::Stopped;
                    r.next_retry = None;
                }
                _ => {}
            }
        }
    }

    /// The stop grace period is over: whatever has not reported is taken as stopped.
    fn abandon_unstopped(&mut self, actions: &mut Vec<Action>) {
        for (name, r) in &mut self.platforms {
            if r.state.is_live() {
                log::warn!("{name}: did not stop in time, abandoning it");
                r.state = PlatformState::Stopped;
            }
        }
        self.decide_exit(EXIT_OK, Some("stopped by signal".into()), actions);
    }

    /// Exit when no platform is connected, connecting or retrying.
    fn check_exit(&mut self, actions: &mut Vec<Action>) {
        if self.exit.is_some() || self.platforms.values().any(|r| r.state.is_live()) {
            return;
        }
        if self.stop_deadline.is_some() {
            return self.decide_exit(EXIT_OK, Some("stopped by signal".into()), actions);
        }
        let ended = |state| self.platforms.iter().filter(move |(_, r)| r.state == state);
        let describe = |(name, r): (&String, &PlatformRecord)| {
            let e = r.error.as_ref().map_or_else(|| "unknown error".into(), |e| e.to_string());
            format!("{name}: {e}")
        };
        let gave_up: Vec<String> = ended(PlatformState::GaveUp).map(describe).collect();
        let fatal: Vec<String> = ended(PlatformState::Fatal).map(describe).collect();
        if !gave_up.is_empty() {
            self.decide_exit(EXIT_FAILURE, Some(format!("gave up reconnecting: {}", gave_up.join("; "))), actions);
        } else if !fatal.is_empty() {
            self.decide_exit(EXIT_CONFIG, Some(fatal.join("; ")), actions);
        } else {
            self.decide_exit(EXIT_OK, Some("every platform stopped".into()), actions);
        }
    }

    fn decide_exit(&mut self, code: i32, reason: Option<String>, actions: &mut Vec<Action>) {
        match &reason {
            Some(r) if code != EXIT_OK => log::error!("exiting with code {code}: {r}"),
            Some(r) => log::info!("exiting: {r}"),
            None => {}
        }
        let decision = ExitDecision { code, reason };
        self.exit = Some(decision.clone());
        actions.push(Action::Exit(decision));
    }
}

/// `42 s`, `250 ms`, `5 min`: durations for people.
pub fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d < Duration::from_secs(120) {
        format!("{} s", d.as_secs())
    } else {
        format!("{} min", d.as_secs() / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(30);

    fn reconnect(max_attempts: u32) -> Reconnect {
        Reconnect { base: BASE, cap: Duration::from_secs(300), max_attempts, connect_timeout: Duration::from_secs(30) }
    }

    fn sup(names: &[&str], max_attempts: u32) -> Supervisor {
        Supervisor::new(reconnect(max_attempts), names.iter().map(|n| (n.to_string(), "telegram")))
    }

    fn connected(name: &str, generation: u64) -> Input {
        Input::Adapter(Event::Connected { name: name.into(), generation })
    }

    fn failed(name: &str, generation: u64, retryable: bool) -> Input {
        let fatal = Fatal { code: "x_error".into(), message: "boom".into(), retryable };
        Input::Adapter(Event::Fatal { name: name.into(), generation, fatal })
    }

    fn stopped(name: &str, generation: u64) -> Input {
        Input::Adapter(Event::Stopped { name: name.into(), generation })
    }

    fn spawns(actions: &[Action]) -> Vec<(String, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Spawn { name, generation } => Some((name.clone(), *generation)),
                _ => None,
            })
            .collect()
    }

    fn exit(actions: &[Action]) -> Option<i32> {
        actions.iter().find_map(|a| match a {
            Action::Exit(d) => Some(d.code),
            _ => None,
        })
    }

    fn record<'a>(s: &'a Supervisor, name: &str) -> &'a PlatformRecord {
        &s.platforms()[name]
    }

    #[test]
    fn start_spawns_every_platform_once() {
        let mut s = sup(&["a", "b"], 20);
        let t0 = Instant::now();
        assert_eq!(spawns(&s.start(t0)), [("a".into(), 1), ("b".into(), 1)]);
        assert_eq!(s.gateway_state(), GatewayState::Starting);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(30)), "connect deadline");
    }

    #[test]
    fn nonretryable_startup_failure_with_nothing_connected_exits_78() {
        let mut s = sup(&["tg"], 20);
        let t0 = Instant::now();
        s.start(t0);
        let actions = s.handle(failed("tg", 1, false), t0);
        assert_eq!(exit(&actions), Some(EXIT_CONFIG));
        assert_eq!(s.gateway_state(), GatewayState::StartupFailed);
        assert!(s.exit_reason().unwrap().contains("tg: x_error: boom"));
        assert_eq!(record(&s, "tg").state, PlatformState::Fatal);
    }

    #[test]
    fn retryable_startup_failure_is_queued_with_attempts_1_and_keeps_running_degraded() {
        let mut s = sup(&["tg", "console"], 20);
        let t0 = Instant::now();
        s.start(t0);
        s.handle(connected("console", 1), t0);
        let actions = s.handle(failed("tg", 1, true), t0);
        assert_eq!(exit(&actions), None);
        let r = record(&s, "tg");
        assert_eq!((r.state, r.attempts, r.next_retry), (PlatformState::Retrying, 1, Some(t0 + BASE)));
        assert_eq!(s.gateway_state(), GatewayState::Degraded);
    }

    #[test]
    fn mixed_startup_failures_keep_retrying_the_retryable_one() {
        let mut s = sup(&["a", "b"], 20);
        let t0 = Instant::now();
        s.start(t0);
        assert_eq!(exit(&s.handle(failed("a", 1, false), t0)), None);
        assert_eq!(exit(&s.handle(failed("b", 1, true), t0)), None);
        assert_eq!(s.gateway_state(), GatewayState::Degraded);
    }

    #[test]
    fn runtime_failure_is_queued_with_attempts_0_and_reconnects_after_base() {
        let mut s = sup(&["tg"], 20);
        let t0 = Instant::now();
        s.start(t0);
        s.handle(connected("tg", 1), t0);
        let t1 = t0 + Duration::from_secs(3600);
        let actions = s.handle(failed("tg", 1, true), t1);
        assert_eq!(exit(&actions), None, "a runtime blip never stops the gateway");
        assert_eq!((record(&s, "tg").attempts, s.next_deadline()), (0, Some(t1 + BASE)));
        assert!(spawns(&s.handle(Input::Deadline, t1 + BASE - Duration::from_millis(1))).is_empty());
        assert_eq!(spawns(&s.handle(Input::Deadline, t1 + BASE)), [("tg".into(), 2)]);
        let actions = s.handle(connected("tg", 2), t1 + BASE);
        assert!(actions.contains(&Action::RebuildDirectory));
        assert_eq!(record(&s, "tg").state, PlatformState::Connected);
        assert_eq!(s.gateway_state(), GatewayState::Running);
    }

    #[test]
    fn backoff_doubles_to_the_cap_then_gives_up_after_max_attempts() {
        let mut s = sup(&["tg", "console"], 8);
        let mut now = Instant::now();
        s.start(now);
        s.handle(connected("console", 1), now);
        s.handle(failed("tg", 1, true), now);
        let mut waits = vec![];
        for generation in 2.. {
            let due = s.next_deadline().unwrap();
            waits.push((due - now).as_secs());
            now = due;
            let actions = s.handle(Input::Deadline, now);
            assert_eq!(spawns(&actions), [("tg".to_string(), generation)]);
            s.handle(failed("tg", generation, true), now);
            if record(&s, "tg").state == PlatformState::GaveUp {
                break;
            }
        }
        assert_eq!(waits, [30, 60, 120, 240, 300, 300, 300]);
        assert_eq!(record(&s, "tg").attempts, 8);
        assert_eq!(s.next_deadline(), None, "no further connect attempts");
        assert!(spawns(&s.handle(Input::Deadline, now + Duration::from_secs(10_000))).is_empty());
    }

    #[test]
    fn max_attempts_0_retries_forever() {
        let mut s = sup(&["tg"], 0);
        let mut now = Instant::now();
        s.start(now);
        for generation in 1..100 {
            s.handle(failed("tg", generation, true), now);
            now = s.next_deadline().unwrap();
            assert_eq!(spawns(&s.handle(Input::Deadline, now)).len(), 1);
        }
    }

    #[test]
    fn nonretryable_failure_on_reconnect_drops_it_from_the_retry_map() {
        let mut s = sup(&["tg", "console"], 20);
        let t0 = Instant::now();
        s.start(t0);
        s.handle(connected("console", 1), t0);
        s.handle(connected("tg", 1), t0);
        s.handle(failed("tg", 1, true), t0 + FLAP_WINDOW);
        s.handle(Input::Deadline, t0 + FLAP_WINDOW + BASE);
        s.handle(failed("tg", 2, false), t0 + FLAP_WINDOW + BASE);
        assert_eq!(record(&s, "tg").state, PlatformState::Fatal);
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.gateway_state(), GatewayState::Degraded);
    }

    #[test]
    fn events_from_a_superseded_generation_are_ignored() {
        let mut s = sup(&["tg"], 20);
        let t0 = Instant::now();
        s.start(t0);
        s.handle(connected("tg", 1), t0);
        s.handle(failed("tg", 1, true), t0 + FLAP_WINDOW);
        s.handle(Input::Deadline, t0 + FLAP_WINDOW + BASE);
        s.handle(connected("tg", 2), t0 + FLAP_WINDOW + BASE);
        // A late fatal (and a second disconnect) from generation 1: no re-queue.
        let actions = s.handle(failed("tg", 1, true), t0 + FLAP_WINDOW + BASE);
        assert_eq!(record(&s, "tg").state, PlatformState::Connected);
        assert_eq!((s.next_deadline(), exit(&actions)), (None, None));
        s.handle(stopped("tg", 1), t0 + FLAP_WINDOW + BASE);
        assert_eq!(record(&s, "tg").state, PlatformState::Connected);
        // The same fatal twice from the current generation queues it once.
        s.handle(failed("tg", 2, true), t0 + FLAP_WINDOW * 3);
        s.handle(failed("tg", 2, true), t0 + FLAP_WINDOW * 3);
        assert_eq!(s.retries.len(), 1);
    }

    #[test]
    fn a_drop_soon_after_reconnecting_following_failed_connects_is_one_more_failed_attempt() {
        let mut s = sup(&["tg"], 20);
        let mut now = Instant::now();
        s.start(now);
        for generation in 1..=3 {
            s.handle(failed("tg", generation, true), now);
            now = s.next_deadline().unwrap();
            s.handle(Input::Deadline, now);
        }
        s.handle(connected("tg", 4), now);
        s.handle(failed("tg", 4, true), now + Duration::from_secs(10));
        let r = record(&s, "tg");
        assert_eq!(r.attempts, 4);
        assert_eq!(r.next_retry, Some(now + Duration::from_secs(10) + Duration::from_secs(240)));
    }

    /// Connect at once, drop at once, forever: the reconnects (each of which worked the
    /// first time) return `(waits in ms, attempts after each drop, spawns)`.
    fn flap(s: &mut Supervisor, mut now: Instant, until: Instant) -> (Vec<u128>, Vec<u32>, usize) {
        let (mut waits, mut attempts, mut spawned) = (vec![], vec![], 0);
        while record(s, "tg").state == PlatformState::Retrying {
            let due = s.next_deadline().unwrap();
            if due > until {
                break;
            }
            waits.push((due - now).as_millis());
            now = due;
            let generation = match spawns(&s.handle(Input::Deadline, now))[..] {
                [(_, generation)] => generation,
                ref other => panic!("expected one spawn, got {other:?}"),
            };
            spawned += 1;
            s.handle(connected("tg", generation), now);
            now += Duration::from_millis(5);
            s.handle(failed("tg", generation, true), now);
            attempts.push(record(s, "tg").attempts);
        }
        (waits, attempts, spawned)
    }

    /// Issue 7 §2: a link that connects and drops again at once (getMe fine, every
    /// getUpdates a 502) was reconnected every `base` for ever, always as attempt 1:
    /// a reconnect that worked the first time saved its attempt count as 0.
    #[test]
    fn r_flaps_after_successful_reconnects_back_off_and_give_up() {
        let mut s = sup(&["tg"], 8);
        let t0 = Instant::now();
        s.start(t0);
        s.handle(connected("tg", 1), t0);
        // The first connect dropping is a runtime failure, queued at attempt 0.
        s.handle(failed("tg", 1, true), t0 + Duration::from_secs(1));
        assert_eq!(record(&s, "tg").attempts, 0);
        let (waits, attempts, _) = flap(&mut s, t0 + Duration::from_secs(1), t0 + Duration::from_secs(100_000));
        let secs: Vec<u128> = waits.iter().map(|ms| ms / 1000).collect();
        assert_eq!(secs, [30, 30, 60, 120, 240, 300, 300, 300], "the same waits as failed connects");
        assert_eq!(attempts, [1, 2, 3, 4, 5, 6, 7, 8], "each flap is a failed attempt");
        let r = record(&s, "tg");
        assert_eq!((r.state, r.attempts, r.next_retry), (PlatformState::GaveUp, 8, None));
        assert_eq!(s.gateway_state(), GatewayState::Stopped, "nothing left: exit 1");
        assert_eq!(s.exit.as_ref().map(|e| e.code), Some(EXIT_FAILURE));
    }

    #[test]
    fn r_flapping_with_base_300ms_does_not_reconnect_21_times_in_8_s() {
        let ms = Duration::from_millis;
        let reconnect = Reconnect { base: ms(300), cap: ms(2400), max_attempts: 0, connect_timeout: ms(5000) };
        let mut s = Supervisor::new(reconnect, [("tg".to_string(), "telegram")]);
        let t0 = Instant::now();
        s.start(t0);
        s.handle(connected("tg", 1), t0);
        s.handle(failed("tg", 1, true), t0);
        let (waits, attempts, spawned) = flap(&mut s, t0, t0 + Duration::from_secs(8));
        assert_eq!(waits[..6], [300, 300, 600, 1200, 2400, 2400], "base, base, 2·base … cap");
        assert_eq!(attempts[..3], [1, 2, 3]);
        assert!(spawned <= 7, "{spawned} reconnects in 8 s");
    }

    #[test]
    fn a_reconnect_that_stays_up_past_the_flap_window_ends_the_outage() {
        let mut s = sup(&["tg"], 20);
        let t0 = Instant::now();
        s.start(t0);
        s.handle(connected("tg", 1), t0);
        s.handle(failed("tg", 1, true), t0);
        s.handle(Input::Deadline, t0 + BASE);
        s.handle(connected("tg", 2), t0 + BASE);
        s.handle(failed("tg", 2, true), t0 + BASE + Duration::from_millis(1));
        assert_eq!(record(&s, "tg").attempts, 1, "a flap");
        let t1 = record(&s, "tg").next_retry.unwrap();
        s.handle(Input::Deadline, t1);
        s.handle(connected("tg", 3), t1);
        s.handle(failed("tg", 3, true), t1 + FLAP_WINDOW);
        let r = record(&s, "tg");
        assert_eq!((r.attempts, r.next_retry), (0, Some(t1 + FLAP_WINDOW + BASE)), "up for a minute: a new outage");
    }

    #[test]
    fn connect_timeout_is_a_retryable_failure_and_supersedes_the_hung_thread() {
        let mut s = sup(&["tg"], 20);
        let t0 = Instant::now();
        s.start(t0);
        let actions = s.handle(Input::Deadline, t0 + Duration::from_secs(30));
        assert!(actions.contains(&Action::Stop { name: "tg".into() }));
        let r = record(&s, "tg");
        assert_eq!((r.state, r.error.as_ref().unwrap().code.as_str()), (PlatformState::Retrying, "connect_timeout"));
        s.handle(Input::Deadline, t0 + Duration::from_secs(60));
        // The hung generation 1 finally connects: stale, ignored.
        s.handle(connected("tg", 1), t0 + Duration::from_secs(61));
        assert_eq!(record(&s, "tg").state, PlatformState::Connecting);
        s.handle(connected("tg", 2), t0 + Duration::from_secs(61));
        assert_eq!(record(&s, "tg").state, PlatformState::Connected);
    }

    #[test]
    fn exit_code_when_nothing_is_left() {
        let t0 = Instant::now();
        // Clean end of input everywhere: 0.
        let mut s = sup(&["console"], 20);
        s.start(t0);
        s.handle(connected("console", 1), t0);
        assert_eq!(exit(&s.handle(stopped("console", 1), t0)), Some(EXIT_OK));
        assert_eq!(s.gateway_state(), GatewayState::Stopped);
        // One fatal at runtime, the other stopped: 78.
        let mut s = sup(&["console", "tg"], 20);
        s.start(t0);
        s.handle(connected("console", 1), t0);
        s.handle(connected("tg", 1), t0);
        s.handle(failed("tg", 1, false), t0);
        assert_eq!(exit(&s.handle(stopped("console", 1), t0)), Some(EXIT_CONFIG));
        assert_eq!(s.gateway_state(), GatewayState::Stopped);
        // Gave up: 1, so a service manager restarts it.
        let mut s = sup(&["tg"], 1);
        s.start(t0);
        assert_eq!(exit(&s.handle(failed("tg", 1, true), t0)), Some(EXIT_FAILURE));
    }

    #[test]
    fn shutdown_stops_everything_and_exits_0_once_adapters_report() {
        let mut s = sup(&["a", "b", "c"], 20);
        let t0 = Instant::now();
        s.start(t0);
        s.handle(connected("a", 1), t0);
        s.handle(failed("c", 1, true), t0);
        let actions = s.handle(Input::Shutdown, t0);
        assert!(actions.contains(&Action::Stop { name: "a".into() }));
        assert!(actions.contains(&Action::Stop { name: "b".into() }));
        assert_eq!(s.gateway_state(), GatewayState::Stopping);
        assert_eq!(exit(&s.handle(stopped("a", 1), t0)), None);
        assert_eq!(exit(&s.handle(failed("b", 1, true), t0)), Some(EXIT_OK));
    }

    #[test]
    fn shutdown_abandons_adapters_that_do_not_stop_in_time() {
        let mut s = sup(&["a"], 20);
        let t0 = Instant::now();
        s.start(t0);
        s.handle(connected("a", 1), t0);
        s.handle(Input::Shutdown, t0);
        assert_eq!(s.next_deadline(), Some(t0 + STOP_GRACE));
        assert_eq!(exit(&s.handle(Input::Deadline, t0 + STOP_GRACE)), Some(EXIT_OK));
    }

    #[test]
    fn no_enabled_platform_is_a_configuration_error() {
        let mut s = sup(&[], 20);
        assert_eq!(exit(&s.start(Instant::now())), Some(EXIT_CONFIG));
    }
}
