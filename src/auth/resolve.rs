//! Turning a presented secret (session token or API key) into a `Principal`.

use super::secret::{self, API_KEY_PREFIX};
use super::tokens::TokenSigner;
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
        let key = match store.api_key_by_hash(&secret::hash(presented)).await {
            Ok(key) => key,
            Err(StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !key.is_active(now) {
            return Ok(None);
        }
        if key.last_used_at.is_none_or(|t| now - t > TOUCH_EVERY) {
            store.touch_api_key(key.id, now).await?;
        }
        let user = store.user_by_id(key.user_id).await?;
        return Ok(Some(Principal {
            user_id: user.id,
            role: user.role,
            credential: Credential::ApiKey(key.id),
            expires_at: key.expires_at,
        }));
    }
    let Some(claims) = signer.verify(presented) else {
        return Ok(None);
    };
    let session = match store.session(claims.session_id).await {
        Ok(session) => session,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !session.is_active(now) || session.user_id != claims.user_id {
        return Ok(None);
    }
    let user = store.user_by_id(session.user_id).await?;
    Ok(Some(Principal {
        user_id: user.id,
        role: user.role,
        credential: Credential::Session(session.id),
        expires_at: Some(session.expires_at),
    }))
}
