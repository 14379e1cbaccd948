//! [`AuthState`]: users, roles and tokens as the cluster replicates them, and who a
//! credential is. [`LoginThrottle`]: failed logins slow down per user and per client address.
//!
//! Times are milliseconds since the Unix epoch, passed in, so everything here is
//! deterministic and testable without a clock.

use crate::secret;
use crate::{Grants, Role, User};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Where the auth records live in the KV store; only root may read or write under it.
pub const ROOT: &str = "/strata/auth/";

/// Key of the switch that turns access control on (`true`) or off.
pub const ENABLED_KEY: &str = "/strata/auth/enabled";
/// Prefix of user records (`/strata/auth/users/NAME`, JSON [`User`]).
pub const USERS: &str = "/strata/auth/users/";
/// Prefix of role records (`/strata/auth/roles/NAME`, JSON [`Role`]).
pub const ROLES: &str = "/strata/auth/roles/";
/// Prefix of token records (`/strata/auth/tokens/DIGEST`, JSON [`Token`]).
pub const TOKENS: &str = "/strata/auth/tokens/";

/// Who a token acts as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// A user: the token has the user's roles, as they are when it is used.
    User(String),
    /// A set of roles, with no user behind it (for services).
    Roles(Vec<String>),
}

/// A token as stored: its digest is the record's key, never its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Who it acts as.
    pub owner: Owner,
    /// When it stops working (ms since the epoch); `None`: never.
    pub expires_at_ms: Option<u64>,
    /// What it is for, as its creator said.
    #[serde(default)]
    pub description: String,
}

/// Why a credential was refused. The messages never contain the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Access control is on and the request carries no credential.
    Missing,
    /// Unknown user, wrong password, unknown or malformed token (deliberately one answer).
    BadCredentials,
    /// The token expired.
    Expired,
    /// Too many failed logins; retry after this many milliseconds.
    Throttled(u64),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing => f.write_str(
                "authentication required: access control is on; log in (strata auth login) or pass a token",
            ),
            Refusal::BadCredentials => {
                f.write_str("authentication failed: invalid user name, password or token")
            }
            Refusal::Expired => f.write_str("authentication failed: the token has expired"),
            Refusal::Throttled(ms) => write!(
                f,
                "too many failed logins; retry in {} s",
                ms.div_ceil(1000)
            ),
        }
    }
}

/// A caller who proved who it is.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user's name, or `None` for a role-set token.
    pub user: Option<String>,
    /// What it may do.
    pub grants: Grants,
}

/// The replicated auth records.
#[derive(Debug, Clone, Default)]
pub struct AuthState {
    /// Whether access control is enforced.
    pub enabled: bool,
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Roles by name.
    pub roles: BTreeMap<String, Role>,
    /// Tokens by digest.
    pub tokens: BTreeMap<String, Token>,
}

impl AuthState {
    /// Builds the state from the records under [`ROOT`], as a node reads them from the KV
    /// store. Records that do not decode are skipped and returned, so one bad record never
    /// locks everybody out or in.
    pub fn load<'a>(
        records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> (Self, Vec<String>) {
        let mut state = AuthState::default();
        let mut skipped = Vec::new();
        for (key, value) in records {
            if let Err(why) = state.apply(key, Some(value)) {
                skipped.push(why);
            }
        }
        (state, skipped)
    }

