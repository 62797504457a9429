//! Session tokens: HS256 JWTs naming a session row. The signature proves the server
//! issued the token; the session row makes it revocable at once.
//!
//! Verified sessions and API keys are remembered for a short while ([`SessionCache`]),
//! so that a burst of requests or connections does not cost database round trips each;
//! revocation through the server (logout, password change, key revocation) forgets them
//! at once.
//!
//! The signing key is never a constant: it is generated at first start and kept in the
//! data directory (mode 0600), or in a database several nodes share, or given by
//! `--signing-key`.

use crate::domain::{ApiKeyId, Credential, Role, SessionId, UserId};
use anyhow::Context;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a session lasts.
pub const SESSION_TTL: chrono::Duration = chrono::Duration::days(7);
const ISSUER: &str = "zerostate";
const KEY_FILE: &str = "signing.key";

/// The key that signs and checks session tokens, and the sessions it verified lately.
#[derive(Clone)]
pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    sessions: Arc<SessionCache>,
    /// Derived from the key: the seed of the built-in agent's token, so every node of a
    /// cluster (one key) gives the one built-in agent the same token.
    builtin_agent_seed: [u8; 32],
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
            sessions: Arc::default(),
            builtin_agent_seed: {
                use sha2::Digest;
                let mut seed = sha2::Sha256::new();
                seed.update(b"zerostate built-in agent token\0");
                seed.update(secret);
                seed.finalize().into()
            },
        }
    }

    /// The built-in agent's token: derived from the signing key, so every node that
    /// shares the key runs the one built-in agent with the same token (a random token
    /// per start would void the other nodes' at every start).
    pub fn builtin_agent_token(&self) -> crate::auth::secret::NewSecret {
        crate::auth::secret::derived(
            crate::auth::secret::AGENT_TOKEN_PREFIX,
            &self.builtin_agent_seed,
        )
    }

    /// The sessions this server verified lately.
    pub fn sessions(&self) -> &SessionCache {
        &self.sessions
    }

    /// A key given as text (`--signing-key`, or the one a shared database keeps): at
    /// least 32 bytes.
    pub fn from_key(key: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            key.len() >= 32,
            "the signing key must be at least 32 characters"
        );
        Ok(Self::from_secret(key.as_bytes()))
    }

    /// A new random key as text (64 random bytes, hex), for a store to keep.
    pub fn generate_key() -> String {
        let mut bytes = [0u8; 64];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        hex::encode(bytes)
    }

    /// Uses `given` when set (at least 32 bytes), else the key file in `data_dir`,
    /// creating it with fresh random bytes and mode 0600 on first start.
    pub fn load_or_create(given: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        if let Some(secret) = given {
            return Self::from_key(secret);
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

/// How long a verified session is trusted without reading its row again. Revocations
/// made through this server forget it at once; this bounds only changes made behind
/// the server's back (another process on the same database, e.g. `zerostate users`).
pub const SESSION_CACHE_TTL: Duration = Duration::from_secs(10);
/// Most sessions remembered at once; beyond, new ones are simply not remembered.
const SESSION_CACHE_MAX: usize = 100_000;

/// What a session row said when it was last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedSession {
    pub user_id: UserId,
    pub role: Role,
    pub expires_at: DateTime<Utc>,
}

/// Sessions verified against the database lately, so a burst of requests or
/// connections with one token does not read the same rows again and again.
///
/// A revocation bumps an epoch: a lookup that read the database before the revocation
/// and tries to remember its (now stale) answer afterwards is not remembered.
#[derive(Default)]
pub struct SessionCache {
    // A std mutex: held for a map operation, never across an await.
    inner: Mutex<CacheInner>,
}

/// What an API key's row (and its owner's) said when it was last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedKey {
    pub id: ApiKeyId,
    pub user_id: UserId,
    pub role: Role,
    pub expires_at: Option<DateTime<Utc>>,
    /// When its `last_used_at` was last written (or read), so a busy script does not
    /// turn its requests into writes.
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct CacheInner {
    epoch: u64,
    entries: HashMap<SessionId, (VerifiedSession, Instant)>,
    /// API keys by the hash of their secret (never the secret).
    keys: HashMap<String, (VerifiedKey, Instant)>,
}

impl SessionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The remembered session, if it was verified within the TTL and has not ended.
    pub fn get(&self, id: SessionId, now: DateTime<Utc>) -> Option<VerifiedSession> {
        let mut inner = self.lock();
        match inner.entries.get(&id) {
            Some((s, at)) if at.elapsed() < SESSION_CACHE_TTL && s.expires_at > now => Some(*s),
            Some(_) => {
                inner.entries.remove(&id);
                None
            }
            None => None,
        }
    }

    /// The epoch to hand back to [`SessionCache::remember`]: read it before the
    /// database.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Remembers a session read from the database at `epoch`, unless a revocation came
    /// in between.
    pub fn remember(&self, epoch: u64, id: SessionId, session: VerifiedSession) {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        if inner.entries.len() >= SESSION_CACHE_MAX {
            inner
                .entries
                .retain(|_, (_, at)| at.elapsed() < SESSION_CACHE_TTL);
            if inner.entries.len() >= SESSION_CACHE_MAX {
                return;
            }
        }
        inner.entries.insert(id, (session, Instant::now()));
    }

    /// The remembered API key with this secret hash, if verified within the TTL and
    /// not expired.
    pub fn api_key(&self, hash: &str, now: DateTime<Utc>) -> Option<VerifiedKey> {
        let mut inner = self.lock();
        match inner.keys.get(hash) {
            Some((k, at))
                if at.elapsed() < SESSION_CACHE_TTL && k.expires_at.is_none_or(|e| e > now) =>
            {
                Some(*k)
            }
            Some(_) => {
                inner.keys.remove(hash);
                None
            }
            None => None,
        }
    }

    /// Remembers an API key read from the database at `epoch`, unless a revocation
    /// came in between.
    pub fn remember_api_key(&self, epoch: u64, hash: &str, key: VerifiedKey) {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        if !inner.keys.contains_key(hash) && inner.keys.len() >= SESSION_CACHE_MAX {
            inner
                .keys
                .retain(|_, (_, at)| at.elapsed() < SESSION_CACHE_TTL);
            if inner.keys.len() >= SESSION_CACHE_MAX {
                return;
            }
        }
        inner.keys.insert(hash.to_owned(), (key, Instant::now()));
    }

    /// Notes that a remembered key's `last_used_at` was written.
    pub fn key_used(&self, hash: &str, at: DateTime<Utc>) {
        if let Some((key, _)) = self.lock().keys.get_mut(hash) {
            key.last_used_at = Some(at);
        }
    }

    /// Forgets every remembered session and API key (revocations may have been
    /// missed); lookups under way are not remembered either.
    pub fn forget_all(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.entries.clear();
        inner.keys.clear();
    }

    /// Forgets revoked credentials at once.
    pub fn forget(&self, credentials: &[Credential]) {
        let mut inner = self.lock();
        inner.epoch += 1;
        for credential in credentials {
            match credential {
                Credential::Session(id) => {
                    inner.entries.remove(id);
                }
                Credential::ApiKey(id) => inner.keys.retain(|_, (k, _)| k.id != *id),
            }
        }
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
    fn revoked_sessions_are_forgotten_and_not_remembered_late() {
        let cache = SessionCache::default();
        let (id, other) = (SessionId::new(), SessionId::new());
        let now = Utc::now();
        let session = VerifiedSession {
            user_id: UserId::new(),
            role: Role::User,
            expires_at: now + SESSION_TTL,
        };
        let epoch = cache.epoch();
        cache.remember(epoch, id, session);
        assert_eq!(cache.get(id, now), Some(session));
        // Read before a revocation, remembered after it: not kept.
        let stale = cache.epoch();
        cache.forget(&[Credential::Session(id)]);
        assert_eq!(cache.get(id, now), None);
        cache.remember(stale, other, session);
        assert_eq!(cache.get(other, now), None);
        // An ended session is not served from memory.
        cache.remember(cache.epoch(), other, session);
        assert_eq!(cache.get(other, now + SESSION_TTL), None);
    }

    #[test]
    fn forgetting_all_drops_every_session_and_lookups_under_way() {
        let cache = SessionCache::default();
        let (id, other) = (SessionId::new(), SessionId::new());
        let now = Utc::now();
        let session = VerifiedSession {
            user_id: UserId::new(),
            role: Role::User,
            expires_at: now + SESSION_TTL,
        };
        cache.remember(cache.epoch(), id, session);
        let stale = cache.epoch();
        cache.forget_all();
        assert_eq!(cache.get(id, now), None);
        cache.remember(stale, other, session);
        assert_eq!(cache.get(other, now), None);
    }

    #[test]
    fn revoked_api_keys_are_forgotten_and_not_remembered_late() {
        let cache = SessionCache::default();
        let now = Utc::now();
        let key = VerifiedKey {
            id: ApiKeyId::new(),
            user_id: UserId::new(),
            role: Role::User,
            expires_at: None,
            last_used_at: None,
        };
        cache.remember_api_key(cache.epoch(), "h", key);
        assert_eq!(cache.api_key("h", now), Some(key));
        cache.key_used("h", now);
        assert_eq!(cache.api_key("h", now).unwrap().last_used_at, Some(now));
        let stale = cache.epoch();
        cache.forget(&[Credential::ApiKey(key.id)]);
        assert_eq!(cache.api_key("h", now), None);
        cache.remember_api_key(stale, "h", key);
        assert_eq!(cache.api_key("h", now), None);
        // An expired key is not served from memory.
        let expiring = VerifiedKey {
            expires_at: Some(now),
            ..key
        };
        cache.remember_api_key(cache.epoch(), "e", expiring);
        assert_eq!(cache.api_key("e", now), None);
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
