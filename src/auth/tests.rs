use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, UNIX_EPOCH};

use tempfile::TempDir;

use super::*;
use crate::config::Section;

/// Test times are offsets in seconds from a fixed instant.
fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn source(platform: &str, user: Option<&str>, chat_type: ChatType) -> Source {
    Source {
        platform: platform.to_string(),
        chat_id: "chat-1".to_string(),
        chat_type,
        chat_name: None,
        user_id: user.map(str::to_string),
        user_name: user.map(|u| format!("name of {u}")),
        thread_id: None,
    }
}

fn dm(platform: &str, user: &str) -> Source {
    source(platform, Some(user), ChatType::Dm)
}

fn users(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn access(ids: &[&str], allow_all: Option<bool>, dm: Option<UnauthorizedDm>) -> PlatformAccess {
    PlatformAccess { allowed_users: users(ids), allow_all, unauthorized_dm: dm }
}

/// An `Auth` over a fresh state directory with `tg` (telegram), `dc` (discord) and
/// `term` (console), each with `tg_access` or no access keys of its own.
fn setup(global: AccessConfig, tg_access: PlatformAccess) -> (TempDir, Auth) {
    let dir = tempfile::tempdir().unwrap();
    let platforms = vec![
        ("tg".to_string(), "telegram", tg_access),
        ("dc".to_string(), "discord", PlatformAccess::default()),
        ("term".to_string(), "console", PlatformAccess::default()),
    ];
    let auth = Auth::new(dir.path(), &global, &platforms);
    (dir, auth)
}

fn open() -> (TempDir, Auth) {
    setup(AccessConfig::default(), PlatformAccess::default())
}

/// The code in a pairing reply; panics on any other decision.
fn code_of(d: &Decision) -> String {
    let Decision::Reply(text) = d else { panic!("expected a pairing reply, got {d:?}") };
    let start = text.find("code is ").unwrap_or_else(|| panic!("no code in {text:?}")) + "code is ".len();
    text[start..start + 8].to_string()
}

fn pairing_files(dir: &TempDir) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir.path().join("pairing")) else { return Vec::new() };
    entries.map(|e| e.unwrap().path()).collect()
}

fn assert_in_no_file(dir: &TempDir, code: &str) {
    for path in pairing_files(dir) {
        let text = String::from_utf8_lossy(&fs::read(&path).unwrap()).to_string();
        assert!(!text.contains(code), "{} holds the code", path.display());
        assert!(!text.contains(&code.to_lowercase()), "{} holds the code", path.display());
    }
}

// ---- decisions -------------------------------------------------------------------

#[test]
fn global_allowlist_allows_on_every_platform() {
    let global = AccessConfig { allowed_users: users(&["42"]), ..AccessConfig::default() };
    let (_dir, auth) = setup(global, PlatformAccess::default());
    assert_eq!(auth.check(&dm("tg", "42"), at(0)), Decision::Allow);
    assert_eq!(auth.check(&dm("dc", "42"), at(0)), Decision::Allow);
    assert_eq!(auth.check(&source("dc", Some("42"), ChatType::Group), at(0)), Decision::Allow);
    assert_ne!(auth.check(&dm("tg", "43"), at(0)), Decision::Allow);
}

#[test]
fn platform_allowlist_applies_to_its_platform_only() {
    let (_dir, auth) = setup(AccessConfig::default(), access(&["7"], None, None));
    assert_eq!(auth.check(&dm("tg", "7"), at(0)), Decision::Allow);
    assert_eq!(auth.check(&source("tg", Some("7"), ChatType::Channel), at(0)), Decision::Allow);
    assert_ne!(auth.check(&dm("dc", "7"), at(0)), Decision::Allow);
}

