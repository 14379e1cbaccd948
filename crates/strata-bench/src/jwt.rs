//! `jwt-sign`: one signed JSON Web Token, for load runs against gateway routes with
//! `auth = { methods = ["jwt"] }` (`bench/gateway-features.sh`).
//!
//! The token is signed with a private key in PEM: an EC key (ES256, ES384) in PKCS#8
//! (`-----BEGIN PRIVATE KEY-----`, as `openssl pkcs8 -topk8 -nocrypt` writes it), or an RSA key
//! (RS256, RS384, RS512). The claims are a JSON object; `exp` is added, one day ahead, when
//! they have none, since the gateway requires it.

use anyhow::{bail, Context};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::str::FromStr;

/// Seconds a token stays valid when its claims name no `exp`: one day.
pub const DEFAULT_LIFETIME_S: u64 = 86_400;

/// Signs `claims` (a JSON object) under `alg` with the private key `key_pem`; `now_unix` (seconds
/// since the epoch) is the base of the `exp` added when the claims have none.
pub fn sign(key_pem: &[u8], alg: &str, claims: &str, now_unix: u64) -> anyhow::Result<String> {
    let algorithm =
        Algorithm::from_str(alg).map_err(|_| anyhow::anyhow!("unknown algorithm {alg:?}"))?;
    let key = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(key_pem)
            .context("the key is not an EC private key in PKCS#8 PEM")?,
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
            EncodingKey::from_rsa_pem(key_pem)
                .context("the key is not an RSA private key in PEM")?
        }
        other => {
            bail!("algorithm {other:?} is not supported here (ES256, ES384, RS256, RS384, RS512)")
        }
    };
    let mut claims: serde_json::Value =
        serde_json::from_str(claims).context("--claims is not JSON")?;
    let Some(object) = claims.as_object_mut() else {
        bail!("--claims must be a JSON object");
    };
    object
        .entry("exp")
        .or_insert_with(|| (now_unix + DEFAULT_LIFETIME_S).into());
    jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).context("cannot sign the token")
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    /// A P-256 key made with `openssl ecparam -name prime256v1 -genkey -noout` and converted to
    /// PKCS#8; for these tests only.
    const PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMHPJzEQABZnkiDiw
PO6/32LvvI7RBz95jY9+tz8L66ShRANCAASke0GS2N9ON1LGHAwmr3YnGJG4VxOQ
LP0y/VxjIAMZNspgAmcqM6sh+3bOmn4/ivx3+sN5QHqElVo54UplHqA2
-----END PRIVATE KEY-----
";
    /// Its public half (`openssl ec -pubout`).
    const PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEpHtBktjfTjdSxhwMJq92JxiRuFcT
kCz9Mv1cYyADGTbKYAJnKjOrIft2zpp+P4r8d/rDeUB6hJVaOeFKZR6gNg==
-----END PUBLIC KEY-----
";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn an_es256_token_verifies_with_the_public_key_and_expires_in_a_day() {
        let now = now();
        let token = sign(PRIVATE_PEM.as_bytes(), "ES256", r#"{"sub":"bench"}"#, now).unwrap();
        let key = DecodingKey::from_ec_pem(PUBLIC_PEM.as_bytes()).unwrap();
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &key,
            &Validation::new(Algorithm::ES256),
        )
        .unwrap();
        assert_eq!(data.header.alg, Algorithm::ES256);
        assert_eq!(data.claims["sub"], "bench");
        assert_eq!(data.claims["exp"], now + DEFAULT_LIFETIME_S);
    }

    #[test]
    fn a_given_exp_is_kept() {
        let token = sign(
            PRIVATE_PEM.as_bytes(),
            "ES256",
            r#"{"exp":4102444800}"#,
            now(),
        )
        .unwrap();
        let key = DecodingKey::from_ec_pem(PUBLIC_PEM.as_bytes()).unwrap();
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &key,
            &Validation::new(Algorithm::ES256),
        )
        .unwrap();
        assert_eq!(data.claims["exp"], 4_102_444_800_u64);
    }

    #[test]
    fn bad_input_is_refused() {
        let key = PRIVATE_PEM.as_bytes();
        assert!(sign(key, "ES999", "{}", 0).is_err());
        assert!(sign(key, "HS256", "{}", 0).is_err());
        assert!(sign(key, "ES256", "[1]", 0).is_err());
        assert!(sign(key, "ES256", "not json", 0).is_err());
        assert!(sign(key, "RS256", "{}", 0).is_err());
        assert!(sign(b"not a key", "ES256", "{}", 0).is_err());
    }
}
