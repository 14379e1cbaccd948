//! Encryption at rest for configs whose data id starts with [`CIPHER_PREFIX`].
//!
//! Content is sealed with AES-256-GCM under a key from the node's configuration. The stored
//! form is ASCII, `strata:v1:<key id>:<base64(nonce || ciphertext || tag)>`, so it fits where
//! plaintext content goes (JSON, history, the KV store).
//!
//! Each ciphertext is bound to its config: the caller passes `namespace/group/data_id` as the
//! associated data, and decryption under any other binding fails. The key id in the header is
//! authenticated too. Nonces are 96 random bits per encryption; NIST SP 800-38D allows 2^32
//! random-nonce encryptions under one key, far above what a config center writes.

use std::fmt;

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

/// Data ids with this prefix are stored encrypted.
pub const CIPHER_PREFIX: &str = "cipher-";

/// Returns whether configs with this data id are stored encrypted.
pub fn is_encrypted(data_id: &str) -> bool {
    data_id.starts_with(CIPHER_PREFIX)
}

/// Starts every stored ciphertext; the version names the format and algorithm.
const STORED_PREFIX: &str = "strata:v1:";

/// The AES-256 key length in bytes.
const KEY_LEN: usize = 32;

/// The GCM nonce length in bytes.
const NONCE_LEN: usize = 12;

/// The GCM tag length in bytes.
const TAG_LEN: usize = 16;

/// The number of hex characters in a key id.
const KEY_ID_LEN: usize = 8;

/// Standard base64 that accepts keys pasted with or without `=` padding.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// AES-256-GCM with a key from the node's configuration.
#[derive(Clone)]
pub struct Cipher {
    /// The keyed AEAD; its key schedule is the only copy of the key we keep.
    aead: Aes256Gcm,
    /// Names the key in stored ciphertexts and errors without revealing it.
    key_id: String,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("Cipher")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be loaded or a stored value could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CipherError {
    /// The configured key is not 32 bytes of base64 or 64 hex characters; says what was wrong
    /// without repeating the key.
    BadKey(String),
    /// The stored text does not start with `strata:v1:`, so it was never encrypted by us.
    NotEncrypted,
    /// The tag does not verify: another key, another config's associated data, or tampering.
    /// Also returned for a stored value whose `strata:v1:` form is damaged.
    WrongKeyOrCorrupt {
        /// The key id named in the stored value, or `None` when the value is too damaged to
        /// name one.
        stored_key_id: Option<String>,
        /// The key id of the key we tried.
        our_key_id: String,
    },
}

impl fmt::Display for CipherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CipherError::BadKey(reason) => write!(f, "bad encryption key: {reason}"),
            CipherError::NotEncrypted => {
                f.write_str("value is not encrypted (no \"strata:v1:\" prefix)")
            }
            CipherError::WrongKeyOrCorrupt {
                stored_key_id: Some(stored),
                our_key_id,
            } if stored != our_key_id => write!(
                f,
                "cannot decrypt: value was encrypted with key {stored} but this node has key \
                 {our_key_id}"
            ),
            CipherError::WrongKeyOrCorrupt {
                stored_key_id: Some(_),
                our_key_id,
            } => write!(
                f,
                "cannot decrypt with key {our_key_id}: value is corrupt or belongs to another \
                 config"
            ),
            CipherError::WrongKeyOrCorrupt {
                stored_key_id: None,
                our_key_id,
            } => write!(
                f,
                "cannot decrypt with key {our_key_id}: stored value is malformed"
            ),
        }
    }
}

impl std::error::Error for CipherError {}