#[test]
fn allow_all_global_and_per_platform_override() {
    let everyone = AccessConfig { allow_all: true, ..AccessConfig::default() };
    let (_dir, auth) = setup(everyone.clone(), PlatformAccess::default());
    assert_eq!(auth.check(&dm("tg", "anyone"), at(0)), Decision::Allow);
    assert_eq!(auth.check(&dm("dc", "anyone"), at(0)), Decision::Allow);

    // The platform's `allow_all = false` wins over the global `true`.
    let (_dir, auth) = setup(everyone, access(&[], Some(false), None));
    assert_ne!(auth.check(&dm("tg", "anyone"), at(0)), Decision::Allow);
    assert_eq!(auth.check(&dm("dc", "anyone"), at(0)), Decision::Allow);

    let (_dir, auth) = setup(AccessConfig::default(), access(&[], Some(true), None));
    assert_eq!(auth.check(&source("tg", Some("x"), ChatType::Group), at(0)), Decision::Allow);
    assert_eq!(auth.check(&source("dc", Some("x"), ChatType::Group), at(0)), Decision::Ignore);
}

#[test]
fn console_is_always_allowed_even_without_a_user_id() {
    let (dir, auth) = open();
    assert_eq!(auth.check(&source("term", None, ChatType::Dm), at(0)), Decision::Allow);
    assert_eq!(auth.check(&dm("term", "stranger"), at(0)), Decision::Allow);
    assert!(pairing_files(&dir).is_empty());
}

#[test]
fn a_message_without_a_user_id_is_denied_even_with_allow_all() {
    let everyone = AccessConfig { allow_all: true, ..AccessConfig::default() };
    let (dir, auth) = setup(everyone, PlatformAccess::default());
    assert_eq!(auth.check(&source("tg", None, ChatType::Dm), at(0)), Decision::Ignore);
    assert_eq!(auth.check(&source("tg", Some(""), ChatType::Dm), at(0)), Decision::Ignore);
    assert!(pairing_files(&dir).is_empty());
}

#[test]
fn strangers_in_groups_and_channels_are_ignored_without_a_code() {
    let (dir, auth) = open();
    assert_eq!(auth.check(&source("tg", Some("9"), ChatType::Group), at(0)), Decision::Ignore);
    assert_eq!(auth.check(&source("tg", Some("9"), ChatType::Channel), at(0)), Decision::Ignore);
    assert!(pairing_files(&dir).is_empty(), "no request may be recorded");
    // Nothing was issued, so the first DM still gets a code.
    code_of(&auth.check(&dm("tg", "9"), at(1)));
}

#[test]
fn unauthorized_dm_ignore_sends_nothing_and_a_platform_can_override_it() {
    let quiet = AccessConfig { unauthorized_dm: UnauthorizedDm::Ignore, ..AccessConfig::default() };
    let (dir, auth) = setup(quiet.clone(), PlatformAccess::default());
    assert_eq!(auth.check(&dm("tg", "9"), at(0)), Decision::Ignore);
    assert!(pairing_files(&dir).is_empty());

    let (_dir, auth) = setup(quiet, access(&[], None, Some(UnauthorizedDm::Pair)));
    code_of(&auth.check(&dm("tg", "9"), at(0)));
    assert_eq!(auth.check(&dm("dc", "9"), at(0)), Decision::Ignore);
}

#[test]
fn an_unconfigured_platform_gets_the_global_rules_and_no_pairing() {
    let global = AccessConfig { allowed_users: users(&["1"]), ..AccessConfig::default() };
    let (dir, auth) = setup(global, PlatformAccess::default());
    assert_eq!(auth.check(&dm("other", "1"), at(0)), Decision::Allow);
    assert_eq!(auth.check(&dm("other", "2"), at(0)), Decision::Ignore);
    assert!(pairing_files(&dir).is_empty());
}

// ---- pairing through `check` ------------------------------------------------------

