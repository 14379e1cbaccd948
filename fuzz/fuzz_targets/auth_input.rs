//! What access control reads from outside: auth records from the KV store (keys and values of
//! any bytes) and credentials from requests (any text as a token). Nothing panics, a refused
//! record changes nothing, and garbage never authenticates.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_auth::state::{AuthState, ENABLED_KEY, ROLES, TOKENS, USERS};

fuzz_target!(|data: &[u8]| {
    // First byte picks a prefix, so the decoders are reached often; the rest splits in two.
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (name, value) = rest.split_at(split);
    let value = value.get(1..).unwrap_or_default();
    let prefix = [USERS, ROLES, TOKENS, ENABLED_KEY, ""][usize::from(pick) % 5];
    let mut key = prefix.as_bytes().to_vec();
    if !prefix.ends_with("enabled") {
        key.extend_from_slice(name);
    }
    let mut state = AuthState::default();
    let before = format!("{:?}", (state.enabled, &state.users, &state.roles));
    if state.apply(&key, Some(value)).is_err() {
        assert_eq!(before, format!("{:?}", (state.enabled, &state.users, &state.roles)));
    }
    let _ = state.apply(&key, None);
    if let Ok(text) = std::str::from_utf8(rest) {
        assert!(state.authenticate(text, 0).is_err(), "an empty state authenticated");
        let _ = strata_auth::secret::looks_like_token(text);
    }
});