impl Cipher {
    /// The key is 32 bytes, given as base64 (standard alphabet) or as 64 hex characters.
    ///
    /// Surrounding whitespace (such as the newline of a key file) is ignored, and base64
    /// padding is optional.
    ///
    /// # Errors
    ///
    /// Returns [`CipherError::BadKey`] when the text is neither form or not 32 bytes long.
    pub fn from_key(text: &str) -> Result<Cipher, CipherError> {
        let text = text.trim();
        let key = if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            decode_hex(text)
        } else {
            LENIENT_BASE64.decode(text).map_err(|_| {
                CipherError::BadKey(format!(
                    "expected base64 or {} hex characters, got {} characters that are neither",
                    2 * KEY_LEN,
                    text.chars().count()
                ))
            })?
        };
        if key.len() != KEY_LEN {
            return Err(CipherError::BadKey(format!(
                "expected a {KEY_LEN}-byte key, got {} bytes",
                key.len()
            )));
        }
        let aead = Aes256Gcm::new_from_slice(&key)
            .map_err(|_| CipherError::BadKey(format!("expected a {KEY_LEN}-byte key")))?;
        let key_id = compute_key_id(&aead);
        Ok(Cipher { aead, key_id })
    }

    /// A short key id (8 hex characters) to tell keys apart in stored values and errors.
    ///
    /// It is the first 4 bytes of the GCM tag of an empty message under a fixed nonce and
    /// label, so it depends on the whole key but reveals nothing usable about it. Two keys
    /// share an id with probability 2^-32.
    pub fn key_id(&self) -> String {
        self.key_id.clone()
    }

    /// Encrypts with a random 96-bit nonce; output is ASCII: `strata:v1:<key id>:` +
    /// `base64(nonce || ciphertext+tag)`. The associated data binds the ciphertext to `aad`
    /// (pass `namespace/group/data_id`), so a ciphertext copied to another config fails to
    /// decrypt.
    ///
    /// # Panics
    ///
    /// Panics if the operating system's random number generator fails, or if `plaintext` is
    /// over 64 GiB (the GCM limit); neither can happen for a config.
    pub fn encrypt(&self, plaintext: &str, aad: &str) -> String {
        let nonce = Nonce::<aes_gcm::aead::consts::U12>::try_generate()
            .expect("the operating system's random number generator is available");
        let associated = associated_data(&self.key_id, aad);
        let sealed = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &associated,
                },
            )
            .expect("a config is far below the GCM message size limit");
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        format!("{STORED_PREFIX}{}:{}", self.key_id, STANDARD.encode(&blob))
    }

    /// Reverses [`Cipher::encrypt`] for the same `aad`.
    ///
    /// # Errors
    ///
    /// Returns [`CipherError::NotEncrypted`] when `stored` lacks the `strata:v1:` prefix, and
    /// [`CipherError::WrongKeyOrCorrupt`] when the tag does not verify (wrong key, other
    /// `aad`, tampering) or the stored form is damaged; its message names the key the value
    /// was encrypted with and ours when they differ.
    pub fn decrypt(&self, stored: &str, aad: &str) -> Result<String, CipherError> {
        let Some(rest) = stored.strip_prefix(STORED_PREFIX) else {
            return Err(CipherError::NotEncrypted);
        };
        let corrupt = |stored_key_id: Option<&str>| CipherError::WrongKeyOrCorrupt {
            stored_key_id: stored_key_id.map(str::to_owned),
            our_key_id: self.key_id.clone(),
        };
        let Some((stored_key_id, encoded)) = rest.split_once(':') else {
            return Err(corrupt(None));
        };
        let well_formed_id = stored_key_id.len() == KEY_ID_LEN
            && stored_key_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed_id {
            return Err(corrupt(None));
        }
        if stored_key_id != self.key_id {
            // The key id is authenticated, so this could never verify.
            return Err(corrupt(Some(stored_key_id)));
        }
        let blob = STANDARD
            .decode(encoded.trim_end())
            .map_err(|_| corrupt(Some(stored_key_id)))?;
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(corrupt(Some(stored_key_id)));
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::<aes_gcm::aead::consts::U12>::try_from(nonce)
            .map_err(|_| corrupt(Some(stored_key_id)))?;
        let associated = associated_data(stored_key_id, aad);
        let plaintext = self
            .aead
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: &associated,
                },
            )
            .map_err(|_| corrupt(Some(stored_key_id)))?;
        String::from_utf8(plaintext).map_err(|_| corrupt(Some(stored_key_id)))
    }
}

/// Returns the GCM associated data: the stored header (format version and key id) and the
/// caller's binding, so neither can be swapped without failing the tag.
fn associated_data(key_id: &str, aad: &str) -> Vec<u8> {
    format!("{STORED_PREFIX}{key_id}:{aad}").into_bytes()
}