#[test]
fn a_dm_stranger_gets_one_code_per_10_minutes() {
    let (_dir, auth) = open();
    let first = auth.check(&dm("tg", "9"), at(0));
    let code = code_of(&first);
    assert_eq!(
        first,
        Decision::Reply(format!(
            "I don't know you yet. Your pairing code is {code}; ask the bot owner to run: \
             switchboard pairing approve tg {code}"
        ))
    );
    assert_eq!(code.len(), 8);
    assert!(code.bytes().all(|b| pairing::CODE_ALPHABET.contains(&b)));
    // "Already pending" would be a second reply within 10 minutes: held back.
    assert_eq!(auth.check(&dm("tg", "9"), at(599)), Decision::Ignore);
    // Another user, another platform: unaffected.
    code_of(&auth.check(&dm("tg", "10"), at(1)));
    code_of(&auth.check(&dm("dc", "9"), at(1)));
    // After 10 minutes a new code; the first one stays valid, and approving either
    // one retires both.
    let second = code_of(&auth.check(&dm("tg", "9"), at(600)));
    assert_ne!(second, code);
    let pairing = Pairing::open(_dir.path());
    assert_eq!(pairing.list(at(601)).unwrap()[1].pending.len(), 3);
    assert_eq!(pairing.approve("tg", &code, at(601)).unwrap().user_id, "9");
    assert!(matches!(pairing.approve("tg", &second, at(602)), Err(PairingError::WrongCode { .. })));
}

#[test]
fn at_most_three_pending_requests_per_platform() {
    let (_dir, auth) = open();
    for user in ["1", "2", "3"] {
        code_of(&auth.check(&dm("tg", user), at(0)));
    }
    assert_eq!(auth.check(&dm("tg", "4"), at(1)), Decision::Reply(TOO_MANY_TEXT.to_string()));
    // The refusal is not repeated within 10 minutes, and other platforms have their own quota.
    assert_eq!(auth.check(&dm("tg", "4"), at(2)), Decision::Ignore);
    assert_eq!(auth.check(&dm("tg", "4"), at(601)), Decision::Reply(TOO_MANY_TEXT.to_string()));
    code_of(&auth.check(&dm("dc", "4"), at(2)));
    // Once the first codes expire there is room again.
    code_of(&auth.check(&dm("tg", "4"), at(3600)));
}

#[test]
fn a_code_expires_after_one_hour() {
    let (dir, auth) = open();
    let late = code_of(&auth.check(&dm("tg", "9"), at(0)));
    let in_time = code_of(&auth.check(&dm("tg", "10"), at(1)));
    let pairing = Pairing::open(dir.path());
    assert!(matches!(pairing.approve("tg", &late, at(3600)), Err(PairingError::WrongCode { .. })));
    assert_eq!(pairing.list(at(3600)).unwrap()[0].pending.len(), 1);
    assert_eq!(pairing.approve("tg", &in_time, at(3600)).unwrap().user_id, "10");
}

#[test]
fn approving_the_code_in_any_case_with_spaces_allows_the_next_message() {
    for typed in [str::to_string as fn(&str) -> String, |c| format!("  {}\n", c.to_lowercase())] {
        let (dir, auth) = open();
        let code = code_of(&auth.check(&dm("tg", "9"), at(0)));
        // The CLI is another handle on the same directory, as in another process.
        let user = Pairing::open(dir.path()).approve("tg", &typed(&code), at(5)).unwrap();
        assert_eq!(user.user_id, "9");
        assert_eq!(user.user_name.as_deref(), Some("name of 9"));
        assert_eq!(user.approved_at, at(5));
        assert_eq!(auth.check(&dm("tg", "9"), at(6)), Decision::Allow);
        assert_eq!(auth.check(&source("tg", Some("9"), ChatType::Group), at(6)), Decision::Allow);
        // Approval is per platform instance.
        assert_ne!(auth.check(&dm("dc", "9"), at(6)), Decision::Allow);
    }
}

#[test]
fn five_wrong_codes_lock_approvals_for_an_hour() {
    let (dir, auth) = open();
    let pairing = Pairing::open(dir.path());
    for left in (1..5).rev() {
        let err = pairing.approve("tg", "AAAAAAAA", at(0)).unwrap_err();
        assert!(matches!(err, PairingError::WrongCode { attempts_left } if attempts_left == left), "{err}");
    }
    let err = pairing.approve("tg", "AAAAAAAA", at(0)).unwrap_err();
    assert!(matches!(err, PairingError::LockedOut { remaining } if remaining == pairing::LOCKOUT));
    // A code issued during the lockout is refused until the hour has passed.
    let code = code_of(&auth.check(&dm("tg", "9"), at(1800)));
    let err = pairing.approve("tg", &code, at(3599)).unwrap_err();
    assert!(matches!(err, PairingError::LockedOut { remaining } if remaining == Duration::from_secs(1)));
    assert_ne!(auth.check(&dm("tg", "9"), at(3599)), Decision::Allow);
    // Other platforms are not locked.
    let other = code_of(&auth.check(&dm("dc", "9"), at(1800)));
    assert!(pairing.approve("dc", &other, at(1801)).is_ok());
    pairing.approve("tg", &code, at(3600)).unwrap();
    assert_eq!(auth.check(&dm("tg", "9"), at(3601)), Decision::Allow);
}

