/*!
The quick-retry policy of an adapter's own calls (a long poll, a connect), shared by every
platform: a network failure is retried a few times with doubling waits before the
supervisor's backoff takes over; a conflict (another poller on the token) a few times with
growing waits, then never again; a 429 waits what it asks and counts nothing; a bad
credential or a bad config ends the adapter for good at once. A success resets the counts.

The codes of the [`Fatal`]s it ends with are `<prefix>_network_error`, `_conflict`,
`_unauthorized`, `_api_error` and `_bad_config`, with the platform's prefix.
*/

use std::time::Duration;

use super::api::ApiError;
use crate::config::Section;
use crate::platform::Fatal;

/// The settings of the policy, read from the platform's table under these names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// `network_retries`: quick retries of a network failure. Default 3.
    pub network_retries: u32,
    /// `network_retry_wait`: the first wait, doubling after each. Default 1 s.
    pub network_retry_wait: Duration,
    /// `conflict_retries`: how often a conflict is retried before giving up for good.
    /// Default 3.
    pub conflict_retries: u32,
    /// `conflict_wait`: the wait before conflict retry n is n × this. Default 10 s.
    pub conflict_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            network_retries: 3,
            network_retry_wait: Duration::from_secs(1),
            conflict_retries: 3,
            conflict_wait: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Read the policy's keys from `section`, `defaults` for those not set.
    pub fn read(section: &mut Section, defaults: RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            network_retries: section.u32_or("network_retries", defaults.network_retries),
            network_retry_wait: section.duration_or("network_retry_wait", defaults.network_retry_wait),
            conflict_retries: section.u32_or("conflict_retries", defaults.conflict_retries),
            conflict_wait: section.duration_or("conflict_wait", defaults.conflict_wait),
        }
    }
}

/// Who the failures are about: the code prefix (`telegram`), the name people read
/// (`Telegram`), and the config keys to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    pub prefix: &'static str,
    pub name: &'static str,
    /// The key holding the credential (`token`).
    pub credential_key: &'static str,
    /// The key holding the address (`api_base`).
    pub address_key: &'static str,
    /// The code's suffix for a conflict that did not clear (`conflict`;
    /// Telegram's `polling_conflict`).
    pub conflict: &'static str,
}

/// Consecutive failures of the current call sequence; reset by any success.
#[derive(Debug)]
pub struct Retries {
    policy: RetryPolicy,
    service: Service,
    network: u32,
    conflict: u32,
}

impl Retries {
    pub fn new(policy: RetryPolicy, service: Service) -> Retries {
        Retries { policy, service, network: 0, conflict: 0 }
    }

    pub fn reset(&mut self) {
        self.network = 0;
        self.conflict = 0;
    }

    /// After a failed call: how long to wait before trying again, or why to give up.
    pub fn after(&mut self, err: ApiError) -> Result<Duration, Fatal> {
        let Service { prefix, name, credential_key, address_key, conflict } = self.service;
        let code = |what: &str| format!("{prefix}_{what}");
        match err {
            // To a poll, an unanswered request is one more network failure.
            ApiError::Network(why) | ApiError::Unconfirmed(why) => {
                self.network += 1;
                if self.network > self.policy.network_retries {
                    let message = format!("{name} unreachable after {} attempts: {why}", self.network);
                    return Err(Fatal::retryable(code("network_error"), message));
                }
                // 1, 2, 4 … × the base; the shift is capped so it cannot overflow.
                Ok(self.policy.network_retry_wait.saturating_mul(1 << (self.network - 1).min(16)))
            }
            ApiError::RateLimited { wait, .. } => Ok(wait),
            ApiError::Conflict(why) => {
                self.conflict += 1;
                if self.conflict > self.policy.conflict_retries {
                    let message = format!(
                        "another client is using this {credential_key} ({why}); gave up after {} retries. \
                         Make sure only one gateway runs per {credential_key}.",
                        self.policy.conflict_retries
                    );
                    return Err(Fatal::permanent(code(conflict), message));
                }
                Ok(self.policy.conflict_wait.saturating_mul(self.conflict))
            }
            ApiError::Unauthorized(why) => Err(Fatal::permanent(
                code("unauthorized"),
                format!("{name} refused the credentials ({why}); check `{credential_key}`"),
            )),
            ApiError::Rejected(status, why) => {
                Err(Fatal::retryable(code("api_error"), format!("{name} refused a request ({status}): {why}")))
            }
            ApiError::Config(why) => Err(Fatal::permanent(code("bad_config"), format!("check `{address_key}`: {why}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: Service =
        Service { prefix: "x", name: "X", credential_key: "token", address_key: "api_base", conflict: "conflict" };

    fn retries() -> Retries {
        let policy = RetryPolicy { network_retry_wait: Duration::from_millis(100), ..RetryPolicy::default() };
        Retries::new(policy, SERVICE)
    }

    #[test]
    fn network_failures_retry_with_doubling_waits_then_give_up() {
        let mut r = retries();
        let net = || ApiError::Network("down".into());
        let waits: Vec<_> = (0..3).map(|_| r.after(net()).unwrap()).collect();
        assert_eq!(waits, [100, 200, 400].map(Duration::from_millis));
        let fatal = r.after(net()).unwrap_err();
        assert_eq!((fatal.code.as_str(), fatal.retryable), ("x_network_error", true));
        r.reset();
        assert_eq!(r.after(net()), Ok(Duration::from_millis(100)));
    }

    #[test]
    fn conflicts_wait_longer_each_time_then_give_up_for_good() {
        let mut r = retries();
        let conflict = || ApiError::Conflict("terminated by other request".into());
        let waits: Vec<_> = (0..3).map(|_| r.after(conflict()).unwrap()).collect();
        assert_eq!(waits, [10, 20, 30].map(Duration::from_secs));
        // Rate limits neither count nor reset.
        assert_eq!(r.after(ApiError::rate_limited(Duration::from_secs(2))), Ok(Duration::from_secs(2)));
        let fatal = r.after(conflict()).unwrap_err();
        assert_eq!((fatal.code.as_str(), fatal.retryable), ("x_conflict", false));
    }

    #[test]
    fn what_cannot_heal_ends_at_once() {
        let end = |err| retries().after(err).unwrap_err();
        let fatal = end(ApiError::Unauthorized("no".into()));
        assert_eq!((fatal.code.as_str(), fatal.retryable), ("x_unauthorized", false));
        assert!(fatal.message.contains("check `token`"), "{fatal}");
        let fatal = end(ApiError::Rejected(400, "bad".into()));
        assert_eq!((fatal.code.as_str(), fatal.retryable), ("x_api_error", true));
        let fatal = end(ApiError::Config("bad uri".into()));
        assert_eq!((fatal.code.as_str(), fatal.retryable), ("x_bad_config", false));
    }
}
