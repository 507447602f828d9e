//! Throttling of the credential checks (login, registration, refresh, change-password).
//!
//! Every gate is counted *before* the expensive check, atomically (increment, then compare:
//! `Counters::admit`, one Lua script on Redis, one lock in process), so concurrent guesses
//! cannot all slip in between a read and a write. A counter holds the attempts that reached
//! the check and did not succeed (plus those in flight): a success gives its slot back, and
//! an attempt a later gate refuses gives back the slots the earlier gates lent it.
//!
//! Login passes three gates, the client address first:
//! 1. per address: `max_failures_per_ip` per window;
//! 2. per account and address: `max_failures_per_account` per window. A stranger who guesses
//!    locks only their own address out of the account, never its owner;
//! 3. per account from everywhere: `max_failures_per_account` free failures per window, then
//!    one attempt per delay, a delay that doubles from 1 s up to [`MAX_ACCOUNT_DELAY`]. Guesses
//!    from many addresses slow the account down to one check per delay; nobody can lock it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::service::AuthError;
use super::sha256_hex;
use crate::config::LoginThrottle;
use crate::limits::Counters;

/// The first delay between checks of an account past its free failures.
pub const FIRST_ACCOUNT_DELAY: Duration = Duration::from_secs(1);
/// The longest delay between checks of one account: the worst a distributed guesser can do
/// to its owner.
pub const MAX_ACCOUNT_DELAY: Duration = Duration::from_secs(30);

/// The gates in front of the credential checks, over the shared counters.
#[derive(Debug, Clone)]
pub struct Throttle {
    counters: Arc<Counters>,
    settings: LoginThrottle,
}

/// Slots an admitted attempt holds; [`Throttle::succeeded`] gives them back.
#[derive(Debug, Default)]
#[must_use = "a successful attempt must give its slots back"]
pub struct Admission {
    /// Counters this attempt incremented and gives back on success.
    released_on_success: Vec<String>,
    /// Counters forgotten on success (an account's failure history).
    cleared_on_success: Vec<String>,
}

const LOGIN_THROTTLED: &str = "LOGIN_THROTTLED";

fn refused(code: &'static str, message: &'static str, retry_after: Duration) -> AuthError {
    AuthError::Throttled {
        code,
        message,
        retry_after,
    }
}

impl Throttle {
    /// Gates over `counters` with the configured limits.
    pub fn new(counters: Arc<Counters>, settings: LoginThrottle) -> Self {
        Self { counters, settings }
    }

    /// Admits a login for the account `email` (normalised) from `client_ip`, or refuses it
    /// with `429` and when to retry.
    pub async fn admit_login(
        &self,
        email: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<Admission, AuthError> {
        const MESSAGE: &str = "too many failed login attempts; retry later";
        let window = self.settings.window;
        let per_account = u64::from(self.settings.max_failures_per_account);
        let account = sha256_hex(email);
        let mut admission = Admission::default();
        // The slots this attempt took: given back if a later gate refuses it.
        let mut lent: Vec<String> = Vec::new();

        if let Some(ip) = client_ip {
            let ip_key = format!("login:ip:{ip}");
            let limit = u64::from(self.settings.max_failures_per_ip);
            let state = self.counters.admit(&ip_key, 1, limit, window).await?;
            if !state.admitted {
                return Err(refused(LOGIN_THROTTLED, MESSAGE, state.resets_in));
            }
            lent.push(ip_key.clone());
            admission.released_on_success.push(ip_key);

            let pair_key = format!("login:acct-ip:{account}:{ip}");
            let state = self
                .counters
                .admit(&pair_key, 1, per_account, window)
                .await?;
            if !state.admitted {
                self.give_back(&lent).await;
                return Err(refused(LOGIN_THROTTLED, MESSAGE, state.resets_in));
            }
            lent.push(pair_key.clone());
            admission.cleared_on_success.push(pair_key);
        }

        let account_key = format!("login:acct:{account}");
        let free = self
            .counters
            .admit(&account_key, 1, per_account, window)
            .await?;
        admission.cleared_on_success.push(account_key);
        if !free.admitted {
            // Past the free failures: one check per delay, the delay doubling with each one.
            let rounds_key = format!("login:acct-rounds:{account}");
            let rounds = self.counters.peek(&rounds_key).await?.count;
            let delay = account_delay(rounds);
            let gate_key = format!("login:acct-gate:{account}");
            let gate = self.counters.admit(&gate_key, 1, 1, delay).await?;
            if !gate.admitted {
                self.give_back(&lent).await;
                return Err(refused(LOGIN_THROTTLED, MESSAGE, gate.resets_in));
            }
            self.counters.hit(&rounds_key, 1, window).await?;
            admission.cleared_on_success.push(rounds_key);
        }
        Ok(admission)
    }

    /// Admits a registration from `client_ip`: `max_failures_per_ip` per window and address,
    /// successful or not (each one creates an account or probes for one).
    pub async fn admit_registration(&self, client_ip: Option<IpAddr>) -> Result<(), AuthError> {
        let Some(ip) = client_ip else {
            return Ok(());
        };
        let limit = u64::from(self.settings.max_failures_per_ip);
        let state = self
            .counters
            .admit(&format!("register:ip:{ip}"), 1, limit, self.settings.window)
            .await?;
        if state.admitted {
            Ok(())
        } else {
            Err(refused(
                "REGISTRATION_THROTTLED",
                "too many registrations from this address; retry later",
                state.resets_in,
            ))
        }
    }

    /// Admits a refresh from `client_ip`: `max_failures_per_ip` failed refreshes per window
    /// and address (a success gives its slot back).
    pub async fn admit_refresh(&self, client_ip: Option<IpAddr>) -> Result<Admission, AuthError> {
        let Some(ip) = client_ip else {
            return Ok(Admission::default());
        };
        let key = format!("refresh:ip:{ip}");
        let limit = u64::from(self.settings.max_failures_per_ip);
        let state = self
            .counters
            .admit(&key, 1, limit, self.settings.window)
            .await?;
        if state.admitted {
            Ok(Admission {
                released_on_success: vec![key],
                cleared_on_success: Vec::new(),
            })
        } else {
            Err(refused(
                "REFRESH_THROTTLED",
                "too many failed token refreshes from this address; retry later",
                state.resets_in,
            ))
        }
    }

    /// Admits a check of `user_id`'s current password: `max_failures_per_account` wrong ones
    /// per window (the caller holds a valid access token: only they can lock themselves).
    pub async fn admit_password_check(&self, user_id: &str) -> Result<Admission, AuthError> {
        let key = format!("password-check:{user_id}");
        let limit = u64::from(self.settings.max_failures_per_account);
        let state = self
            .counters
            .admit(&key, 1, limit, self.settings.window)
            .await?;
        if state.admitted {
            Ok(Admission {
                released_on_success: Vec::new(),
                cleared_on_success: vec![key],
            })
        } else {
            Err(refused(
                "PASSWORD_CHECK_THROTTLED",
                "too many wrong current passwords; retry later",
                state.resets_in,
            ))
        }
    }

    /// The attempt succeeded: its slots are given back and its account's failures forgotten.
    pub async fn succeeded(&self, admission: Admission) -> Result<(), AuthError> {
        for key in &admission.released_on_success {
            self.counters.release(key, 1).await?;
        }
        for key in &admission.cleared_on_success {
            self.counters.clear(key).await?;
        }
        Ok(())
    }

    /// A later gate refused the attempt: the earlier gates' slots go back (it did no work).
    async fn give_back(&self, lent: &[String]) {
        for key in lent {
            if let Err(err) = self.counters.release(key, 1).await {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "giving a throttle slot back failed"
                );
            }
        }
    }
}