#[test]
fn a_malformed_code_is_refused_without_counting_toward_the_lockout() {
    let (dir, _auth) = open();
    let pairing = Pairing::open(dir.path());
    for bad in ["", "ABC", "ABCDEFGH1", "ABCDEFG0", "ABCD EFG"] {
        for _ in 0..5 {
            assert!(matches!(pairing.approve("tg", bad, at(0)), Err(PairingError::MalformedCode)), "{bad:?}");
        }
    }
    assert!(matches!(pairing.approve("tg", "ABCDEFGH", at(0)), Err(PairingError::WrongCode { attempts_left: 4 })));
}

#[test]
fn a_success_resets_the_failure_count() {
    let (dir, auth) = open();
    let pairing = Pairing::open(dir.path());
    for _ in 0..4 {
        let _ = pairing.approve("tg", "AAAAAAAA", at(0));
    }
    let code = code_of(&auth.check(&dm("tg", "9"), at(0)));
    pairing.approve("tg", &code, at(1)).unwrap();
    let err = pairing.approve("tg", "AAAAAAAA", at(2)).unwrap_err();
    assert!(matches!(err, PairingError::WrongCode { attempts_left: 4 }), "{err}");
}

#[test]
fn revoking_sends_the_user_back_to_pairing() {
    let (dir, auth) = open();
    let pairing = Pairing::open(dir.path());
    let code = code_of(&auth.check(&dm("tg", "9"), at(0)));
    pairing.approve("tg", &code, at(1)).unwrap();
    assert_eq!(auth.check(&dm("tg", "9"), at(2)), Decision::Allow);
    assert!(pairing.revoke("tg", "9").unwrap());
    assert!(!pairing.revoke("tg", "9").unwrap());
    // Within the 10 minutes of the first request: a new code at once, not "pending".
    let again = code_of(&auth.check(&dm("tg", "9"), at(3)));
    assert!(pairing.revoke("tg", "9").unwrap(), "a pending request is revoked too");
    assert!(matches!(pairing.approve("tg", &again, at(4)), Err(PairingError::WrongCode { .. })));
}

#[test]
fn a_dm_flood_from_one_stranger_gets_one_reply_per_10_minutes() {
    let (_dir, auth) = open();
    code_of(&auth.check(&dm("tg", "9"), at(0)));
    let replies = (1..1000).filter(|i| auth.check(&dm("tg", "9"), at(i / 10)) != Decision::Ignore).count();
    assert_eq!(replies, 0, "every message after the code within 10 minutes is dropped");
    // The store issues a new code after 10 minutes, and the flood is dropped again.
    code_of(&auth.check(&dm("tg", "9"), at(600)));
    assert_eq!(auth.check(&dm("tg", "9"), at(601)), Decision::Ignore);
}

#[test]
fn pairing_replies_are_capped_per_platform() {
    let (_dir, auth) = open();
    for user in ["1", "2", "3"] {
        code_of(&auth.check(&dm("tg", user), at(0)));
    }
    // The pending quota is full: many strangers, each asking once, get "too many", but
    // no more than PLATFORM_CAP a minute (the three codes count).
    let answered = |from: u32, to: u32, t: u64| {
        (from..to).filter(|u| auth.check(&dm("tg", &u.to_string()), at(t)) != Decision::Ignore).count()
    };
    assert_eq!(answered(100, 150, 30), throttle::PLATFORM_CAP - 3);
    assert_eq!(answered(200, 250, 61), 3, "the codes left the window");
    assert_eq!(answered(300, 350, 95), throttle::PLATFORM_CAP - 3);
    // Another platform has its own cap.
    code_of(&auth.check(&dm("dc", "1"), at(95)));
}

