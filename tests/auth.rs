//! Pairing as the gateway and the CLI see it, with every log record captured: a code
//! reaches the stranger's DM and nothing else, and unauthorised attempts are logged at
//! info with platform and user id. A separate test binary, so this logger is the only one.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard::auth::{AccessConfig, Auth, Decision, PlatformAccess, pairing_command};
use switchboard::message::{ChatType, Source};

static RECORDS: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        RECORDS.lock().unwrap().push((record.level(), record.args().to_string()));
    }
    fn flush(&self) {}
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn source(user: &str, chat_type: ChatType) -> Source {
    Source {
        platform: "tg".to_string(),
        chat_id: "c1".to_string(),
        chat_type,
        chat_name: None,
        user_id: Some(user.to_string()),
        user_name: Some("Mallory".to_string()),
        thread_id: None,
    }
}

fn code_in(d: &Decision) -> String {
    let Decision::Reply(text) = d else { panic!("expected a pairing reply, got {d:?}") };
    let start = text.find("code is ").expect("a code") + "code is ".len();
    text[start..start + 8].to_string()
}

fn cli(state: &Path, args: &[&str], now: SystemTime) -> Result<String, String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    pairing_command(state, &["tg".to_string()], &args, now)
}

#[test]
fn codes_reach_the_dm_reply_only_and_attempts_are_logged() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let dir = tempfile::tempdir().unwrap();
    let platforms = [("tg".to_string(), "telegram", PlatformAccess::default())];
    let auth = Auth::new(dir.path(), &AccessConfig::default(), &platforms);

    assert_eq!(auth.check(&source("77", ChatType::Group), at(0)), Decision::Ignore);
    let first = code_in(&auth.check(&source("77", ChatType::Dm), at(1)));
    let second = code_in(&auth.check(&source("78", ChatType::Dm), at(2)));
    // What the CLI prints must not hold codes either.
    assert!(cli(dir.path(), &["approve", "tg", "ZZZZZZZZ"], at(3)).is_err());
    let listed = cli(dir.path(), &["list"], at(3)).unwrap();
    let approved = cli(dir.path(), &["approve", "tg", &first.to_lowercase()], at(4)).unwrap();
    assert_eq!(auth.check(&source("77", ChatType::Dm), at(5)), Decision::Allow);

    let records = RECORDS.lock().unwrap().clone();
    for code in [&first, &second] {
        for (_, text) in &records {
            assert!(!text.contains(code.as_str()), "a log record holds a code: {text}");
        }
        assert!(!listed.contains(code.as_str()) && !approved.contains(code.as_str()));
    }
    let info_about = |needle: &str| records.iter().any(|(l, t)| *l == log::Level::Info && t.contains(needle));
    assert!(info_about("unauthorised user 77 on tg (group)"), "{records:?}");
    assert!(info_about("unauthorised user 78 on tg (dm)"), "{records:?}");
}