/// Computes the key id: the GCM tag of an empty message under a fixed nonce and label.
///
/// The fixed block is never the zero block (whose encryption is GHASH's secret `H`), and a
/// random nonce equals the fixed one with probability 2^-96, so publishing 4 bytes of this tag
/// gives nothing away.
fn compute_key_id(aead: &Aes256Gcm) -> String {
    const KEY_ID_NONCE: [u8; NONCE_LEN] = *b"strata keyid";
    const KEY_ID_LABEL: &[u8] = b"strata configcenter key id v1";
    let nonce = Nonce::<aes_gcm::aead::consts::U12>::from(KEY_ID_NONCE);
    let tag = aead
        .encrypt(
            &nonce,
            Payload {
                msg: b"",
                aad: KEY_ID_LABEL,
            },
        )
        .expect("an empty message is within the GCM limits");
    tag.iter()
        .take(KEY_ID_LEN / 2)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Decodes hex that the caller has checked is an even number of hex digits.
fn decode_hex(text: &str) -> Vec<u8> {
    let digit = |byte: u8| match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        b'A'..=b'F' => byte - b'A' + 10,
        _ => 0,
    };
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| (digit(pair[0]) << 4) | digit(pair[1]))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEX_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    /// The same key as `HEX_KEY`, in base64.
    const BASE64_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const OTHER_KEY: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
    const AAD: &str = "public/DEFAULT_GROUP/cipher-db.yaml";

    fn cipher() -> Cipher {
        Cipher::from_key(HEX_KEY).unwrap()
    }

    #[test]
    fn prefix_marks_encrypted_data_ids() {
        assert!(is_encrypted("cipher-db.yaml"));
        assert!(!is_encrypted("db.yaml"));
        assert!(!is_encrypted("Cipher-db.yaml"));
        assert!(!is_encrypted("my-cipher-db"));
    }

    #[test]
    fn round_trip() {
        let cipher = cipher();
        for plaintext in [
            "",
            "password=hunter2\n",
            "é ünïcødé 🔐",
            &"x".repeat(100_000),
        ] {
            let stored = cipher.encrypt(plaintext, AAD);
            assert!(stored.is_ascii());
            assert!(stored.starts_with(&format!("strata:v1:{}:", cipher.key_id())));
            assert_eq!(cipher.decrypt(&stored, AAD).unwrap(), plaintext);
        }
    }

    #[test]
    fn plaintext_never_appears_and_nonces_differ() {
        let cipher = cipher();
        let plaintext = "spring.datasource.password=correct-horse-battery-staple";
        let first = cipher.encrypt(plaintext, AAD);
        let second = cipher.encrypt(plaintext, AAD);
        assert_ne!(first, second);
        for stored in [&first, &second] {
            assert!(!stored.contains(plaintext));
            assert!(!stored.contains("correct-horse"));
            assert!(!stored.contains(&STANDARD.encode(plaintext)));
        }
        // Only the length leaks: nonce, ciphertext and tag.
        let encoded = first.rsplit(':').next().unwrap();
        let blob = STANDARD.decode(encoded).unwrap();
        assert_eq!(blob.len(), NONCE_LEN + plaintext.len() + TAG_LEN);
    }

    #[test]
    fn hex_and_base64_forms_give_the_same_key() {
        let from_hex = Cipher::from_key(HEX_KEY).unwrap();
        let from_base64 = Cipher::from_key(BASE64_KEY).unwrap();
        let unpadded = Cipher::from_key(BASE64_KEY.trim_end_matches('=')).unwrap();
        let upper_hex = Cipher::from_key(&format!("  {}\n", HEX_KEY.to_uppercase())).unwrap();
        assert_eq!(from_hex.key_id(), from_base64.key_id());
        assert_eq!(from_hex.key_id(), unpadded.key_id());
        assert_eq!(from_hex.key_id(), upper_hex.key_id());
        let stored = from_hex.encrypt("x", AAD);
        assert_eq!(from_base64.decrypt(&stored, AAD).unwrap(), "x");
    }

    #[test]
    fn key_id_is_short_stable_and_distinguishes_keys() {
        let ours = cipher().key_id();
        assert_eq!(ours.len(), 8);
        assert!(ours.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(ours, cipher().key_id());
        assert_ne!(ours, Cipher::from_key(OTHER_KEY).unwrap().key_id());
        assert!(!format!("{:?}", cipher()).contains("0a0b"));
    }

    #[test]
    fn known_answer_stays_decryptable() {
        // Written by this code once and checked with Python's `cryptography` AESGCM; guards
        // the stored format, the associated data layout and the key id against change.
        let stored =
            "strata:v1:e4ab343f:DejIyMWKHOHHN7kVDoQmJbDvjRAyWtTaiKaTs2HFRXLckMWPazEeNhT6UK8=";
        assert_eq!(cipher().key_id(), "e4ab343f");
        assert_eq!(cipher().decrypt(stored, AAD).unwrap(), "password=hunter2");
    }

    #[test]
    fn wrong_key_names_both_key_ids() {
        let stored = cipher().encrypt("secret", AAD);
        let other = Cipher::from_key(OTHER_KEY).unwrap();
        let error = other.decrypt(&stored, AAD).unwrap_err();
        assert_eq!(
            error,
            CipherError::WrongKeyOrCorrupt {
                stored_key_id: Some(cipher().key_id()),
                our_key_id: other.key_id(),
            }
        );
        let message = error.to_string();
        assert!(message.contains(&cipher().key_id()), "{message}");
        assert!(message.contains(&other.key_id()), "{message}");
    }

    #[test]
    fn wrong_aad_fails() {
        let cipher = cipher();
        let stored = cipher.encrypt("secret", AAD);
        let error = cipher
            .decrypt(&stored, "public/DEFAULT_GROUP/cipher-other.yaml")
            .unwrap_err();
        assert_eq!(
            error,
            CipherError::WrongKeyOrCorrupt {
                stored_key_id: Some(cipher.key_id()),
                our_key_id: cipher.key_id(),
            }
        );
        assert!(error
            .to_string()
            .contains("corrupt or belongs to another config"));
    }

    #[test]
    fn any_tampered_byte_fails() {
        let cipher = cipher();
        let stored = cipher.encrypt("secret value", AAD);
        let (header, encoded) = stored.rsplit_once(':').unwrap();
        let blob = STANDARD.decode(encoded).unwrap();
        for index in 0..blob.len() {
            let mut tampered = blob.clone();
            tampered[index] ^= 0x01;
            let tampered = format!("{header}:{}", STANDARD.encode(&tampered));
            assert!(
                matches!(
                    cipher.decrypt(&tampered, AAD),
                    Err(CipherError::WrongKeyOrCorrupt { .. })
                ),
                "byte {index}"
            );
        }
        let truncated = format!("{header}:{}", STANDARD.encode(&blob[..blob.len() - 1]));
        assert!(cipher.decrypt(&truncated, AAD).is_err());
    }

    #[test]
    fn tampered_key_id_fails() {
        let cipher = cipher();
        let stored = cipher.encrypt("secret", AAD);
        let flipped = if stored.as_bytes()[10] == b'0' {
            "1"
        } else {
            "0"
        };
        let tampered = format!("{}{}{}", &stored[..10], flipped, &stored[11..]);
        assert!(matches!(
            cipher.decrypt(&tampered, AAD),
            Err(CipherError::WrongKeyOrCorrupt { .. })
        ));
    }

    #[test]
    fn malformed_stored_values() {
        let cipher = cipher();
        assert_eq!(
            cipher.decrypt("password=hunter2", AAD),
            Err(CipherError::NotEncrypted)
        );
        assert_eq!(cipher.decrypt("", AAD), Err(CipherError::NotEncrypted));
        let id = cipher.key_id();
        for stored in [
            "strata:v1:".to_owned(),
            "strata:v1:nocolon".to_owned(),
            "strata:v1:XYZ:AAAA".to_owned(),
            format!("strata:v1:{id}:not base64!"),
            format!("strata:v1:{id}:AAAA"),
            format!("strata:v1:{id}:"),
        ] {
            let error = cipher.decrypt(&stored, AAD).unwrap_err();
            assert!(
                matches!(error, CipherError::WrongKeyOrCorrupt { .. }),
                "{stored}: {error}"
            );
        }
    }

    #[test]
    fn bad_key_texts() {
        let cases = [
            // 16 bytes of base64: an AES-128 key.
            "AAECAwQFBgcICQoLDA0ODw==",
            // 63 hex characters: neither hex of the right length nor base64.
            &HEX_KEY[..63],
            // 66 hex characters: valid base64 of the wrong length.
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021",
            "not a key!",
            "",
        ];
        for text in cases {
            let error = Cipher::from_key(text).unwrap_err();
            assert!(matches!(error, CipherError::BadKey(_)), "{text}: {error}");
            assert!(!error.to_string().contains("0a0b0c"), "{error}");
        }
        assert_eq!(
            Cipher::from_key("AAECAwQFBgcICQoLDA0ODw==").unwrap_err(),
            CipherError::BadKey("expected a 32-byte key, got 16 bytes".to_owned())
        );
        assert_eq!(
            Cipher::from_key("not a key!").unwrap_err().to_string(),
            "bad encryption key: expected base64 or 64 hex characters, got 10 characters \
             that are neither"
        );
    }
}
