//! Passwords: the rule a new one must pass, and hashing with argon2id (the crate's
//! defaults: 19 MiB, 2 passes) on a bounded pool.
//!
//! Each hash takes ~19 MiB and a core for a while, so hashing is where a stranger can
//! spend the server's memory and CPU. At most one hash per core runs at a time (a
//! semaphore in front of the blocking pool); a request that cannot get a turn within
//! `MAX_WAIT` gets `HashError::Busy` (503 with `Retry-After`) rather than queueing
//! without bound.
//!
//! Memory: glibc's malloc raises its mmap threshold each time a large block is freed, so
//! after the first few hashes the 19 MiB blocks come from the per-thread heaps instead of
//! `mmap`, and every blocking thread keeps its heap at its peak for good (1.9 GB after
//! 500 sign-ups, measured). [`tune_allocator`] pins the threshold at 1 MiB, so argon2's
//! block is always mapped and returned to the system when the hash is done.

use crate::domain::{ParseError, Password};
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;

/// How long a request waits for a hashing turn before it is told to come back.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// Why a password could not be hashed or checked.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every core is hashing and the wait ran out: retry later.
    #[error("the server is busy, retry in {} s", retry_after.as_secs())]
    Busy { retry_after: Duration },
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Runs argon2 with at most one hash per core at a time. Cheap to clone.
#[derive(Clone)]
pub struct Hasher {
    turns: Arc<Semaphore>,
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher {
    /// One turn per core.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            turns: Arc::new(Semaphore::new(cores)),
        }
    }

    /// Hashes a new password into a PHC string.
    pub async fn hash(&self, password: Password) -> Result<String, HashError> {
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.expose().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
        })
        .await?
        .map_err(HashError::Failed)
    }

    /// Checks a password against a stored PHC string. A malformed hash is no match.
    pub async fn verify(&self, password: Password, stored: String) -> Result<bool, HashError> {
        self.run(move || {
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return false;
            };
            Argon2::default()
                .verify_password(password.expose().as_bytes(), &parsed)
                .is_ok()
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = match tokio::time::timeout(MAX_WAIT, self.turns.clone().acquire_owned()).await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(anyhow::anyhow!("the hashing pool is closed").into()),
            Err(_) => {
                metrics::counter!("zerostate_password_hash_busy_total").increment(1);
                return Err(HashError::Busy {
                    retry_after: Duration::from_secs(2),
                });
            }
        };
        let result = tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await
        .map_err(anyhow::Error::from)?;
        Ok(result)
    }
}

/// A hash of a random password, checked when the email is unknown so that a login for
/// an unknown account takes as long as one with a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(uuid::Uuid::new_v4().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Keeps argon2's 19 MiB blocks out of malloc's heaps (see the module docs). Call once
/// at start, before the first hash.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocation tunables.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        }
    }
}

/// Why a new password was refused.
#[derive(Debug, thiserror::Error)]
pub enum NewPasswordError {
    /// Too short, only whitespace, or one of the most common passwords.
    #[error("{0}")]
    Weak(&'static str),
    /// Malformed in another way (too long).
    #[error(transparent)]
    Invalid(#[from] ParseError),
}

/// The rule for a new password: at least 8 characters, not only whitespace, and not one
/// of the 10,000 most common passwords (compared without regard to case).
pub fn parse_new(raw: String) -> Result<Password, NewPasswordError> {
    if raw.chars().count() < Password::MIN_LEN {
        return Err(NewPasswordError::Weak(
            "the password must have at least 8 characters",
        ));
    }
    if raw.chars().all(char::is_whitespace) {
        return Err(NewPasswordError::Weak(
            "the password must not be only whitespace",
        ));
    }
    if is_common(&raw) {
        return Err(NewPasswordError::Weak(
            "this password is one of the most common ones; choose another",
        ));
    }
    Ok(Password::parse_new(raw)?)
}

/// The 10,000 most common passwords, most common first, one per line. Taken verbatim
/// (the first 10,000 entries of its `PASSWORDS` list, which is ranked by frequency in
/// leaked-password corpora) from the `zxcvbn` crate 3.1.1 on crates.io
/// (`src/frequency_lists.rs`, MIT licence, © 2016 Joshua Holmer), itself from Dropbox's
/// zxcvbn; see `common_passwords.LICENSE`.
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

/// Whether `password` (lowercased) is on the list.
pub fn is_common(password: &str) -> bool {
    static LIST: OnceLock<HashSet<&'static str>> = OnceLock::new();
    let list = LIST.get_or_init(|| COMMON_PASSWORDS.lines().collect());
    list.contains(password.to_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let hasher = Hasher::new();
        let stored = hasher
            .hash(Password::candidate("correct horse".into()))
            .await
            .unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(hasher
            .verify(Password::candidate("correct horse".into()), stored.clone())
            .await
            .unwrap());
        assert!(!hasher
            .verify(Password::candidate("wrong horse".into()), stored)
            .await
            .unwrap());
        assert!(!hasher
            .verify(Password::candidate("x".into()), "garbage".into())
            .await
            .unwrap());
    }

    #[test]
    fn the_list_has_ten_thousand_entries() {
        assert_eq!(COMMON_PASSWORDS.lines().count(), 10_000);
        assert!(is_common("password"));
        assert!(is_common("PassWord1"));
        assert!(is_common("12345678"));
        assert!(!is_common("correct horse battery"));
    }

    #[test]
    fn new_passwords_follow_the_rule() {
        for weak in [
            "short",
            "        ",
            "\t \n    \t",
            "password",
            "qwertyuiop",
            "iloveyou",
        ] {
            assert!(
                matches!(parse_new(weak.into()), Err(NewPasswordError::Weak(_))),
                "{weak:?}"
            );
        }
        assert!(matches!(
            parse_new("x".repeat(2000)),
            Err(NewPasswordError::Invalid(_))
        ));
        assert!(parse_new("correct horse battery".into()).is_ok());
        assert!(parse_new(" spaced out words ".into()).is_ok());
    }
}