#[test]
fn the_throttle_forgets_what_left_its_windows() {
    let mut t = throttle::Throttle::default();
    // A stranger a second, on two platforms, for two hours: only the recent ones stay.
    for i in 0..7200u64 {
        for platform in ["tg", "dc"] {
            t.admit(platform, &i.to_string(), at(i));
        }
    }
    let (users, sent) = t.remembered();
    let per_window = throttle::PLATFORM_CAP as u64 * throttle::USER_WINDOW.as_secs() / 60;
    assert!(users as u64 <= 2 * per_window, "{users} users remembered");
    assert!(sent <= 2 * throttle::PLATFORM_CAP, "{sent} sends remembered");
    // A clock that jumps back forgets rather than silencing everyone.
    assert!(t.admit("tg", "new", at(0)));
}

#[test]
fn allowed_users_dedup_keeps_the_first_of_each_in_order() {
    let ids = users(&[" 7", "8", "7", "", "U1", "u1", "8 "]);
    assert_eq!(dedup_ids(ids), (users(&["7", "8", "U1", "u1"]), true));
    assert_eq!(dedup_ids(users(&["a"])), (users(&["a"]), false));
}

#[test]
fn a_two_million_entry_allowlist_is_read_in_linear_time() {
    // Quadratic de-duplication took minutes here; a linear one takes a moment.
    let ids: Vec<String> = (0..2_000_000u32).map(|i| (i % 1_500_000).to_string()).collect();
    let (out, had_empty) = dedup_ids(ids);
    assert_eq!(out.len(), 1_500_000);
    assert!(!had_empty);
    assert_eq!(out[1_499_999], "1499999");
}

// ---- the store ------------------------------------------------------------------

#[test]
fn no_code_is_ever_written_or_put_in_an_error_or_listing() {
    let (dir, auth) = open();
    let pairing = Pairing::open(dir.path());
    let mut codes = Vec::new();
    for user in ["1", "2", "3"] {
        codes.push(code_of(&auth.check(&dm("tg", user), at(0))));
    }
    pairing.approve("tg", &codes[0], at(1)).unwrap();
    let _ = pairing.approve("tg", "AAAAAAAA", at(1));
    assert!(!pairing_files(&dir).is_empty());
    let listing = format!("{:?}", pairing.list(at(2)).unwrap());
    let known = users(&["tg"]);
    let list = pairing_command(dir.path(), &known, &users(&["list"]), at(2)).unwrap();
    let request = pairing.request("tg", "4", None, at(700)).unwrap();
    assert!(format!("{request:?}").contains("hidden"));
    let Request::Issued(fourth) = request else { panic!("{request:?}") };
    codes.push(fourth.reveal().to_string());
    let err = pairing.approve("tg", &codes[0], at(701)).unwrap_err().to_string();
    for code in &codes {
        assert_in_no_file(&dir, code);
        assert!(!listing.contains(code.as_str()) && !list.contains(code.as_str()) && !err.contains(code.as_str()));
    }
}

#[test]
fn files_are_private() {
    let (dir, auth) = open();
    code_of(&auth.check(&dm("tg", "9"), at(0)));
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("pairing")), 0o700);
    let files = pairing_files(&dir);
    let names: Vec<_> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().to_string()).collect();
    assert!(names.contains(&"tg.json".to_string()) && names.contains(&".lock".to_string()), "{names:?}");
    for path in files {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

#[test]
fn two_handles_interleaving_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, cli) = (Pairing::open(dir.path()), Pairing::open(dir.path()));
    let issue = |user: &str, t| match gateway.request("tg", user, None, at(t)).unwrap() {
        Request::Issued(code) => code.reveal().to_string(),
        other => panic!("{other:?}"),
    };
    let a = issue("a", 0);
    let b = issue("b", 1);
    cli.approve("tg", &a, at(2)).unwrap();
    let c = issue("c", 3);
    cli.approve("tg", &b, at(4)).unwrap();
    assert!(cli.revoke("tg", "a").unwrap());
    let d = issue("d", 5);
    cli.approve("tg", &c, at(6)).unwrap();
    cli.approve("tg", &d, at(7)).unwrap();
    for (user, approved) in [("a", false), ("b", true), ("c", true), ("d", true)] {
        assert_eq!(gateway.is_approved("tg", user).unwrap(), approved, "{user}");
    }
}

