//! The progressive delay on failed logins, per account: after `auth.login_delay_after`
//! failures in a row, each further attempt must wait 1 s, then 2 s, 4 s, ... up to
//! `auth.login_delay_max`, and an attempt made sooner is refused with `RateLimited` and the
//! time to wait, without looking at the password. It is keyed by the email as typed
//! (lower-cased), so an unknown email is slowed down exactly like a real one and the delay
//! tells nothing about which accounts exist. A successful login clears it.
//!
//! The state is per process: behind a load balancer each node slows an attacker down on its own,
//! which bounds guessing at (nodes × the rate one node allows).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// Past this many remembered emails, forgotten ones are swept out.
const SWEEP_AT: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    wait_until: Instant,
}

#[derive(Debug)]
pub(crate) struct LoginThrottle {
    free: u32,
    max: Duration,
    failures: Mutex<HashMap<String, Failures>>,
}

impl LoginThrottle {
    pub(crate) fn new(free: u32, max: Duration) -> Self {
        Self { free, max, failures: Mutex::default() }
    }

    /// Starts an attempt: refuses it while the account's delay lasts, else counts it as a
    /// failure at once (a success clears the count), so that attempts sent in parallel cannot
    /// all pass before the first of them has failed. Returns the delay this attempt arms, if any.
    pub(crate) fn attempt(&self, email: &str) -> Result<Option<Duration>> {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = failures.get(email).filter(|f| f.wait_until > now) {
            let wait = f.wait_until - now;
            return Err(Error::new(
                ErrorKind::RateLimited,
                format!(
                    "too many failed sign-ins for this account; try again in {} s",
                    wait.as_secs_f64().ceil() as u64
                ),
            )
            .with_retry_after(wait));
        }
        if failures.len() >= SWEEP_AT {
            failures.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
        }
        let entry = failures.entry(email.to_owned()).or_insert(Failures { count: 0, last: now, wait_until: now });
        if now.duration_since(entry.last) >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        if entry.count <= self.free {
            return Ok(None);
        }
        let over = entry.count - self.free;
        let delay = Duration::from_secs(1u64 << (over - 1).min(20)).min(self.max);
        entry.wait_until = now + delay;
        Ok(Some(delay))
    }

    /// Takes back an attempt that failed for the server's own reasons (the database went away):
    /// it does not count toward the delay.
    pub(crate) fn forgive(&self, email: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = failures.get_mut(email) {
            f.count = f.count.saturating_sub(1);
            if f.count <= self.free {
                f.wait_until = f.last;
            }
        }
    }

    /// Clears the account's failures.
    pub(crate) fn succeeded(&self, email: &str) {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).remove(email);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_start_after_the_free_attempts_and_double_up_to_the_maximum() {
        let throttle = LoginThrottle::new(3, Duration::from_secs(5));
        for _ in 0..3 {
            assert_eq!(throttle.attempt("a@example.com").unwrap(), None);
        }
        assert_eq!(throttle.attempt("a@example.com").unwrap(), Some(Duration::from_secs(1)));
        let refused = throttle.attempt("a@example.com").unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::RateLimited);
        assert!(refused.retry_after().unwrap() <= Duration::from_secs(1));
        // Other accounts are not affected; success clears.
        assert_eq!(throttle.attempt("b@example.com").unwrap(), None);
        throttle.succeeded("a@example.com");
        assert_eq!(throttle.attempt("a@example.com").unwrap(), None);
    }

    #[test]
    fn the_delay_doubles_up_to_the_maximum() {
        let throttle = LoginThrottle::new(0, Duration::from_secs(5));
        let mut delays = Vec::new();
        for _ in 0..5 {
            delays.push(throttle.attempt("a@example.com").unwrap().unwrap().as_secs());
            // Let the delay pass without waiting: move it into the past.
            throttle.failures.lock().unwrap().get_mut("a@example.com").unwrap().wait_until = Instant::now();
        }
        assert_eq!(delays, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn a_forgiven_attempt_does_not_count() {
        let throttle = LoginThrottle::new(1, Duration::from_secs(60));
        assert_eq!(throttle.attempt("a@example.com").unwrap(), None);
        assert!(throttle.attempt("a@example.com").unwrap().is_some(), "the second arms the delay");
        throttle.forgive("a@example.com");
        assert_eq!(throttle.attempt("a@example.com").unwrap(), Some(Duration::from_secs(1)), "back to one");
    }

    #[test]
    fn parallel_attempts_cannot_all_pass_before_one_fails() {
        let throttle = LoginThrottle::new(2, Duration::from_secs(60));
        // Ten attempts begun together (none has finished): the free ones, one that arms the
        // delay, and then refusals.
        let passed = (0..10).filter(|_| throttle.attempt("a@example.com").is_ok()).count();
        assert_eq!(passed, 3);
    }
}
