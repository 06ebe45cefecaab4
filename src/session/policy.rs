/*!
The time arithmetic of sessions, as pure functions of Unix seconds: when a session has
expired, what the user is told, and how a session id is spelled.

Local time is the wall clock shifted by a fixed UTC offset that the caller measures once at
startup (reading the local zone later, from threads, is not sound on Unix). The price: after
a daylight-saving change the daily reset is an hour off until the next restart.
*/

use std::time::{SystemTime, UNIX_EPOCH};

use super::config::{ResetMode, SessionConfig};

const DAY: f64 = 86_400.0;

/// Why a session expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expiry {
    /// No message for longer than `idle`.
    Idle,
    /// The daily reset hour passed since the last message.
    Daily,
}

/// `now` as Unix seconds (negative before 1970, which only a broken clock gives).
pub(super) fn unix_secs(now: SystemTime) -> f64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Whether a session last active at `updated_at` has expired at `now`, and why. Idle wins
/// when both apply: "after 24 h idle" is the more telling reason.
pub(super) fn expiry(config: &SessionConfig, utc_offset_secs: i32, updated_at: f64, now: f64) -> Option<Expiry> {
    let (idle, daily) = match config.reset {
        ResetMode::Idle => (true, false),
        ResetMode::Daily => (false, true),
        ResetMode::Both => (true, true),
        ResetMode::None => (false, false),
    };
    if idle && now > updated_at + config.idle.as_secs_f64() {
        return Some(Expiry::Idle);
    }
    if daily && updated_at < daily_boundary(now, config.daily_hour, utc_offset_secs) {
        return Some(Expiry::Daily);
    }
    None
}

/// The latest `hour:00` local time at or before `now`: today's if that hour has come,
/// else yesterday's. In Unix seconds.
pub(super) fn daily_boundary(now: f64, hour: u8, utc_offset_secs: i32) -> f64 {
    let offset = f64::from(utc_offset_secs);
    let local = now + offset;
    let mut boundary = (local / DAY).floor() * DAY + f64::from(hour) * 3600.0;
    if local < boundary {
        boundary -= DAY;
    }
    boundary - offset
}

/// What the user is told on the first message of a session that replaced an expired one.
pub(super) fn notice(why: Expiry, config: &SessionConfig) -> String {
    match why {
        Expiry::Idle => {
            format!("Session reset after {} idle; starting fresh.", format_minutes(config.idle.as_secs() / 60))
        }
        Expiry::Daily => format!("Session reset by the daily reset at {:02}:00; starting fresh.", config.daily_hour),
    }
}

/// `90` → `1 h 30 min`, `1440` → `24 h`, `5` → `5 min`.
fn format_minutes(minutes: u64) -> String {
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// A session id, `YYYYMMDD_HHMMSS_<8 hex>` in local time, as the reference spells them:
/// sortable by creation, and readable in a directory listing.
pub(super) fn session_id(now: f64, utc_offset_secs: i32, random: u32) -> String {
    let local = now.floor() as i64 + i64::from(utc_offset_secs);
    let (days, secs) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    format!("{y:04}{m:02}{d:02}_{hh:02}{mm:02}{ss:02}_{random:08x}")
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`; no date crate for one conversion).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// 2024-03-10 00:00:00 UTC.
    const MIDNIGHT: f64 = 1_710_028_800.0;
    const H: f64 = 3600.0;

    #[test]
    fn daily_boundary_is_the_last_reset_hour_in_local_time() {
        // UTC: before 04:00 the boundary is yesterday's 04:00, after it today's.
        assert_eq!(daily_boundary(MIDNIGHT + 3.0 * H, 4, 0), MIDNIGHT - 20.0 * H);
        assert_eq!(daily_boundary(MIDNIGHT + 4.0 * H, 4, 0), MIDNIGHT + 4.0 * H);
        assert_eq!(daily_boundary(MIDNIGHT + 23.0 * H, 4, 0), MIDNIGHT + 4.0 * H);
        // UTC+2: 04:00 local is 02:00 UTC.
        assert_eq!(daily_boundary(MIDNIGHT + 2.5 * H, 4, 7200), MIDNIGHT + 2.0 * H);
        assert_eq!(daily_boundary(MIDNIGHT + 1.5 * H, 4, 7200), MIDNIGHT - 22.0 * H);
        // UTC-5: 04:00 local is 09:00 UTC, and 03:00 UTC is still the previous local day.
        assert_eq!(daily_boundary(MIDNIGHT + 10.0 * H, 4, -18_000), MIDNIGHT + 9.0 * H);
        assert_eq!(daily_boundary(MIDNIGHT + 3.0 * H, 4, -18_000), MIDNIGHT - 15.0 * H);
    }

    #[test]
    fn expiry_follows_the_mode() {
        let config = |reset| SessionConfig { reset, idle: Duration::from_secs(3600), ..SessionConfig::default() };
        let (idle_only, daily_only) = (config(ResetMode::Idle), config(ResetMode::Daily));
        let (both, none) = (config(ResetMode::Both), config(ResetMode::None));
        // Active at 03:00, now 05:00: two hours idle, and 04:00 passed in between.
        let (before, after) = (MIDNIGHT + 3.0 * H, MIDNIGHT + 5.0 * H);
        assert_eq!(expiry(&idle_only, 0, before, after), Some(Expiry::Idle));
        assert_eq!(expiry(&daily_only, 0, before, after), Some(Expiry::Daily));
        assert_eq!(expiry(&both, 0, before, after), Some(Expiry::Idle));
        assert_eq!(expiry(&none, 0, before, after), None);
        // Half an hour on each side of 04:00: daily only.
        assert_eq!(expiry(&both, 0, MIDNIGHT + 3.75 * H, MIDNIGHT + 4.25 * H), Some(Expiry::Daily));
        // Exactly `idle` later is not yet expired.
        assert_eq!(expiry(&idle_only, 0, MIDNIGHT + 5.0 * H, MIDNIGHT + 6.0 * H), None);
    }

    #[test]
    fn notices_name_the_reason() {
        let mut config = SessionConfig::default();
        assert_eq!(notice(Expiry::Idle, &config), "Session reset after 24 h idle; starting fresh.");
        assert_eq!(notice(Expiry::Daily, &config), "Session reset by the daily reset at 04:00; starting fresh.");
        config.idle = Duration::from_secs(90 * 60);
        assert_eq!(notice(Expiry::Idle, &config), "Session reset after 1 h 30 min idle; starting fresh.");
        assert_eq!(format_minutes(5), "5 min");
    }

    #[test]
    fn session_ids_are_local_date_time_and_hex() {
        // 2024-03-10 13:14:15 UTC.
        let t = MIDNIGHT + 13.0 * H + 14.0 * 60.0 + 15.5;
        assert_eq!(session_id(t, 0, 0xdead_beef), "20240310_131415_deadbeef");
        assert_eq!(session_id(t, 11 * 3600, 1), "20240311_001415_00000001");
        assert_eq!(session_id(t, -14 * 3600, 1), "20240309_231415_00000001");
        assert_eq!(session_id(951_782_400.0, 0, 0), "20000229_000000_00000000");
        assert_eq!(session_id(0.0, 0, 0), "19700101_000000_00000000");
    }
}
