//! The store's behaviour, one test per rule, on temporary state directories and with
//! times passed in (2024-03-10 and after), so nothing depends on the real clock.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::message::{ChatType, Role};

/// 2024-03-10 00:00:00 UTC.
const MIDNIGHT: u64 = 1_710_028_800;
const HOUR: u64 = 3600;

fn at(secs: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(secs)
}

/// `MIDNIGHT + hours`.
fn hours(h: f64) -> SystemTime {
    at(MIDNIGHT as f64 + h * HOUR as f64)
}

fn dm(chat: &str) -> Source {
    Source {
        platform: "tg".into(),
        chat_id: chat.into(),
        chat_type: ChatType::Dm,
        chat_name: None,
        user_id: Some(chat.into()),
        user_name: None,
        thread_id: None,
    }
}

fn open(dir: &Path, config: SessionConfig) -> SessionStore {
    SessionStore::open(dir, config, 0).unwrap()
}

fn turn(i: usize) -> [ChatMessage; 2] {
    [ChatMessage::new(Role::User, format!("q{i}")), ChatMessage::new(Role::Assistant, format!("a{i}"))]
}

fn idle_config(minutes: u64) -> SessionConfig {
    SessionConfig { reset: ResetMode::Idle, idle: Duration::from_secs(minutes * 60), ..SessionConfig::default() }
}

/// What a restart would find (`index.json` and the journal), without opening a store.
fn stored(dir: &Path) -> index::Entries {
    index::load(&dir.join("sessions"), 0).unwrap().entries
}

/// The entries `index.json` holds on disk right now.
fn on_disk(dir: &Path) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_slice(&fs::read(dir.join("sessions/index.json")).unwrap()).unwrap()
}

#[test]
fn a_conversation_keeps_its_session_from_turn_to_turn() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SessionConfig::default());
    let first = store.begin_turn(&dm("1"), hours(10.0)).unwrap();
    assert_eq!(first.notice, None);
    assert_eq!(first.entry.key, "agent:main:tg:dm:1");
    assert_eq!(first.entry.created_at, first.entry.updated_at);
    assert!(first.entry.session_id.starts_with("20240310_100000_"), "{}", first.entry.session_id);
    let second = store.begin_turn(&dm("1"), hours(11.0)).unwrap();
    assert_eq!(second.entry.session_id, first.entry.session_id);
    assert_eq!(second.entry.updated_at, MIDNIGHT as f64 + 11.0 * HOUR as f64);
    let other = store.begin_turn(&dm("2"), hours(11.0)).unwrap();
    assert_ne!(other.entry.session_id, first.entry.session_id);
    assert_eq!(store.session_count(), 2);
    assert_eq!(store.get("agent:main:tg:dm:1"), Some(second.entry));
    assert_eq!(store.get("agent:main:tg:dm:3"), None);
}

#[test]
fn an_idle_session_rotates_and_the_user_is_told_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), idle_config(60));
    let old = store.begin_turn(&dm("1"), hours(1.0)).unwrap().entry;
    store.append(&old.key, &turn(0), 0, 0, hours(1.0)).unwrap();
    // Just inside the hour (counted from the append): same session.
    assert_eq!(store.begin_turn(&dm("1"), hours(1.9)).unwrap().entry.session_id, old.session_id);
    let rotated = store.begin_turn(&dm("1"), hours(3.0)).unwrap();
    assert_ne!(rotated.entry.session_id, old.session_id);
    assert_eq!(rotated.notice.as_deref(), Some("Session reset after 1 h idle; starting fresh."));
    let next = store.begin_turn(&dm("1"), hours(3.1)).unwrap();
    assert_eq!(next.entry.session_id, rotated.entry.session_id);
    assert_eq!(next.notice, None, "told once");
    assert_eq!(store.history(&next.entry.session_id).unwrap(), []);
    assert_eq!(store.history(&old.session_id).unwrap(), turn(0), "the old transcript stays");
}

#[test]
fn an_idle_session_without_messages_rotates_silently() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), idle_config(60));
    let old = store.begin_turn(&dm("1"), hours(1.0)).unwrap().entry;
    let rotated = store.begin_turn(&dm("1"), hours(5.0)).unwrap();
    assert_ne!(rotated.entry.session_id, old.session_id);
    assert_eq!(rotated.notice, None);
}

