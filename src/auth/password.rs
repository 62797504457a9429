//! Password hashing with argon2id (the crate's defaults: 19 MiB, 2 passes), done on the
//! blocking pool so that a burst of logins cannot stall the async workers.

use crate::domain::Password;
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;

/// Hashes a new password into a PHC string.
pub async fn hash(password: Password) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
    })
    .await?
}

/// Checks a password against a stored PHC string. A malformed hash counts as no match.
pub async fn verify(password: Password, stored: String) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let Ok(parsed) = PasswordHash::new(&stored) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.expose().as_bytes(), &parsed)
            .is_ok()
    })
    .await
    .map_err(Into::into)
}

/// A hash of a random password, checked when the email is unknown so that a login for
/// an unknown account takes as long as one with a wrong password.
pub fn decoy_hash() -> &'static str {
    use std::sync::OnceLock;
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(uuid::Uuid::new_v4().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let stored = hash(Password::candidate("correct horse".into()))
            .await
            .unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(
            verify(Password::candidate("correct horse".into()), stored.clone())
                .await
                .unwrap()
        );
        assert!(!verify(Password::candidate("wrong horse".into()), stored)
            .await
            .unwrap());
        assert!(!verify(Password::candidate("x".into()), "garbage".into())
            .await
            .unwrap());
    }
}
