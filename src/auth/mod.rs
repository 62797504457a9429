//! Credentials: password hashing, signed session tokens, API keys and agent tokens, and
//! login throttling. Nothing here knows about HTTP; the extractors in `http::extract`
//! use these pieces.

pub mod password;
mod resolve;
pub mod secret;
pub mod throttle;
pub mod tokens;

pub use resolve::resolve_secret;

// Defined in the domain (the real-time hub needs it too); re-exported for `auth` users.
pub use crate::domain::Credential;
use crate::domain::{Role, UserId};

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