#[test]
fn the_daily_reset_happens_at_the_local_hour() {
    let dir = tempfile::tempdir().unwrap();
    let config = SessionConfig { reset: ResetMode::Daily, daily_hour: 4, ..SessionConfig::default() };
    // UTC+2: 04:00 local is 02:00 UTC. (Read as UTC, both turns below would be before
    // 04:00 and the session would not rotate.)
    let store = SessionStore::open(dir.path(), config, 7200).unwrap();
    let old = store.begin_turn(&dm("1"), hours(1.5)).unwrap().entry;
    assert!(old.session_id.starts_with("20240310_033000_"), "local time in the id: {}", old.session_id);
    store.append(&old.key, &turn(0), 0, 0, hours(1.5)).unwrap();
    assert_eq!(store.begin_turn(&dm("1"), hours(1.99)).unwrap().entry.session_id, old.session_id);
    let rotated = store.begin_turn(&dm("1"), hours(2.5)).unwrap();
    assert_ne!(rotated.entry.session_id, old.session_id);
    assert_eq!(rotated.notice.as_deref(), Some("Session reset by the daily reset at 04:00; starting fresh."));
    // Active after today's boundary: kept until tomorrow's.
    assert_eq!(store.begin_turn(&dm("1"), hours(25.9)).unwrap().notice, None);
    assert_eq!(store.get(&old.key).unwrap().session_id, rotated.entry.session_id);
}

#[test]
fn reset_none_keeps_a_session_forever() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SessionConfig { reset: ResetMode::None, ..SessionConfig::default() });
    let old = store.begin_turn(&dm("1"), hours(1.0)).unwrap().entry;
    store.append(&old.key, &turn(0), 0, 0, hours(1.0)).unwrap();
    let later = store.begin_turn(&dm("1"), hours(400.0 * 24.0)).unwrap();
    assert_eq!((later.entry.session_id, later.notice), (old.session_id, None));
}

#[test]
fn history_is_bounded_by_max_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SessionConfig { max_history: 5, ..SessionConfig::default() });
    let entry = store.begin_turn(&dm("1"), hours(1.0)).unwrap().entry;
    let mut all = Vec::new();
    for i in 0..6 {
        store.append(&entry.key, &turn(i), 0, 0, hours(1.0)).unwrap();
        all.extend(turn(i));
    }
    assert_eq!(store.history(&entry.session_id).unwrap(), all[7..]);
}

#[test]
fn reset_starts_a_fresh_session_with_or_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SessionConfig::default());
    let old = store.begin_turn(&dm("1"), hours(1.0)).unwrap().entry;
    store.append(&old.key, &turn(0), 5, 5, hours(1.0)).unwrap();
    let fresh = store.reset(&dm("1"), hours(1.1)).unwrap();
    assert_ne!(fresh.session_id, old.session_id);
    assert_eq!((fresh.input_tokens, fresh.output_tokens), (0, 0));
    assert_eq!(store.get(&old.key), Some(fresh.clone()));
    assert_eq!(store.history(&fresh.session_id).unwrap(), []);
    assert_eq!(store.history(&old.session_id).unwrap(), turn(0));
    let next = store.begin_turn(&dm("1"), hours(1.2)).unwrap();
    assert_eq!((next.entry.session_id, next.notice), (fresh.session_id, None));
    // A conversation never seen before.
    let new = store.reset(&dm("2"), hours(1.2)).unwrap();
    assert_eq!(store.get("agent:main:tg:dm:2"), Some(new));
}

#[test]
fn token_counts_accumulate_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SessionConfig::default());
    let key = store.begin_turn(&dm("1"), hours(1.0)).unwrap().entry.key;
    store.append(&key, &turn(0), 10, 5, hours(1.0)).unwrap();
    store.append(&key, &[], 3, 2, hours(1.5)).unwrap();
    let entry = store.get(&key).unwrap();
    assert_eq!((entry.input_tokens, entry.output_tokens), (13, 7));
    assert_eq!(entry.updated_at, MIDNIGHT as f64 + 1.5 * HOUR as f64);
    store.flush().unwrap();
    drop(store);
    assert_eq!(open(dir.path(), SessionConfig::default()).get(&key), Some(entry));
}

#[test]
fn append_without_a_session_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SessionConfig::default());
    let err = store.append("agent:main:tg:dm:1", &turn(0), 1, 1, hours(1.0)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}

