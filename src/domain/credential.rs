//! What a request or a connection authenticated with. It lives in the domain because
//! both `auth` (which resolves it) and the real-time hub (which closes a revoked
//! credential's connections) need it, and the hub must not depend on `auth`.

use super::{ApiKeyId, SessionId};

/// How a request or a connection proved who it is. Revoking the credential (logout,
/// password change, key revocation) ends everything that used it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    /// A browser or CLI session (cookie or Bearer session token).
    Session(SessionId),
    /// An API key.
    ApiKey(ApiKeyId),
}
