//! Turning a presented secret (session token or API key) into a `Principal`.
//!
//! A session token or API key is checked against its rows once, then served from the
//! signer's [`SessionCache`](super::tokens::SessionCache) for a few seconds: a reconnect
//! storm or a busy script costs a signature check or a hash per request, not two
//! database reads. Revocations through the server forget the credential at once
//! (`AppState::on_credentials_revoked`).

use super::secret::{self, API_KEY_PREFIX};
use super::tokens::{TokenSigner, VerifiedKey, VerifiedSession};
use super::{Credential, Principal};
use crate::store::{Store, StoreError};
use chrono::Utc;

/// How stale `last_used_at` may get before a use writes it again: a busy script does
/// not turn every request into a database write.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(10);

/// Resolves a bearer secret. `Ok(None)` means "not valid": unknown, revoked, expired or
/// forged; callers answer 401 without saying which.
pub async fn resolve_secret(
    store: &dyn Store,
    signer: &TokenSigner,
    presented: &str,
) -> Result<Option<Principal>, StoreError> {
    let now = Utc::now();
    if presented.starts_with(API_KEY_PREFIX) {
        let hash = secret::hash(presented);
        let cache = signer.sessions();
        let key = match cache.api_key(&hash, now) {
            Some(key) => key,
            None => {
                // Read before the rows: a revocation after this point keeps the answer out.
                let epoch = cache.epoch();
                let key = match store.api_key_by_hash(&hash).await {
                    Ok(key) => key,
                    Err(StoreError::NotFound) => return Ok(None),
                    Err(e) => return Err(e),
                };
                if !key.is_active(now) {
                    return Ok(None);
                }
                let user = store.user_by_id(key.user_id).await?;
                let verified = VerifiedKey {
                    id: key.id,
                    user_id: user.id,
                    role: user.role,
                    expires_at: key.expires_at,
                    last_used_at: key.last_used_at,
                };
                cache.remember_api_key(epoch, &hash, verified);
                verified
            }
        };
        if key.last_used_at.is_none_or(|t| now - t > TOUCH_EVERY) {
            store.touch_api_key(key.id, now).await?;
            cache.key_used(&hash, now);
        }
        return Ok(Some(Principal {
            user_id: key.user_id,
            role: key.role,
            credential: Credential::ApiKey(key.id),
            expires_at: key.expires_at,
        }));
    }
    let Some(claims) = signer.verify(presented) else {
        return Ok(None);
    };
    let cache = signer.sessions();
    if let Some(s) = cache.get(claims.session_id, now) {
        if s.user_id != claims.user_id {
            return Ok(None);
        }
        return Ok(Some(Principal {
            user_id: s.user_id,
            role: s.role,
            credential: Credential::Session(claims.session_id),
            expires_at: Some(s.expires_at),
        }));
    }
    // Read before the rows: a revocation after this point keeps the answer out.
    let epoch = cache.epoch();
    let session = match store.session(claims.session_id).await {
        Ok(session) => session,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !session.is_active(now) || session.user_id != claims.user_id {
        return Ok(None);
    }
    let user = store.user_by_id(session.user_id).await?;
    cache.remember(
        epoch,
        session.id,
        VerifiedSession {
            user_id: user.id,
            role: user.role,
            expires_at: session.expires_at,
        },
    );
    Ok(Some(Principal {
        user_id: user.id,
        role: user.role,
        credential: Credential::Session(session.id),
        expires_at: Some(session.expires_at),
    }))
}