#[test]
fn counts_are_written_at_most_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SessionConfig::default());
    let key = store.begin_turn(&dm("1"), at(1e9)).unwrap().entry.key;
    store.append(&key, &turn(0), 10, 0, at(1e9 + 0.5)).unwrap();
    assert_eq!(stored(dir.path())[&key].input_tokens, 0, "not written within the interval");
    store.append(&key, &turn(1), 1, 0, at(1e9 + 1.0)).unwrap();
    assert_eq!(stored(dir.path())[&key].input_tokens, 11, "written once the interval passed");
}

/// Issue 7, section 4: the whole index was rewritten, with two fsyncs, every second
/// while any conversation was active.
#[test]
fn a_turn_writes_only_the_entry_it_changed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SessionConfig::default());
    for chat in 0..1000 {
        store.begin_turn(&dm(&chat.to_string()), at(1e9)).unwrap();
    }
    store.flush().unwrap();
    let snapshot = dir.path().join("sessions/index.json");
    let journal = dir.path().join("sessions/index.journal");
    let before = fs::read(&snapshot).unwrap();
    assert!(before.len() > 100_000, "1000 sessions in the snapshot: {} bytes", before.len());
    let journal_before = fs::metadata(&journal).unwrap().len();
    for second in 1..=5 {
        let now = at(1e9 + f64::from(second));
        let key = store.begin_turn(&dm("7"), now).unwrap().entry.key;
        store.append(&key, &turn(0), 5, 5, now).unwrap();
    }
    assert_eq!(fs::read(&snapshot).unwrap(), before, "the snapshot is not rewritten");
    let grown = fs::metadata(&journal).unwrap().len() - journal_before;
    assert!(grown < 5 * 400, "five intervals with one changed entry wrote {grown} bytes");
    assert_eq!(stored(dir.path())["agent:main:tg:dm:7"].input_tokens, 20, "the last interval's counts pending");
}

#[test]
fn quiet_sessions_leave_memory_and_come_back_when_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), idle_config(60));
    let mut first = None;
    for chat in 0..100 {
        let entry = store.begin_turn(&dm(&chat.to_string()), hours(1.0)).unwrap().entry;
        store.append(&entry.key, &turn(0), 3, 4, hours(1.0)).unwrap();
        first.get_or_insert(entry);
    }
    let old = store.get(&first.unwrap().key).unwrap();
    assert_eq!(store.session_count(), 100);
    // Two hours later one other conversation speaks: the hundred expired and left memory.
    store.begin_turn(&dm("other"), hours(3.0)).unwrap();
    assert_eq!(store.session_count(), 1);
    assert_eq!(store.get(&old.key), Some(old.clone()), "/status still finds it, counts and all");
    // Its conversation speaks again: told once, and a fresh session.
    let back = store.begin_turn(&dm("0"), hours(3.1)).unwrap();
    assert_eq!(back.notice.as_deref(), Some("Session reset after 1 h idle; starting fresh."));
    assert_ne!(back.entry.session_id, old.session_id);
    assert_eq!(store.begin_turn(&dm("0"), hours(3.2)).unwrap().notice, None, "told once");
    assert_eq!(store.session_count(), 2);
    // After a crash the archived ones are still there.
    std::mem::forget(store);
    let store = open(dir.path(), idle_config(60));
    assert_eq!(store.get("agent:main:tg:dm:5").map(|e| (e.input_tokens, e.output_tokens)), Some((3, 4)));
    let again = store.begin_turn(&dm("5"), hours(3.3)).unwrap();
    assert!(again.notice.is_some(), "the notice survives the restart");
}

#[test]
fn a_session_archived_before_it_expired_goes_on_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let config = SessionConfig { reset: ResetMode::None, ..SessionConfig::default() };
    let store = open(dir.path(), config.clone());
    let old = store.begin_turn(&dm("1"), hours(1.0)).unwrap().entry;
    store.append(&old.key, &turn(0), 2, 2, hours(1.0)).unwrap();
    store.begin_turn(&dm("2"), hours(3.0)).unwrap();
    assert_eq!(store.session_count(), 1, "idle for longer than EVICT_IDLE");
    let back = store.begin_turn(&dm("1"), hours(30.0)).unwrap();
    assert_eq!((back.entry.session_id.as_str(), back.notice), (old.session_id.as_str(), None));
    assert_eq!(back.entry.input_tokens, 2);
    assert_eq!(store.history(&old.session_id).unwrap(), turn(0));
    // A turn that outlasts the idle time finds its entry archived, and still records.
    store.begin_turn(&dm("3"), hours(32.0)).unwrap();
    assert_eq!(store.get(&old.key).unwrap().updated_at, back.entry.updated_at);
    store.append(&old.key, &turn(1), 1, 1, hours(32.0)).unwrap();
    assert_eq!(store.get(&old.key).unwrap().input_tokens, 3);
    drop(store);
    assert_eq!(open(dir.path(), config).get(&old.key).unwrap().input_tokens, 3);
}