#[test]
fn concurrent_issue_and_approve_from_two_threads_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, cli) = (Pairing::open(dir.path()), Pairing::open(dir.path()));
    // A rendezvous channel keeps at most two requests pending, under the limit of 3.
    let (tx, rx) = mpsc::sync_channel::<String>(0);
    let issuer = thread::spawn(move || {
        for i in 0..40 {
            let Request::Issued(code) = gateway.request("tg", &format!("u{i}"), None, at(0)).unwrap() else {
                panic!("no code for u{i}");
            };
            tx.send(code.reveal().to_string()).unwrap();
        }
    });
    for code in rx {
        cli.approve("tg", &code, at(1)).unwrap();
    }
    issuer.join().unwrap();
    let listing = cli.list(at(2)).unwrap();
    assert_eq!(listing[0].approved.len(), 40);
    assert!(listing[0].pending.is_empty());
}

#[test]
fn an_update_waits_for_the_lock_held_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let pairing = Pairing::open(dir.path());
    pairing.revoke("tg", "nobody").unwrap(); // creates the directory and the lock file
    let held = fs::OpenOptions::new().write(true).open(pairing.dir().join(".lock")).unwrap();
    held.lock().unwrap();
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || tx.send(pairing.request("tg", "9", None, at(0)).is_ok()).unwrap());
    assert_eq!(rx.recv_timeout(Duration::from_millis(300)), Err(mpsc::RecvTimeoutError::Timeout));
    held.unlock().unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
    worker.join().unwrap();
}

#[test]
fn a_corrupt_file_is_kept_aside_and_read_as_empty() {
    let (dir, auth) = open();
    let pairing_dir = dir.path().join("pairing");
    crate::fsutil::create_private_dir(&pairing_dir).unwrap();
    fs::write(pairing_dir.join("tg.json"), b"{ not json").unwrap();
    let code = code_of(&auth.check(&dm("tg", "9"), at(0)));
    let aside: Vec<_> = pairing_files(&dir)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("tg.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", pairing_files(&dir));
    assert_eq!(fs::read(&aside[0]).unwrap(), b"{ not json");
    assert_eq!(Pairing::open(dir.path()).approve("tg", &code, at(1)).unwrap().user_id, "9");

    // A read-only path (the approval check of a known platform) recovers too.
    fs::write(pairing_dir.join("dc.json"), [0xff, 0x00]).unwrap();
    assert!(!Pairing::open(dir.path()).is_approved("dc", "9").unwrap());
    assert!(!pairing_dir.join("dc.json").exists());
    assert_eq!(Pairing::open(dir.path()).list(at(2)).unwrap().len(), 1);
}

#[test]
fn a_platform_name_cannot_escape_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let pairing = Pairing::open(dir.path());
    for name in ["../x", "", "a/b", "TG"] {
        assert!(matches!(pairing.request(name, "9", None, at(0)), Err(PairingError::BadPlatform(_))), "{name}");
    }
}

// ---- config -----------------------------------------------------------------------

#[test]
fn parse_config_defaults_and_values() {
    let mut s = Section::new_for_test("", &[]);
    assert_eq!(parse_config(&mut s), AccessConfig::default());
    assert!(s.finish().is_empty());
    assert_eq!(AccessConfig::default().unauthorized_dm, UnauthorizedDm::Pair);

    let toml = "allowed_users = [\" 1 \", \"${ME}\", \"1\"]\nallow_all = true\nunauthorized_dm = \"ignore\"";
    let mut s = Section::new_for_test(toml, &[("ME", "@me:example.org")]);
    let want = AccessConfig {
        allowed_users: users(&["1", "@me:example.org"]),
        allow_all: true,
        unauthorized_dm: UnauthorizedDm::Ignore,
    };
    assert_eq!(parse_config(&mut s), want);
    assert!(s.finish().is_empty());
}

