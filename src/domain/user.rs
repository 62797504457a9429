//! Account fields: email, password, display name and role.

use super::ParseError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A syntactically plausible, lower-cased email address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let email = raw.trim().to_lowercase();
        let valid = email.len() <= 254
            && email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && !domain.is_empty() && !domain.contains('@')
            })
            && !email.chars().any(char::is_whitespace);
        if valid {
            Ok(Self(email))
        } else {
            Err(ParseError::new("email must be a valid email address"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password as typed by the user. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Minimum length required by the contract.
    pub const MIN_LEN: usize = 8;
    const MAX_LEN: usize = 1024;

    /// Parses a new password (length rules apply).
    pub fn parse_new(raw: String) -> Result<Self, ParseError> {
        let len = raw.chars().count();
        if len < Self::MIN_LEN {
            return Err(ParseError::new("password must be at least 8 characters"));
        }
        if len > Self::MAX_LEN {
            return Err(ParseError::new("password must be at most 1024 characters"));
        }
        Ok(Self(raw))
    }

    /// Wraps a password given to check against a stored hash (no length rules, so a
    /// wrong password of any length is just wrong).
    pub fn candidate(raw: String) -> Self {
        Self(raw)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A person's display name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct FullName(String);

impl FullName {
    const MAX_LEN: usize = 200;

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let name = raw.trim();
        if name.chars().count() > Self::MAX_LEN {
            return Err(ParseError::new("full_name must be at most 200 characters"));
        }
        if name.chars().any(char::is_control) {
            return Err(ParseError::new(
                "full_name must not contain control characters",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            other => Err(ParseError::new(format!("unknown role {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_normalised_and_checked() {
        assert_eq!(Email::parse(" A@B.io ").unwrap().as_str(), "a@b.io");
        for bad in ["", "a", "@b", "a@", "a b@c.d", "a@b@c"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn password_needs_eight_chars_and_hides_itself() {
        assert!(Password::parse_new("short".into()).is_err());
        let p = Password::parse_new("long enough".into()).unwrap();
        assert_eq!(format!("{p:?}"), "Password(***)");
    }
}