    /// Applies one change of a record under [`ROOT`]: a put (`Some(value)`) or a delete. A key
    /// outside the layout or a value that does not decode changes nothing and is an error that
    /// names the key, never the value (it may hold a password hash).
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let key =
            std::str::from_utf8(key).map_err(|_| "auth record key is not UTF-8".to_string())?;
        let bad = |what: &str| format!("auth record {key}: {what}");
        if key == ENABLED_KEY {
            self.enabled = match value {
                None => false,
                Some(b"true") => true,
                Some(b"false") => false,
                Some(_) => return Err(bad("expected true or false")),
            };
            return Ok(());
        }
        let named = |prefix: &str| key.strip_prefix(prefix).filter(|name| !name.is_empty());
        let outcome = if let Some(name) = named(USERS) {
            put_or_remove(&mut self.users, name, value)
        } else if let Some(name) = named(ROLES) {
            put_or_remove(&mut self.roles, name, value)
        } else if let Some(digest) = named(TOKENS) {
            put_or_remove(&mut self.tokens, digest, value)
        } else {
            Err("not a key of the auth layout".to_string())
        };
        outcome.map_err(|what| bad(&what))
    }

    /// The caller behind a user name and password.
    pub fn login(&self, user: &str, password: &str) -> Result<Principal, Refusal> {
        let Some(record) = self.users.get(user) else {
            // Spend the time of a verification anyway, so a missing user is not faster.
            let _ = secret::verify_password(password, dummy_hash());
            return Err(Refusal::BadCredentials);
        };
        let Some(hash) = &record.password_hash else {
            return Err(Refusal::BadCredentials);
        };
        if !secret::verify_password(password, hash) {
            return Err(Refusal::BadCredentials);
        }
        Ok(Principal {
            user: Some(user.to_string()),
            grants: Grants::of(&record.roles, &self.roles),
        })
    }

    /// The caller behind a token at time `now_ms`.
    pub fn authenticate(&self, token: &str, now_ms: u64) -> Result<Principal, Refusal> {
        if !secret::looks_like_token(token) {
            return Err(Refusal::BadCredentials);
        }
        let digest = secret::token_digest(token);
        // The map lookup is by digest: learning whether a digest exists reveals nothing about
        // other tokens' texts.
        let Some(record) = self.tokens.get(&digest) else {
            return Err(Refusal::BadCredentials);
        };
        if record.expires_at_ms.is_some_and(|at| now_ms >= at) {
            return Err(Refusal::Expired);
        }
        match &record.owner {
            Owner::User(name) => {
                let Some(user) = self.users.get(name) else {
                    return Err(Refusal::BadCredentials);
                };
                Ok(Principal {
                    user: Some(name.clone()),
                    grants: Grants::of(&user.roles, &self.roles),
                })
            }
            Owner::Roles(roles) => Ok(Principal {
                user: None,
                grants: Grants::of(roles, &self.roles),
            }),
        }
    }
}

/// Puts the JSON record `value` under `name` in `map`, or removes it when `value` is `None`.
/// A value that does not decode changes nothing; the error says where it broke, never what it
/// holds (serde_json's own message can quote the value).
fn put_or_remove<T: serde::de::DeserializeOwned>(
    map: &mut BTreeMap<String, T>,
    name: &str,
    value: Option<&[u8]>,
) -> Result<(), String> {
    match value {
        None => {
            map.remove(name);
        }
        Some(value) => {
            let record = serde_json::from_slice(value).map_err(|e| {
                let class = e.classify();
                format!(
                    "does not decode ({class:?} error at line {} column {})",
                    e.line(),
                    e.column()
                )
            })?;
            map.insert(name.to_string(), record);
        }
    }
    Ok(())
}

/// A hash verified against when the user is unknown, made once per process.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| secret::hash_password("no user has this password"))
}

/// Failed logins per key (a user name, or a client address): after `free` failures within a
/// window, each further attempt must wait twice as long as the last, up to `longest_ms`. A key
/// with no failure for `longest_ms` starts over, and such keys are dropped once the table
/// holds [`LoginThrottle::PRUNE_AT`] of them, so random names cannot grow it without bound.
#[derive(Debug, Clone)]
pub struct LoginThrottle {
    free: u32,
    first_ms: u64,
    longest_ms: u64,
    /// Key -> (failures, the time before which attempts are refused, the last failure).
    failures: HashMap<String, (u32, u64, u64)>,
}

impl LoginThrottle {
    /// `free` failures cost nothing; then waits start at `first_ms` and double up to
    /// `longest_ms`.
    pub fn new(free: u32, first_ms: u64, longest_ms: u64) -> Self {
        LoginThrottle {
            free,
            first_ms,
            longest_ms,
            failures: HashMap::new(),
        }
    }

    /// How many keys the table holds before it drops the ones whose window has passed.
    pub const PRUNE_AT: usize = 10_000;