#[test]
fn parse_config_reports_bad_values() {
    let toml = "allowed_users = \"1\"\nallow_all = \"yes\"\nunauthorized_dm = \"pairs\"";
    let mut s = Section::new_for_test(toml, &[]);
    assert_eq!(parse_config(&mut s), AccessConfig::default());
    let errors: Vec<String> = s.finish().iter().map(|e| e.to_string()).collect();
    let has = |key: &str, text: &str| errors.iter().any(|e| e.contains(key) && e.contains(text));
    assert!(has("allowed_users", "expected a list of strings"), "{errors:?}");
    assert!(has("allow_all", "expected true or false"), "{errors:?}");
    assert!(has("unauthorized_dm", "did you mean `pair`"), "{errors:?}");
    assert!(has("unauthorized_dm", "pair, ignore"), "{errors:?}");

    let mut s = Section::new_for_test("allowed_users = [\"1\", \"  \"]", &[]);
    assert_eq!(parse_config(&mut s).allowed_users, users(&["1"]));
    let errors = s.finish();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().contains("empty user id"), "{}", errors[0]);
}

#[test]
fn parse_platform_access_tells_absent_from_false() {
    let mut s = Section::new_for_test("", &[]);
    assert_eq!(parse_platform_access(&mut s), PlatformAccess::default());
    assert!(s.finish().is_empty());
    for (toml, want) in [("allow_all = false", Some(false)), ("allow_all = true", Some(true))] {
        let mut s = Section::new_for_test(toml, &[]);
        assert_eq!(parse_platform_access(&mut s).allow_all, want, "{toml}");
        assert!(s.finish().is_empty());
    }
    let toml = "allowed_users = [\"5\"]\nunauthorized_dm = \"pair\"";
    let mut s = Section::new_for_test(toml, &[]);
    assert_eq!(parse_platform_access(&mut s), access(&["5"], None, Some(UnauthorizedDm::Pair)));

    let mut s = Section::new_for_test("allow_all = 1\nunauthorized_dm = \"no\"", &[]);
    assert_eq!(parse_platform_access(&mut s), PlatformAccess::default());
    let errors: Vec<String> = s.finish().iter().map(|e| e.to_string()).collect();
    assert!(errors.iter().any(|e| e.contains("platforms.test.allow_all")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("platforms.test.unauthorized_dm")), "{errors:?}");
}

// ---- startup warning --------------------------------------------------------------

#[test]
fn open_platforms_and_the_startup_warning() {
    let (_dir, auth) = open();
    assert_eq!(auth.open_platforms(), users(&["dc", "tg"]));
    assert_eq!(
        startup_warning(&auth).unwrap(),
        "no allowlist set and allow_all = false for dc, tg: strangers get a pairing code \
         (set allowed_users, or allow_all = true)"
    );

    let (_dir, auth) = setup(AccessConfig::default(), access(&["1"], None, None));
    assert_eq!(auth.open_platforms(), users(&["dc"]));
    let (_dir, auth) = setup(AccessConfig::default(), access(&[], None, Some(UnauthorizedDm::Ignore)));
    let warning = startup_warning(&auth).unwrap();
    assert!(warning.starts_with("no allowlist set and allow_all = false for dc: strangers"), "{warning}");
    assert!(warning.contains("for tg: only users approved by pairing"), "{warning}");

    let global = AccessConfig { allowed_users: users(&["1"]), ..AccessConfig::default() };
    let (_dir, auth) = setup(global, PlatformAccess::default());
    assert!(auth.open_platforms().is_empty());
    assert_eq!(startup_warning(&auth), None);
    let (_dir, auth) = setup(AccessConfig { allow_all: true, ..AccessConfig::default() }, PlatformAccess::default());
    assert_eq!(startup_warning(&auth), None);
}

// ---- the CLI ----------------------------------------------------------------------

fn cli(dir: &TempDir, args: &[&str], now: SystemTime) -> Result<String, String> {
    pairing_command(dir.path(), &users(&["dc", "tg"]), &users(args), now)
}