#[test]
fn a_new_session_survives_a_crash_before_the_index_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SessionConfig::default());
    let first = store.begin_turn(&dm("1"), at(1e9)).unwrap().entry;
    // Within the interval: only the journal has these two.
    let second = store.begin_turn(&dm("2"), at(1e9 + 0.1)).unwrap().entry;
    let reset = store.reset(&dm("1"), at(1e9 + 0.2)).unwrap();
    assert!(!on_disk(dir.path()).contains_key(&second.key));
    // A crash: no flush, no drop.
    std::mem::forget(store);
    let store = open(dir.path(), SessionConfig::default());
    assert_eq!(store.get(&second.key), Some(second));
    assert_eq!(store.get(&first.key), Some(reset));
    assert_eq!(store.session_count(), 2);
    // Reopening folded the journal into the index.
    assert_eq!(fs::metadata(dir.path().join("sessions/index.journal")).unwrap().len(), 0);
    assert_eq!(on_disk(dir.path()).len(), 2);
}

#[test]
fn dropping_the_store_writes_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SessionConfig::default());
    let key = store.begin_turn(&dm("1"), at(1e9)).unwrap().entry.key;
    store.append(&key, &turn(0), 4, 2, at(1e9 + 0.1)).unwrap();
    drop(store);
    assert_eq!(on_disk(dir.path())[&key]["output_tokens"], 2);
}

#[test]
fn a_corrupt_index_is_set_aside_and_the_store_works() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions");
    fs::create_dir_all(&sessions).unwrap();
    fs::write(sessions.join("index.json"), b"{\"agent:main:tg:dm:1\": {\"session_id\": \"2024").unwrap();
    let store = open(dir.path(), SessionConfig::default());
    assert_eq!(store.session_count(), 0);
    let moved: Vec<_> = fs::read_dir(&sessions)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("index.json.corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(fs::read_to_string(sessions.join(&moved[0])).unwrap().contains("2024"));
    assert!(on_disk(dir.path()).is_empty(), "a fresh, readable index");
    let entry = store.begin_turn(&dm("1"), hours(1.0)).unwrap().entry;
    store.append(&entry.key, &turn(0), 0, 0, hours(1.0)).unwrap();
    assert_eq!(store.history(&entry.session_id).unwrap(), turn(0));
}

#[test]
fn a_torn_transcript_line_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SessionConfig::default());
    let entry = store.begin_turn(&dm("1"), hours(1.0)).unwrap().entry;
    store.append(&entry.key, &turn(0), 0, 0, hours(1.0)).unwrap();
    let path = dir.path().join(format!("sessions/{}.jsonl", entry.session_id));
    let mut text = fs::read(&path).unwrap();
    text.extend_from_slice(b"{\"ts\":1.0,\"role\":\"user\",\"content\":\"cut of");
    fs::write(&path, text).unwrap();
    assert_eq!(store.history(&entry.session_id).unwrap(), turn(0));
    store.append(&entry.key, &turn(1), 0, 0, hours(1.0)).unwrap();
    assert_eq!(store.history(&entry.session_id).unwrap(), [turn(0), turn(1)].concat());
}

#[test]
fn files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SessionConfig::default());
    let entry = store.begin_turn(&dm("1"), hours(1.0)).unwrap().entry;
    store.append(&entry.key, &turn(0), 0, 0, hours(1.0)).unwrap();
    store.flush().unwrap();
    let sessions = dir.path().join("sessions");
    let mode = |name: &str| fs::metadata(sessions.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(""), 0o700);
    for name in ["index.json", "index.journal", &format!("{}.jsonl", entry.session_id)] {
        assert_eq!(mode(name), 0o600, "{name}");
    }
}

