/*!
`[sessions]`: when a conversation starts afresh, and how much of it the agent sees.

The defaults follow the reference gateway's default policy (`mode = "both"`, `at_hour = 4`,
`idle_minutes = 1440`): a conversation silent for a day, or one that crosses 04:00 local
time, starts over, so a chat does not drag yesterday's context (and its token cost) into
every new question. `reset = "none"` keeps a conversation until `/new`.
*/

use std::time::Duration;

use crate::config::Section;

/// Which automatic resets apply. `/new` works whatever this says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetMode {
    /// After `idle_minutes` without a message.
    Idle,
    /// Once a day, at `daily_hour:00` local time.
    Daily,
    /// Whichever comes first (the default, as in the reference).
    Both,
    /// Never: only `/new` starts a fresh session.
    None,
}

const RESET_MODES: &[(&str, ResetMode)] =
    &[("idle", ResetMode::Idle), ("daily", ResetMode::Daily), ("both", ResetMode::Both), ("none", ResetMode::None)];

const DEFAULT_IDLE_MINUTES: u32 = 1440;
const DEFAULT_DAILY_HOUR: u8 = 4;
const DEFAULT_MAX_HISTORY: usize = 50;

/// `[sessions]`
#[derive(Clone, Debug, PartialEq)]
pub struct SessionConfig {
    /// `reset`: which automatic resets apply (default `both`).
    pub reset: ResetMode,
    /// `idle_minutes`: silence after which an idle reset happens (default 1440, a day).
    pub idle: Duration,
    /// `daily_hour`: the local hour (0–23) of the daily reset (default 4).
    pub daily_hour: u8,
    /// `max_history`: how many of the latest messages are sent to the agent (default 50).
    /// It bounds the prompt, not the transcript, which keeps everything.
    pub max_history: usize,
    /// `group_sessions_per_user`: in groups and channels, one session per participant
    /// (default true), so people in one group do not share a context.
    pub group_sessions_per_user: bool,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            reset: ResetMode::Both,
            idle: minutes(DEFAULT_IDLE_MINUTES),
            daily_hour: DEFAULT_DAILY_HOUR,
            max_history: DEFAULT_MAX_HISTORY,
            group_sessions_per_user: true,
        }
    }
}

fn minutes(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 60)
}

/// Read `[sessions]`. Problems are recorded in the section; a bad value reads as its default.
pub fn parse_config(s: &mut Section<'_>) -> SessionConfig {
    let reset = s.choice("reset", RESET_MODES, ResetMode::Both);
    let mut idle_minutes = s.u32_or("idle_minutes", DEFAULT_IDLE_MINUTES);
    if idle_minutes == 0 {
        // Zero would reset before every message: a session of one turn. Say how to get
        // what the user most likely wants instead.
        s.invalid("idle_minutes", "must be at least 1; to turn idle resets off, set reset = \"daily\" or \"none\"");
        idle_minutes = DEFAULT_IDLE_MINUTES;
    }
    let hour = s.u32_or("daily_hour", DEFAULT_DAILY_HOUR.into());
    let daily_hour = match u8::try_from(hour) {
        Ok(h) if h <= 23 => h,
        _ => {
            s.invalid("daily_hour", "must be an hour from 0 to 23 (local time)");
            DEFAULT_DAILY_HOUR
        }
    };
    // 0 is allowed: every turn then reaches the agent without history.
    let max_history = s.u32_or("max_history", DEFAULT_MAX_HISTORY as u32);
    let max_history = usize::try_from(max_history).unwrap_or(usize::MAX);
    let group_sessions_per_user = s.bool_or("group_sessions_per_user", true);
    SessionConfig { reset, idle: minutes(idle_minutes), daily_hour, max_history, group_sessions_per_user }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> (SessionConfig, Vec<String>) {
        let mut s = Section::new_for_test(toml, &[]);
        let config = parse_config(&mut s);
        (config, s.finish().iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn defaults_when_the_section_is_empty() {
        let (config, errors) = parse("");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config, SessionConfig::default());
        assert_eq!(config.reset, ResetMode::Both);
        assert_eq!(config.idle, Duration::from_secs(1440 * 60));
        assert_eq!(config.daily_hour, 4);
        assert_eq!(config.max_history, 50);
        assert!(config.group_sessions_per_user);
    }

    #[test]
    fn reads_every_key() {
        let toml = "reset = \"idle\"\nidle_minutes = 90\ndaily_hour = 23\nmax_history = 0\n\
                    group_sessions_per_user = false\n";
        let (config, errors) = parse(toml);
        assert!(errors.is_empty(), "{errors:?}");
        let expected = SessionConfig {
            reset: ResetMode::Idle,
            idle: Duration::from_secs(90 * 60),
            daily_hour: 23,
            max_history: 0,
            group_sessions_per_user: false,
        };
        assert_eq!(config, expected);
        for (word, mode) in RESET_MODES {
            assert_eq!(parse(&format!("reset = \"{word}\"")).0.reset, *mode);
        }
    }

    #[test]
    fn daily_hour_24_is_an_error_and_reads_as_the_default() {
        let (config, errors) = parse("daily_hour = 24");
        assert_eq!(config.daily_hour, 4);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("daily_hour") && errors[0].contains("0 to 23"), "{}", errors[0]);
    }

    #[test]
    fn an_unknown_reset_word_is_an_error_listing_the_choices() {
        let (config, errors) = parse("reset = \"weekly\"");
        assert_eq!(config.reset, ResetMode::Both);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("weekly") && errors[0].contains("idle, daily, both, none"), "{}", errors[0]);
    }

    #[test]
    fn zero_idle_minutes_and_wrong_types_are_errors() {
        let (config, errors) = parse("idle_minutes = 0\nmax_history = \"ten\"\ngroup_sessions_per_user = 1");
        assert_eq!(config, SessionConfig::default());
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("idle_minutes") && e.contains("at least 1")), "{errors:?}");
    }

    #[test]
    fn an_unknown_key_is_reported() {
        let (_, errors) = parse("idle_minute = 5");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("idle_minutes"), "suggests the nearest key: {}", errors[0]);
    }
}
