//! Session tokens: HS256 JWTs naming a session row. The signature proves the server
//! issued the token; the session row makes it revocable at once.
//!
//! The signing key is never a constant: it is generated at first start and kept in the
//! data directory (mode 0600), or given by `--signing-key`.

use crate::domain::{SessionId, UserId};
use anyhow::Context;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How long a session lasts.
pub const SESSION_TTL: chrono::Duration = chrono::Duration::days(7);
const ISSUER: &str = "zerostate";
const KEY_FILE: &str = "signing.key";

/// The key that signs and checks session tokens.
#[derive(Clone)]
pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    sid: String,
    iat: i64,
    exp: i64,
    iss: String,
}

/// What a valid token says.
#[derive(Debug, Clone, Copy)]
pub struct TokenClaims {
    pub user_id: UserId,
    pub session_id: SessionId,
}

impl TokenSigner {
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Uses `given` when set (at least 32 bytes), else the key file in `data_dir`,
    /// creating it with fresh random bytes and mode 0600 on first start.
    pub fn load_or_create(given: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        if let Some(secret) = given {
            anyhow::ensure!(
                secret.len() >= 32,
                "the signing key must be at least 32 characters"
            );
            return Ok(Self::from_secret(secret.as_bytes()));
        }
        let path = data_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() >= 32 => return Ok(Self::from_secret(&bytes)),
            Ok(_) => anyhow::bail!("{} is too short to be a signing key", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        let mut bytes = [0u8; 64];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        write_private(&path, &bytes)?;
        tracing::info!(path = %path.display(), "generated a new token signing key");
        Ok(Self::from_secret(&bytes))
    }

    /// Signs a token for a session that ends at `expires_at`.
    pub fn issue(
        &self,
        user_id: UserId,
        session_id: SessionId,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        let claims = Claims {
            sub: user_id.to_string(),
            sid: session_id.to_string(),
            iat: issued_at.timestamp(),
            exp: expires_at.timestamp(),
            iss: ISSUER.to_owned(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Checks signature, issuer and expiry. `None` for any token this key did not sign.
    pub fn verify(&self, token: &str) -> Option<TokenClaims> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        Some(TokenClaims {
            user_id: UserId::parse(&data.claims.sub).ok()?,
            session_id: SessionId::parse(&data.claims.sid).ok()?,
        })
    }
}

/// Writes a new file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_from_another_key_is_rejected() {
        let dir_a = tempfile::tempdir().unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let a = TokenSigner::load_or_create(None, dir_a.path()).unwrap();
        let b = TokenSigner::load_or_create(None, dir_b.path()).unwrap();
        let now = Utc::now();
        let token = a
            .issue(UserId::new(), SessionId::new(), now, now + SESSION_TTL)
            .unwrap();
        assert!(a.verify(&token).is_some());
        assert!(b.verify(&token).is_none());
        // The key survives a restart on the same directory.
        let a_again = TokenSigner::load_or_create(None, dir_a.path()).unwrap();
        assert!(a_again.verify(&token).is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir_a.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn expired_tokens_are_rejected() {
        let signer = TokenSigner::from_secret(&[7u8; 32]);
        let past = Utc::now() - chrono::Duration::hours(2);
        let token = signer
            .issue(
                UserId::new(),
                SessionId::new(),
                past,
                past + chrono::Duration::hours(1),
            )
            .unwrap();
        assert!(signer.verify(&token).is_none());
    }
}
