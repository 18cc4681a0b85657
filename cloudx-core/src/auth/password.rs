//! Passwords: the policy a new password must meet, and argon2id hashing off the async runtime.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::{OnceCell, Semaphore};

use crate::config::AuthConfig;
use crate::error::{Error, ErrorKind, Result};

/// The longest password accepted, in bytes (argon2 takes any length; this bounds the work).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The 10,000 most common passwords (see COMMON-PASSWORDS-SOURCE.md), refused as too easy to guess.
static COMMON: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| include_str!("common-passwords.txt").lines().collect());

/// Checks a new password against the policy; the error says which rule it breaks.
///
/// Any Unicode is allowed; length counts characters. The password is never part of the message.
pub fn check_policy(password: &str, min_length: u32, email: &str) -> Result<()> {
    let length = password.chars().count();
    if length < min_length as usize {
        return Err(Error::invalid(format!("the password is too short: use at least {min_length} characters")));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid(format!("the password is too long: at most {MAX_PASSWORD_BYTES} bytes")));
    }
    let lowered = password.to_lowercase();
    if COMMON.contains(lowered.as_str()) {
        return Err(Error::invalid("the password is one of the most common passwords; choose another"));
    }
    let email = email.to_lowercase();
    let local = email.split('@').next().unwrap_or_default();
    if lowered == email || (!local.is_empty() && lowered == local) {
        return Err(Error::invalid("the password must not be the email address"));
    }
    Ok(())
}

/// Hashes and verifies passwords with argon2id on the blocking pool, a bounded number at once.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified against when the account does not exist, so that
    /// an unknown email costs the same time as a wrong password.
    decoy: Arc<OnceCell<String>>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher").field("params", &self.params).finish_non_exhaustive()
    }
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    /// The password is right and the hash uses the configured parameters.
    Yes,
    /// The password is right; here is a new hash with the configured parameters to store.
    YesRehashed(String),
    /// The password is wrong (or there was no account).
    No,
}

impl Hasher {
    /// A hasher with the configured argon2id parameters.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when argon2 refuses the parameters.
    pub fn new(config: &AuthConfig) -> Result<Self> {
        let params = Params::new(config.argon2_memory_kib, config.argon2_iterations, config.argon2_parallelism, None)
            .map_err(|e| Error::invalid(format!("auth.argon2_*: {e}")))?;
        let permits = match config.hash_concurrency {
            0 => std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            n => n as usize,
        };
        Ok(Self { params, permits: Arc::new(Semaphore::new(permits)), decoy: Arc::default() })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Runs `work` on the blocking pool once a permit is free.
    async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce(Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T> {
        let _permit = self.permits.acquire().await.map_err(|_| Error::new(ErrorKind::Unavailable, "shutting down"))?;
        let argon2 = self.argon2();
        tokio::task::spawn_blocking(move || work(argon2))
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, format!("password hashing failed: {e}")))
    }

    /// A PHC-format argon2id hash of `password` with a fresh salt.
    ///
    /// # Errors
    /// [`ErrorKind::Internal`] if hashing fails.
    pub async fn hash(&self, password: &str) -> Result<String> {
        let password = password.to_owned();
        self.off_runtime(move |argon2| hash_with(&argon2, &password)).await?
    }

    /// Checks `password` against `stored`, or against a decoy when there is no account, so that
    /// both cases take the same time.
    ///
    /// # Errors
    /// [`ErrorKind::Internal`] if hashing fails.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<Verified> {
        let stored = match stored {
            Some(stored) => Some(stored.to_owned()),
            None => {
                // A hash of a random password with the configured parameters.
                let decoy = self
                    .decoy
                    .get_or_try_init(|| async { self.hash(&crate::fs::random_secret()?).await })
                    .await?
                    .clone();
                let password = password.to_owned();
                let _ = self.off_runtime(move |argon2| check(&argon2, &password, &decoy)).await?;
                return Ok(Verified::No);
            }
        };
        let password = password.to_owned();
        let params = self.params.clone();
        self.off_runtime(move |argon2| {
            let stored = stored.expect("checked above");
            if !check(&argon2, &password, &stored) {
                return Ok(Verified::No);
            }
            let current = PasswordHash::new(&stored)
                .ok()
                .and_then(|hash| Params::try_from(&hash).ok().map(|p| (hash.algorithm.as_str() == "argon2id", p)));
            match current {
                Some((true, p))
                    if p.m_cost() == params.m_cost()
                        && p.t_cost() == params.t_cost()
                        && p.p_cost() == params.p_cost() =>
                {
                    Ok(Verified::Yes)
                }
                _ => Ok(Verified::YesRehashed(hash_with(&argon2, &password)?)),
            }
        })
        .await?
    }
}

fn hash_with(argon2: &Argon2<'_>, password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| Error::new(ErrorKind::Internal, format!("no randomness: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| Error::new(ErrorKind::Internal, format!("password hashing failed: {e}")))
}

/// Whether `password` matches the PHC string `stored` (with the parameters recorded in it).
fn check(argon2: &Argon2<'_>, password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|hash| argon2.verify_password(password.as_bytes(), &hash).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_rule_broken() {
        let err = |p: &str| check_policy(p, 8, "ada@example.com").unwrap_err().to_string();
        assert!(err("short1").contains("at least 8 characters"));
        assert!(err(&"x".repeat(1025)).contains("at most 1024 bytes"));
        assert!(err("password").contains("most common"));
        assert!(err("ada@example.com").contains("email"));
        // Characters, not bytes: eight CJK characters are long enough.
        check_policy("密码密码密码密码", 8, "ada@example.com").unwrap();
        check_policy("correct horse battery staple", 8, "ada@example.com").unwrap();
        assert!(!err("short1").contains("short1"), "the password is not echoed");
    }

    #[test]
    fn the_common_list_is_bundled() {
        assert!(COMMON.len() >= 9_000);
        assert!(COMMON.contains("123456") && COMMON.contains("qwerty"));
    }

    fn fast(memory: u32) -> AuthConfig {
        AuthConfig { argon2_memory_kib: memory, argon2_iterations: 2, hash_concurrency: 2, ..AuthConfig::default() }
    }

    #[tokio::test]
    async fn hashes_verify_and_old_parameters_are_rehashed() {
        let old = Hasher::new(&fast(8 * 1024)).unwrap();
        let hash = old.hash("tr0ub4dor&3").await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=8192,t=2,p=1$"));
        assert_eq!(old.verify("tr0ub4dor&3", Some(&hash)).await.unwrap(), Verified::Yes);
        assert_eq!(old.verify("tr0ub4dor&4", Some(&hash)).await.unwrap(), Verified::No);
        assert_eq!(old.verify("tr0ub4dor&3", None).await.unwrap(), Verified::No);

        let new = Hasher::new(&fast(19_456)).unwrap();
        let Verified::YesRehashed(rehashed) = new.verify("tr0ub4dor&3", Some(&hash)).await.unwrap() else {
            panic!("a hash with old parameters is re-hashed")
        };
        assert!(rehashed.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(new.verify("tr0ub4dor&3", Some(&rehashed)).await.unwrap(), Verified::Yes);
        assert_eq!(new.verify("anything", Some("not a hash")).await.unwrap(), Verified::No);
    }
}
