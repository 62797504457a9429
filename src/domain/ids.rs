//! Typed identifiers. They are all UUIDs on the wire, but a `TaskId` can never be passed
//! where a `UserId` is expected.

use super::ParseError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random identifier.
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }

            /// Parses the textual UUID form, with an error that names the kind of id.
            pub fn parse(raw: &str) -> Result<Self, ParseError> {
                Uuid::parse_str(raw.trim())
                    .map(Self)
                    .map_err(|_| ParseError::new(concat!("invalid ", $what, " id")))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

uuid_id!(
    /// A user account.
    UserId, "user"
);
uuid_id!(
    /// A signed-in session (one per login); revoking it ends the token and its connections.
    SessionId, "session"
);
uuid_id!(
    /// An API key a user created for scripts.
    ApiKeyId, "api key"
);
uuid_id!(
    /// A registered agent.
    AgentId, "agent"
);
uuid_id!(
    /// A submitted task.
    TaskId, "task"
);
