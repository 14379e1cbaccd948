//! Secrets: passwords are stored as argon2id hashes (PHC strings), tokens as SHA-256 digests,
//! and every comparison of secret material is constant-time.
//!
//! A token is 32 random bytes, shown once as `strata_` followed by 64 hex digits. It is
//! random enough that a fast digest is safe to store (a password is not, hence argon2id).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every token starts with, so a leaked one is easy to recognise and scan for.
pub const TOKEN_PREFIX: &str = "strata_";

/// Hashes `password` with argon2id (the crate's defaults: 19 MiB, 2 passes) and a random salt.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        // Hashing fails only for parameters out of range, and the defaults are in range.
        .unwrap_or_default()
}

/// True when `password` matches `hash`. A malformed hash matches nothing.
pub fn verify_password(password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A new token: the text to give the user once, and the digest to store.
pub fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let text = format!("{TOKEN_PREFIX}{}", hex(&bytes));
    let digest = token_digest(&text);
    (text, digest)
}

/// The stored form of a token: lowercase hex SHA-256 of its text.
pub fn token_digest(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// True when `token`'s digest is `stored`, compared in constant time.
pub fn token_matches(token: &str, stored: &str) -> bool {
    equal(token_digest(token).as_bytes(), stored.as_bytes())
}

/// Compares two secrets in time that depends only on their lengths.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// True when `text` has the shape of a token (prefix and 64 hex digits); checked before any
/// lookup so garbage never reaches the store.
pub fn looks_like_token(text: &str) -> bool {
    text.strip_prefix(TOKEN_PREFIX)
        .is_some_and(|rest| rest.len() == 64 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_hash_only() {
        let hash = hash_password("correct horse");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct horsf", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
        assert_ne!(hash, hash_password("correct horse"), "salted");
    }

    #[test]
    fn a_token_matches_its_digest_and_has_a_recognisable_shape() {
        let (text, digest) = new_token();
        assert!(looks_like_token(&text), "{text}");
        assert!(token_matches(&text, &digest));
        assert!(!token_matches(&format!("{text}0"), &digest));
        assert!(!looks_like_token("strata_xyz"));
        assert!(!looks_like_token(&digest));
        assert_ne!(new_token().0, text);
    }
}
