//! Random bearer secrets (API keys `zs_…`, agent tokens `zsa_…`) and their stored form.
//!
//! The secrets carry 256 bits of randomness, so a fast SHA-256 is the right hash: it
//! cannot be brute-forced, and lookups by hash stay a single indexed query.

use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;

/// A freshly generated secret, shown to its owner once. `Debug` hides it.
pub struct NewSecret {
    /// The whole secret, e.g. `zs_4f0c…`.
    pub value: String,
    /// What the store keeps.
    pub hash: String,
    /// The first characters, for telling keys apart in a list.
    pub prefix: String,
}

impl fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NewSecret({}…)", self.prefix)
    }
}

/// API keys a user creates.
pub const API_KEY_PREFIX: &str = "zs_";
/// Tokens an agent process runs with.
pub const AGENT_TOKEN_PREFIX: &str = "zsa_";

/// A secret derived from `seed` (itself secret) instead of drawn at random: the same
/// seed gives the same secret on every node and at every start.
pub fn derived(prefix: &str, seed: &[u8]) -> NewSecret {
    let value = format!("{prefix}{}", hex::encode(Sha256::digest(seed)));
    let shown = prefix.len() + 8;
    NewSecret {
        hash: hash(&value),
        prefix: value[..shown].to_owned(),
        value,
    }
}

/// Generates a secret with the given prefix.
pub fn generate(prefix: &str) -> NewSecret {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let value = format!("{prefix}{}", hex::encode(bytes));
    let shown = prefix.len() + 8;
    NewSecret {
        hash: hash(&value),
        prefix: value[..shown].to_owned(),
        value,
    }
}

/// The stored form of a secret.
pub fn hash(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_unique_and_hashed() {
        let a = generate(API_KEY_PREFIX);
        let b = generate(API_KEY_PREFIX);
        assert!(a.value.starts_with("zs_") && a.value.len() == 3 + 64);
        assert_ne!(a.value, b.value);
        assert_eq!(a.hash, hash(&a.value));
        assert!(a.value.starts_with(&a.prefix));
        assert!(!format!("{a:?}").contains(&a.value));
    }
}
