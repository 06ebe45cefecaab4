//! The adapter harness and the supervisor loop with real threads, driven by test
//! platforms whose behaviour cannot be provoked over a wire: a panic, a connect that
//! hangs and ignores stop requests, a receive loop that only ends on stop.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use serde_json::Value;

use switchboard::adapter::{Context, Fatal, Outlet, Platform, SendError, Wiring};
use switchboard::config::{Config, Gateway, PlatformInstance, PlatformSpec, Reconnect};
use switchboard::delivery::Outbox;
use switchboard::directory::Directory;
use switchboard::message::Outbound;
use switchboard::supervisor::SupervisorLoop;
use switchboard::supervisor::state::ExitDecision;

/// How a test platform behaves in `connect`.
#[derive(Clone, Copy)]
enum OnConnect {
    /// Panic on the first `n` generations, then connect.
    PanicTimes(u32),
    /// Block for a long time without looking at stop requests.
    Hang,
    Connect,
}

struct TestSpec {
    on_connect: OnConnect,
    builds: AtomicU32,
}

impl PlatformSpec for TestSpec {
    fn build(&self) -> Box<dyn Platform> {
        let generation = self.builds.fetch_add(1, Ordering::SeqCst) + 1;
        Box::new(TestPlatform { on_connect: self.on_connect, generation })
    }

    fn describe(&self) -> String {
        "test platform".into()
    }
}

struct TestPlatform {
    on_connect: OnConnect,
    generation: u32,
}

impl Platform for TestPlatform {
    fn connect(&mut self, _ctx: &Context) -> Result<Arc<dyn Outlet>, Fatal> {
        match self.on_connect {
            OnConnect::PanicTimes(n) if self.generation <= n => panic!("test adapter exploded"),
            OnConnect::Hang => thread::sleep(Duration::from_secs(30)),
            _ => {}
        }
        Ok(Arc::new(NullOutlet))
    }

    fn run(&mut self, ctx: &Context) -> Result<(), Fatal> {
        // Receives nothing and ends only when asked to.
        while ctx.sleep(Duration::from_secs(3600)).is_ok() {}
        Ok(())
    }
}

struct NullOutlet;

impl Outlet for NullOutlet {
    fn send(&self, _msg: &Outbound) -> Result<Option<String>, SendError> {
        Ok(None)
    }
}

fn instance(name: &str, on_connect: OnConnect) -> PlatformInstance {
    let spec = Arc::new(TestSpec { on_connect, builds: AtomicU32::new(0) });
    PlatformInstance {
        name: name.into(),
        kind: "test",
        enabled: true,
        spec,
        access: Default::default(),
        home_channel: None,
    }
}

fn config(dir: &Path, platforms: Vec<PlatformInstance>) -> Config {
    Config {
        file: dir.join("gateway.toml"),
        gateway: Gateway {
            state_dir: dir.join("state"),
            lock_dir: dir.join("locks"),
            log_level: log::LevelFilter::Info,
            log_file: None,
            dedup_window: switchboard::inbox::DEFAULT_DEDUP_WINDOW,
        },
        reconnect: Reconnect {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(800),
            max_attempts: 20,
            connect_timeout: Duration::from_millis(300),
        },
        agent: Default::default(),
        sessions: Default::default(),
        access: Default::default(),
        delivery: Default::default(),
        platforms,
    }
}

/// A supervisor loop on its own thread; send on the returned sender to stop it.
fn supervise(config: Config) -> (Sender<()>, Receiver<ExitDecision>) {
    let state_dir = config.gateway.state_dir.clone();
    let (events_tx, events) = unbounded();
    let (inbound, _inbound_rx) = bounded(16);
    let wiring = Wiring {
        inbox: Arc::new(switchboard::inbox::Inbox::open(&state_dir).unwrap()),
        events: events_tx,
        inbound,
        outlets: Outbox::open(&state_dir, Default::default(), &[]).expect("open the outbox"),
        state_dir: state_dir.clone(),
        lock_dir: config.gateway.lock_dir.clone(),
    };
    let directory = Arc::new(Directory::load(&state_dir));
    let (stop_tx, stop) = unbounded();
    let (done_tx, done) = bounded(1);
    thread::spawn(move || {
        let _keep = _inbound_rx;
        let decision = SupervisorLoop::new(&config, wiring, directory).run(events, stop, |_| {});
        let _ = done_tx.send(decision);
    });
    (stop_tx, done)
}

fn wait_status(dir: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = std::fs::read(dir.join("state/status.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(s) = status.filter(|s| pred(s)) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_panicking_adapter_is_reported_retryable_and_respawned() {
    let dir = tempfile::tempdir().unwrap();
    let (stop, done) = supervise(config(dir.path(), vec![instance("boom", OnConnect::PanicTimes(1))]));
    let s = wait_status(dir.path(), "the panic", |s| s["platforms"]["boom"]["error_code"] == "adapter_panic");
    assert_eq!(s["platforms"]["boom"]["state"], "retrying");
    assert!(s["platforms"]["boom"]["error_message"].as_str().unwrap().contains("test adapter exploded"));
    wait_status(dir.path(), "the respawn", |s| s["platforms"]["boom"]["state"] == "connected");
    stop.send(()).unwrap();
    assert_eq!(done.recv_timeout(Duration::from_secs(3)).unwrap().code, 0);
}

#[test]
fn a_hung_connect_times_out_without_delaying_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let platforms = vec![instance("hung", OnConnect::Hang), instance("fine", OnConnect::Connect)];
    let started = Instant::now();
    let (stop, done) = supervise(config(dir.path(), platforms));
    wait_status(dir.path(), "fine connected", |s| s["platforms"]["fine"]["state"] == "connected");
    assert!(started.elapsed() < Duration::from_millis(300), "the healthy platform waited for the hung one");
    let s = wait_status(dir.path(), "the timeout", |s| s["platforms"]["hung"]["error_code"] == "connect_timeout");
    assert_eq!(s["platforms"]["hung"]["state"], "retrying");
    assert_eq!(s["state"], "degraded");
    stop.send(()).unwrap();
    done.recv_timeout(Duration::from_secs(3)).unwrap();
}

#[test]
fn a_stop_request_ends_a_receive_loop_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (stop, done) = supervise(config(dir.path(), vec![instance("idle", OnConnect::Connect)]));
    wait_status(dir.path(), "connected", |s| s["platforms"]["idle"]["state"] == "connected");
    let asked = Instant::now();
    stop.send(()).unwrap();
    let decision = done.recv_timeout(Duration::from_secs(3)).unwrap();
    // Well inside the 1 s stop grace: the adapter reported, nothing was abandoned.
    assert!(asked.elapsed() < Duration::from_millis(500), "took {:?}", asked.elapsed());
    assert_eq!(decision.code, 0);
    let s = wait_status(dir.path(), "stopped", |s| s["state"] == "stopped");
    assert_eq!(s["platforms"]["idle"]["state"], "stopped");
}