/// The delay before the next check of an account that used its free failures and had
/// `rounds` delayed checks since: 1 s, 2 s, 4 s, … up to [`MAX_ACCOUNT_DELAY`].
fn account_delay(rounds: u64) -> Duration {
    let doublings = u32::try_from(rounds.min(16)).unwrap_or(16);
    FIRST_ACCOUNT_DELAY
        .saturating_mul(1u32 << doublings)
        .min(MAX_ACCOUNT_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::InProcessCounters;

    fn throttle() -> (Throttle, Arc<Counters>) {
        let counters = Arc::new(Counters::InProcess(InProcessCounters::default()));
        let settings = LoginThrottle {
            max_failures_per_account: 5,
            max_failures_per_ip: 50,
            window: Duration::from_secs(900),
        };
        (Throttle::new(counters.clone(), settings), counters)
    }

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([203, 0, 113, n]))
    }

    #[tokio::test]
    async fn attempts_refused_by_the_account_delay_cost_their_address_nothing() {
        let (throttle, counters) = throttle();
        let email = "jo@example.com";
        // Five failures from five addresses use the account's free failures, a sixth the
        // first delayed check.
        for n in 1..=6 {
            let admitted = throttle.admit_login(email, ip(n)).await;
            assert!(admitted.is_ok(), "attempt from address {n}");
        }
        // The owner, trying again and again during the delay, is refused each time...
        for _ in 0..20 {
            let refused = throttle.admit_login(email, ip(100)).await;
            assert!(matches!(refused, Err(AuthError::Throttled { .. })));
        }
        // ...and none of it counts against their address or their address on this account.
        let account = sha256_hex(email);
        let pair = counters
            .peek(&format!("login:acct-ip:{account}:203.0.113.100"))
            .await
            .map(|state| state.count);
        assert_eq!(pair.ok(), Some(0));
        let address = counters
            .peek("login:ip:203.0.113.100")
            .await
            .map(|state| state.count);
        assert_eq!(address.ok(), Some(0));
    }

    #[tokio::test]
    async fn a_success_gives_its_slots_back_and_forgets_the_failures() {
        let (throttle, counters) = throttle();
        let email = "jo@example.com";
        for _ in 0..4 {
            let failed = throttle.admit_login(email, ip(1)).await;
            assert!(failed.is_ok());
        }
        let succeeded = throttle.admit_login(email, ip(1)).await;
        let Ok(admission) = succeeded else {
            panic!("the fifth attempt is within the limit");
        };
        assert!(throttle.succeeded(admission).await.is_ok());
        let account = sha256_hex(email);
        for key in [
            format!("login:acct:{account}"),
            format!("login:acct-ip:{account}:203.0.113.1"),
        ] {
            let count = counters.peek(&key).await.map(|state| state.count);
            assert_eq!(count.ok(), Some(0), "{key}");
        }
        // The four failures still count against the address; the success does not.
        let address = counters
            .peek("login:ip:203.0.113.1")
            .await
            .map(|state| state.count);
        assert_eq!(address.ok(), Some(4));
    }

    #[test]
    fn the_account_delay_doubles_up_to_its_cap() {
        let delays: Vec<u64> = (0..8).map(|r| account_delay(r).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(account_delay(u64::MAX), MAX_ACCOUNT_DELAY);
    }
}