#[test]
fn group_members_get_their_own_sessions_unless_configured_otherwise() {
    let member = |user: &str| Source { chat_type: ChatType::Group, user_id: Some(user.into()), ..dm("-100") };
    for (per_user, sessions) in [(true, 2), (false, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), SessionConfig { group_sessions_per_user: per_user, ..SessionConfig::default() });
        store.begin_turn(&member("a"), hours(1.0)).unwrap();
        store.begin_turn(&member("b"), hours(1.0)).unwrap();
        assert_eq!(store.session_count(), sessions, "per_user = {per_user}");
    }
}

#[test]
fn worker_threads_share_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), SessionConfig::default()));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let source = dm(&format!("{w}-{}", i % 5));
                    let now = at(1e9 + i as f64 * 0.1);
                    let entry = store.begin_turn(&source, now).unwrap().entry;
                    store.append(&entry.key, &turn(i), 1, 1, now).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(store.session_count(), 40);
    let entry = store.get("agent:main:tg:dm:3-4").unwrap();
    assert_eq!(entry.input_tokens, 10);
    assert_eq!(store.history(&entry.session_id).unwrap().len(), 20);
}

/// Files written before issue 8 hold each entry's `origin` (snapshot, journal and
/// archive lines alike): a gateway upgraded in place reads them, goes on in the same
/// sessions, and its next snapshot no longer holds the origin.
#[test]
fn an_index_of_the_old_format_with_origins_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions");
    fs::create_dir_all(sessions.join("archive")).unwrap();
    let origin = r#""origin":{"platform":"tg","chat_id":"1","chat_type":"dm","chat_name":"Ann","user_id":"1","user_name":"ann","thread_id":null}"#;
    let t = MIDNIGHT as f64 + 100.0;
    let entry = |id: &str, tokens: u64| {
        format!(
            r#"{{"session_id":"{id}","created_at":{t},"updated_at":{t},{origin},"input_tokens":{tokens},"output_tokens":1}}"#
        )
    };
    let snapshot = format!(
        r#"{{"agent:main:tg:dm:1":{},"agent:main:tg:dm:2":{}}}"#,
        entry("20240310_000140_0000aaaa", 5),
        entry("20240310_000140_0000bbbb", 0)
    );
    fs::write(sessions.join("index.json"), snapshot).unwrap();
    // The journal took a later turn of chat 1, and a session of chat 3.
    let journal = format!(
        "{{\"key\":\"agent:main:tg:dm:1\",\"entry\":{}}}\n{{\"key\":\"agent:main:tg:dm:3\",\"entry\":{}}}\n",
        entry("20240310_000140_0000aaaa", 9),
        entry("20240310_000140_0000cccc", 0)
    );
    fs::write(sessions.join("index.journal"), journal).unwrap();
    // Chat 4 went quiet and was archived.
    let archived = format!("{{\"key\":\"agent:main:tg:dm:4\",\"entry\":{}}}\n", entry("20240310_000140_0000dddd", 2));
    let bucket = (0..64).map(|b| format!("{b:02x}.jsonl")).collect::<Vec<_>>();
    for name in &bucket {
        fs::write(sessions.join("archive").join(name), &archived).unwrap();
    }

    let store = open(dir.path(), SessionConfig { reset: ResetMode::None, ..SessionConfig::default() });
    let one = store.begin_turn(&dm("1"), hours(1.0)).unwrap();
    assert_eq!(one.entry.session_id, "20240310_000140_0000aaaa", "the same session goes on");
    assert_eq!(one.entry.input_tokens, 9, "the journal's later counts apply");
    assert!(one.notice.is_none());
    assert_eq!(store.begin_turn(&dm("2"), hours(1.0)).unwrap().entry.session_id, "20240310_000140_0000bbbb");
    assert_eq!(store.begin_turn(&dm("3"), hours(1.0)).unwrap().entry.session_id, "20240310_000140_0000cccc");
    let four = store.get("agent:main:tg:dm:4").expect("the archived entry is read");
    assert_eq!((four.session_id.as_str(), four.input_tokens), ("20240310_000140_0000dddd", 2));
    store.flush().unwrap();
    drop(store);
    let text = fs::read_to_string(sessions.join("index.json")).unwrap();
    assert!(!text.contains("origin"), "the new snapshot holds no origin: {text}");
    assert_eq!(on_disk(dir.path()).len(), 3);
    assert_eq!(stored(dir.path())["agent:main:tg:dm:1"].input_tokens, 9, "and reads back");
}