    /// `Err(Throttled)` when an attempt for every one of `keys` may not be made at `now_ms`.
    pub fn check(&self, keys: &[&str], now_ms: u64) -> Result<(), Refusal> {
        let wait = keys
            .iter()
            .filter_map(|key| self.failures.get(*key))
            .map(|(_, until, _)| until.saturating_sub(now_ms))
            .max()
            .unwrap_or(0);
        if wait > 0 {
            return Err(Refusal::Throttled(wait));
        }
        Ok(())
    }

    /// Records the outcome of an attempt for `keys` at `now_ms`.
    pub fn record(&mut self, keys: &[&str], success: bool, now_ms: u64) {
        let window = self.longest_ms;
        if !success && self.failures.len() >= Self::PRUNE_AT {
            self.failures.retain(|_, (_, until, last)| {
                *until > now_ms || now_ms.saturating_sub(*last) < window
            });
        }
        for key in keys {
            if success {
                self.failures.remove(*key);
                continue;
            }
            let entry = self
                .failures
                .entry((*key).to_string())
                .or_insert((0, 0, now_ms));
            if now_ms.saturating_sub(entry.2) >= window && entry.1 <= now_ms {
                // Quiet for a whole window: the count starts over.
                *entry = (0, 0, now_ms);
            }
            entry.0 += 1;
            entry.2 = now_ms;
            if entry.0 > self.free {
                let doublings = (entry.0 - self.free - 1).min(32);
                let wait = self
                    .first_ms
                    .saturating_mul(1u64 << doublings)
                    .min(self.longest_ms);
                entry.1 = now_ms.saturating_add(wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Access, Kind, Names, Permission};

    fn state() -> (AuthState, String) {
        let mut state = AuthState::default();
        state.roles.insert(
            "app".into(),
            Role {
                permissions: vec![Permission {
                    kind: Kind::Kv,
                    names: Names::prefix("app/"),
                    access: Access::ReadWrite,
                }],
            },
        );
        state.users.insert(
            "alice".into(),
            User {
                password_hash: Some(secret::hash_password("s3cret")),
                roles: vec!["app".into()],
            },
        );
        let (text, digest) = secret::new_token();
        state.tokens.insert(
            digest,
            Token {
                owner: Owner::User("alice".into()),
                expires_at_ms: Some(1_000),
                description: "ci".into(),
            },
        );
        (state, text)
    }

    #[test]
    fn a_user_logs_in_with_the_right_password_only_and_gets_its_roles() {
        let (state, _) = state();
        let alice = state.login("alice", "s3cret").unwrap();
        assert_eq!(alice.user.as_deref(), Some("alice"));
        assert!(alice
            .grants
            .allows(Kind::Kv, Access::Write, &Names::one("app/x")));
        assert!(!alice
            .grants
            .allows(Kind::Kv, Access::Read, &Names::one("other")));
        assert_eq!(
            state.login("alice", "wrong").unwrap_err(),
            Refusal::BadCredentials
        );
        assert_eq!(
            state.login("bob", "s3cret").unwrap_err(),
            Refusal::BadCredentials
        );
    }

    #[test]
    fn a_token_works_until_it_expires_and_garbage_is_refused() {
        let (state, token) = state();
        assert!(state.authenticate(&token, 999).is_ok());
        assert_eq!(
            state.authenticate(&token, 1_000).unwrap_err(),
            Refusal::Expired
        );
        assert_eq!(
            state.authenticate("strata_nope", 0).unwrap_err(),
            Refusal::BadCredentials
        );
        let (other, _) = secret::new_token();
        assert_eq!(
            state.authenticate(&other, 0).unwrap_err(),
            Refusal::BadCredentials
        );
    }

    #[test]
    fn refusals_never_contain_the_credential() {
        let (state, token) = state();
        for refusal in [
            state.authenticate(&token, 5_000).unwrap_err(),
            state.login("alice", "wrong").unwrap_err(),
        ] {
            let text = refusal.to_string();
            assert!(!text.contains(&token) && !text.contains("wrong"), "{text}");
        }
    }

    #[test]
    fn failures_start_over_after_a_quiet_window_and_the_table_stays_bounded() {
        let mut throttle = LoginThrottle::new(3, 1_000, 60_000);
        for _ in 0..3 {
            throttle.record(&["user:a"], false, 0);
        }
        // A fourth failure a whole window later is a first failure again: free.
        throttle.record(&["user:a"], false, 60_000);
        assert!(throttle.check(&["user:a"], 60_000).is_ok());
        // Random names cannot grow the table past the prune point by much.
        for n in 0..(LoginThrottle::PRUNE_AT as u64 * 2) {
            throttle.record(&[&format!("user:{n}")], false, n * 10);
        }
        assert!(
            throttle.failures.len() <= LoginThrottle::PRUNE_AT,
            "{}",
            throttle.failures.len()
        );
    }

    #[test]
    fn repeated_failures_are_throttled_per_key_and_a_success_clears_them() {
        let mut throttle = LoginThrottle::new(3, 1_000, 60_000);
        let keys = ["user:alice", "addr:10.0.0.1"];
        for _ in 0..3 {
            assert!(throttle.check(&keys, 0).is_ok());
            throttle.record(&keys, false, 0);
        }
        assert!(throttle.check(&keys, 0).is_ok(), "three failures are free");
        throttle.record(&keys, false, 0);
        assert_eq!(throttle.check(&keys, 0), Err(Refusal::Throttled(1_000)));
        assert!(
            throttle.check(&["user:bob"], 0).is_ok(),
            "other keys are not slowed"
        );
        assert!(throttle.check(&keys, 1_000).is_ok());
        throttle.record(&keys, false, 1_000);
        assert_eq!(throttle.check(&keys, 1_000), Err(Refusal::Throttled(2_000)));
        for _ in 0..40 {
            throttle.record(&keys, false, 0);
        }
        assert_eq!(throttle.check(&keys, 0), Err(Refusal::Throttled(60_000)));
        throttle.record(&keys, true, 0);
        assert!(throttle.check(&keys, 0).is_ok());
    }

    #[test]
    fn records_load_apply_and_bad_ones_are_skipped_without_their_values() {
        let user = serde_json::to_vec(&User {
            password_hash: Some(secret::hash_password("pw")),
            roles: vec!["app".into()],
        })
        .unwrap();
        let (text, digest) = secret::new_token();
        let token = serde_json::to_vec(&Token {
            owner: Owner::Roles(vec!["app".into()]),
            expires_at_ms: None,
            description: String::new(),
        })
        .unwrap();
        let token_key = format!("{TOKENS}{digest}");
        let records: Vec<(&[u8], &[u8])> = vec![
            (ENABLED_KEY.as_bytes(), b"true"),
            (b"/strata/auth/users/alice", &user),
            (b"/strata/auth/users/mallory", b"{not json secret-ish"),
            (token_key.as_bytes(), &token),
            (b"/strata/auth/elsewhere", b"x"),
        ];
        let (mut state, skipped) = AuthState::load(records);
        assert!(state.enabled);
        assert!(state.login("alice", "pw").is_ok());
        assert!(state.authenticate(&text, 0).is_ok());
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            skipped.iter().all(|s| !s.contains("secret-ish")),
            "{skipped:?}"
        );
        state.apply(b"/strata/auth/users/alice", None).unwrap();
        assert!(state.login("alice", "pw").is_err());
        state.apply(ENABLED_KEY.as_bytes(), None).unwrap();
        assert!(!state.enabled);
    }

    proptest::proptest! {
        /// The fuzz target's twin: any record bytes apply or are refused without a change.
        #[test]
        fn any_record_applies_or_is_refused_without_a_change(
            pick in 0usize..5,
            name in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12),
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let prefix = [USERS, ROLES, TOKENS, ENABLED_KEY, ""][pick];
            let mut key = prefix.as_bytes().to_vec();
            key.extend_from_slice(&name);
            let mut state = AuthState::default();
            let before = format!("{:?}", (state.enabled, &state.users, &state.roles));
            if state.apply(&key, Some(&value)).is_err() {
                let after = format!("{:?}", (state.enabled, &state.users, &state.roles));
                proptest::prop_assert_eq!(before, after);
            }
        }
    }
}