#[test]
fn pairing_command_list_approve_revoke() {
    let (dir, auth) = open();
    assert_eq!(cli(&dir, &["list"], at(0)).unwrap(), "Pending requests: none\nApproved users: none");
    let code = code_of(&auth.check(&dm("tg", "9"), at(0)));
    code_of(&auth.check(&dm("dc", "8"), at(0)));
    assert_eq!(
        cli(&dir, &["list"], at(300)).unwrap(),
        "Pending requests:\n  dc  8 (name of 8)  asked 5m ago, expires in 55m\n  \
         tg  9 (name of 9)  asked 5m ago, expires in 55m\n  \
         (approve with: switchboard pairing approve PLATFORM CODE; the code is in the user's chat)\n\
         Approved users: none"
    );
    let approved = cli(&dir, &["approve", "tg", &format!(" {} ", code.to_lowercase())], at(300)).unwrap();
    assert_eq!(approved, "Approved 9 (name of 9) on tg; their next message will be answered.");
    assert!(cli(&dir, &["list"], at(7500)).unwrap().ends_with("Approved users:\n  tg  9 (name of 9)  approved 2h ago"));
    assert_eq!(cli(&dir, &["revoke", "tg", "9"], at(7500)).unwrap(), "Revoked 9 on tg.");
    assert_eq!(
        cli(&dir, &["revoke", "tg", "9"], at(7500)).unwrap(),
        "9 was neither approved nor pending on tg; nothing to do."
    );
    assert_ne!(auth.check(&dm("tg", "9"), at(7501)), Decision::Allow);
}

#[test]
fn pairing_command_errors() {
    let dir = tempfile::tempdir().unwrap();
    let usage = Err(USAGE.to_string());
    for args in [&[][..], &["approve", "tg"], &["lst"], &["list", "x"], &["revoke", "tg"]] {
        assert_eq!(cli(&dir, args, at(0)), usage, "{args:?}");
    }
    assert_eq!(
        cli(&dir, &["approve", "irc", "ABCDEFGH"], at(0)),
        Err("unknown platform `irc`; known platforms: dc, tg".to_string())
    );
    assert_eq!(
        pairing_command(dir.path(), &[], &users(&["revoke", "irc", "1"]), at(0)),
        Err("unknown platform `irc`; known platforms: none configured".to_string())
    );
    let wrong = cli(&dir, &["approve", "tg", "ABCDEFGH"], at(0)).unwrap_err();
    assert!(wrong.starts_with("not approved: no pending pairing request has this code"), "{wrong}");
    assert!(wrong.contains("4 more wrong code(s)"), "{wrong}");
    let malformed = cli(&dir, &["approve", "tg", "ABC"], at(0)).unwrap_err();
    assert_eq!(malformed, "not approved: a pairing code is 8 characters from ABCDEFGHJKLMNPQRSTUVWXYZ23456789");
    for _ in 0..4 {
        let _ = cli(&dir, &["approve", "tg", "ABCDEFGH"], at(0));
    }
    let locked = cli(&dir, &["list"], at(60)).unwrap();
    assert!(locked.ends_with("Locked:\n  tg  approvals locked for 59m after too many wrong codes"), "{locked}");
    let refused = cli(&dir, &["approve", "tg", "ABCDEFGH"], at(60)).unwrap_err();
    assert!(refused.contains("locked for another 59m"), "{refused}");
}

#[test]
fn revoke_works_on_a_platform_removed_from_the_config() {
    let (dir, auth) = open();
    let code = code_of(&auth.check(&dm("tg", "9"), at(0)));
    Pairing::open(dir.path()).approve("tg", &code, at(1)).unwrap();
    let known = users(&["dc"]);
    let list = pairing_command(dir.path(), &known, &users(&["list"]), at(2)).unwrap();
    assert!(list.contains("tg (not in the config)  9 (name of 9)"), "{list}");
    assert_eq!(
        pairing_command(dir.path(), &known, &users(&["revoke", "tg", "9"]), at(2)),
        Ok("Revoked 9 on tg.".into())
    );
}

#[test]
fn user_names_cannot_put_control_characters_on_the_owners_terminal() {
    let dir = tempfile::tempdir().unwrap();
    Pairing::open(dir.path()).request("tg", "9", Some("evil\x1b[2J"), at(0)).unwrap();
    let list = cli(&dir, &["list"], at(1)).unwrap();
    assert!(list.contains("9 (evil?[2J)"), "{list}");
}
