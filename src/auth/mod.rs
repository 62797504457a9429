//! Credentials: password hashing, signed session tokens, API keys and agent tokens, and
//! login throttling. Nothing here knows about HTTP; the extractors in `http::extract`
//! use these pieces.

pub mod password;
mod resolve;
pub mod secret;
pub mod throttle;
pub mod tokens;

pub use resolve::resolve_secret;

use crate::domain::{ApiKeyId, Role, SessionId, UserId};

/// How a request or a connection proved who it is. Revoking the credential (logout,
/// password change, key revocation) ends everything that used it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    Session(SessionId),
    ApiKey(ApiKeyId),
}

/// A signed-in principal: who, with what role, through which credential.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: UserId,
    pub role: Role,
    pub credential: Credential,
    /// When the credential stops working by itself (session end or key expiry).
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}
