//! Consul's ACL endpoints over Strata's one access-control model: a Consul **policy** is a role
//! (its rules become permissions), a Consul **token** is a role token. What clients call:
//! `/v1/acl/token/self`, `/v1/acl/bootstrap`, `/v1/acl/token[s]`, `/v1/acl/policy[ies]`.
//!
//! Rules are Consul's HCL or its JSON form, for the resources Strata has: `service` and
//! `service_prefix` (registry services in the default namespace), `key` and `key_prefix` (KV
//! keys), with `policy = "read" | "list" | "write"`. `deny` is refused: Strata's grants only
//! allow, so leaving a name out is how it is denied.
//!
//! Differences from Consul, on purpose: the cluster's first credential is root's password
//! (`strata server --root-password-file`), so `/v1/acl/bootstrap` always answers that
//! bootstrapping is no longer allowed; an accessor id is the start of the token's digest, in
//! UUID form, and a policy id is derived from its name.

use crate::consul::{consul_token, field, ConsulError};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;
use strata_api::registry::DEFAULT_NAMESPACE;
use strata_auth::state::Owner;
use strata_auth::{secret, Access, Auth, Caller, Kind, Names, Permission, Role};
use strata_http::Who;

/// The ACL routes.
pub fn router(auth: Auth) -> Router {
    Router::new()
        .route("/v1/acl/bootstrap", put(bootstrap))
        .route("/v1/acl/token/self", get(token_self))
        .route("/v1/acl/token", put(token_create))
        .route("/v1/acl/token/{id}", get(token_read).delete(token_delete))
        .route("/v1/acl/tokens", get(token_list))
        .route("/v1/acl/policy", put(policy_create))
        .route(
            "/v1/acl/policy/{id}",
            get(policy_read).delete(policy_delete),
        )
        .route("/v1/acl/policy/name/{name}", get(policy_read_by_name))
        .route("/v1/acl/policies", get(policy_list))
        .with_state(auth)
}

type AclResult = Result<Response, ConsulError>;

fn disabled() -> ConsulError {
    ConsulError(StatusCode::UNAUTHORIZED, "ACL support disabled".into())
}

fn not_found() -> ConsulError {
    ConsulError(StatusCode::FORBIDDEN, "ACL not found".into())
}

fn bad(message: impl Into<String>) -> ConsulError {
    ConsulError(StatusCode::BAD_REQUEST, message.into())
}

/// ACLs are on (Consul answers 401 to every ACL route when they are off) and `who` is root
/// (Consul's `acl:write`).
fn manage(auth: &Auth, who: &Caller, action: &str) -> Result<(), ConsulError> {
    if !auth.enabled() {
        return Err(disabled());
    }
    auth.check_admin(who, action).map_err(|_| {
        ConsulError(
            StatusCode::FORBIDDEN,
            format!(
                "Permission denied: {} lacks permission 'acl:write'",
                who.who()
            ),
        )
    })
}

/// 32 hex digits as a UUID.
pub(crate) fn uuid(hex: &str) -> String {
    let h = |a: usize, b: usize| hex.get(a..b).unwrap_or("0");
    format!(
        "{}-{}-{}-{}-{}",
        h(0, 8),
        h(8, 12),
        h(12, 16),
        h(16, 20),
        h(20, 32)
    )
}

fn policy_id(name: &str) -> String {
    let digest = Sha256::digest(format!("strata-policy:{name}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    uuid(&hex)
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A token as Consul shows it; the secret only when the caller already holds it or just made it.
fn token_json(auth: &Auth, digest: &str, secret_id: Option<&str>) -> Option<Value> {
    let state = auth.state();
    let token = state.tokens.get(digest)?;
    let roles = match &token.owner {
        Owner::Roles(roles) => roles.clone(),
        Owner::User(user) => state
            .users
            .get(user)
            .map(|u| u.roles.clone())
            .unwrap_or_default(),
    };
    let policies: Vec<Value> = roles
        .iter()
        .map(|name| json!({"ID": policy_id(name), "Name": name}))
        .collect();
    let mut out = json!({
        "AccessorID": uuid(digest),
        "SecretID": secret_id.unwrap_or("<hidden>"),
        "Description": token.description,
        "Policies": policies,
        "Local": false,
        "CreateTime": "",
        "Hash": "",
        "CreateIndex": 0,
        "ModifyIndex": 0,
    });
    if let Some(at) = token.expires_at_ms {
        out["ExpirationTime"] = json!(rfc3339(at));
    }
    Some(out)
}

async fn bootstrap(State(auth): State<Auth>) -> AclResult {
    if !auth.enabled() {
        return Err(disabled());
    }
    let index = auth.gate.revision();
    Err(ConsulError(
        StatusCode::FORBIDDEN,
        format!("Permission denied: ACL bootstrap no longer allowed (reset index: {index})"),
    ))
}

async fn token_self(State(auth): State<Auth>, request: axum::extract::Request) -> AclResult {
    if !auth.enabled() {
        return Err(disabled());
    }
    let (parts, _) = request.into_parts();
    let token = consul_token(&parts).ok_or_else(not_found)?;
    if !secret::looks_like_token(&token) {
        return Err(not_found());
    }
    auth.gate
        .caller("consul", Some(&token), None)
        .map_err(|_| not_found())?;
    let digest = secret::token_digest(&token);
    let body = token_json(&auth, &digest, Some(&token)).ok_or_else(not_found)?;
    Ok(axum::Json(body).into_response())
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ConsulError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad("Request decode failed: expected an object")),
        Err(e) => Err(bad(format!(
            "Request decode failed: {} at line {} column {}",
            match e.classify() {
                serde_json::error::Category::Eof => "unexpected end",
                _ => "invalid JSON",
            },
            e.line(),
            e.column()
        ))),
    }
}

fn text(object: &Map<String, Value>, name: &str) -> String {
    field(object, name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Role names of `[{ID|Name}]` links, resolving policy ids through the role list.
fn linked_roles(auth: &Auth, links: Option<&Value>) -> Result<Vec<String>, ConsulError> {
    let roles = auth.state().roles;
    let mut names = Vec::new();
    for link in links.and_then(Value::as_array).into_iter().flatten() {
        let Some(link) = link.as_object() else {
            return Err(bad("each policy link must be an object with ID or Name"));
        };
        let name = text(link, "Name");
        let id = text(link, "ID");
        let resolved = if !name.is_empty() {
            roles.contains_key(&name).then_some(name.clone())
        } else {
            roles.keys().find(|r| policy_id(r) == id).cloned()
        };
        match resolved {
            Some(role) => names.push(role),
            None => {
                return Err(bad(format!(
                    "cannot find policy {}",
                    if name.is_empty() { id } else { name }
                )))
            }
        }
    }
    Ok(names)
}

async fn token_create(State(auth): State<Auth>, Who(who): Who, body: Bytes) -> AclResult {
    manage(&auth, &who, "acl_token_create")?;
    let request = object(&body)?;
    let mut roles = linked_roles(&auth, field(&request, "Policies"))?;
    roles.extend(linked_roles(&auth, field(&request, "Roles"))?);
    if roles.is_empty() {
        return Err(bad("a token needs at least one policy"));
    }
    let ttl = match field(&request, "ExpirationTTL").and_then(Value::as_str) {
        Some(ttl) if !ttl.is_empty() => Some(humantime::parse_duration(ttl).map_err(|_| {
            bad(format!(
                "invalid ExpirationTTL {ttl:?}: use a duration such as \"1h\""
            ))
        })?),
        _ => None,
    };
    let description = text(&request, "Description");
    let token = auth
        .token_create(Owner::Roles(roles), ttl, &description)
        .await
        .map_err(ConsulError::from)?;
    let digest = secret::token_digest(&token);
    let body = token_json(&auth, &digest, Some(&token)).ok_or_else(not_found)?;
    Ok(axum::Json(body).into_response())
}

/// The digest of the token with accessor id `id`.
fn digest_of(auth: &Auth, id: &str) -> Result<String, ConsulError> {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let hex = hex.to_ascii_lowercase();
    auth.state()
        .tokens
        .keys()
        .find(|d| d.starts_with(&hex))
        .cloned()
        .ok_or_else(not_found)
}

async fn token_read(State(auth): State<Auth>, Who(who): Who, Path(id): Path<String>) -> AclResult {
    manage(&auth, &who, "acl_token_read")?;
    let digest = digest_of(&auth, &id)?;
    let body = token_json(&auth, &digest, None).ok_or_else(not_found)?;
    Ok(axum::Json(body).into_response())
}

async fn token_delete(
    State(auth): State<Auth>,
    Who(who): Who,
    Path(id): Path<String>,
) -> AclResult {
    manage(&auth, &who, "acl_token_delete")?;
    let digest = digest_of(&auth, &id)?;
    auth.token_revoke(&digest[..32])
        .await
        .map_err(ConsulError::from)?;
    Ok(axum::Json(true).into_response())
}

async fn token_list(State(auth): State<Auth>, Who(who): Who) -> AclResult {
    manage(&auth, &who, "acl_token_list")?;
    let digests: Vec<String> = auth.state().tokens.into_keys().collect();
    let list: Vec<Value> = digests
        .iter()
        .filter_map(|d| token_json(&auth, d, None))
        .collect();
    Ok(axum::Json(list).into_response())
}

/// Parses Consul rules (HCL or its JSON form) into permissions.
pub fn parse_rules(rules: &str) -> Result<Vec<Permission>, String> {
    let trimmed = rules.trim();
    let mut out = Vec::new();
    if trimmed.starts_with('{') {
        let value: Value =
            serde_json::from_str(trimmed).map_err(|e| format!("rules are not valid JSON: {e}"))?;
        let Value::Object(kinds) = value else {
            return Err("rules must be an object".into());
        };
        for (kind, names) in kinds {
            let Value::Object(names) = names else {
                return Err(format!("{kind} must map names to rules"));
            };
            for (name, rule) in names {
                let policy = rule
                    .get("policy")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{kind} {name:?} has no policy"))?;
                out.push(permission(&kind, &name, policy)?);
            }
        }
        return Ok(out);
    }
    let rest = strip_comments(trimmed);
    let mut input = rest.as_str().trim_start();
    while !input.is_empty() {
        let (kind, after) = word(input)?;
        let (name, after) = quoted(after.trim_start())?;
        let after = after.trim_start();
        let after = after
            .strip_prefix('{')
            .ok_or_else(|| format!("expected {{ after {kind} {name:?}"))?;
        let end = after
            .find('}')
            .ok_or_else(|| format!("{kind} {name:?}: missing }}"))?;
        let body = &after[..end];
        let policy = body
            .split_once('=')
            .filter(|(key, _)| key.trim() == "policy")
            .map(|(_, value)| value.trim())
            .ok_or_else(|| format!("{kind} {name:?}: expected policy = \"...\""))?;
        let (policy, tail) = quoted(policy)?;
        if !tail.trim().is_empty() {
            return Err(format!("{kind} {name:?}: only policy is supported"));
        }
        out.push(permission(kind, &name, &policy)?);
        input = after[end + 1..].trim_start();
    }
    Ok(out)
}

fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| {
            let cut = [line.find('#'), line.find("//")]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(line.len());
            &line[..cut]
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn word(input: &str) -> Result<(&str, &str), String> {
    let end = input
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(input.len());
    if end == 0 {
        return Err(format!(
            "expected a rule such as service \"web\" {{ policy = \"write\" }} at {:?}",
            input.chars().take(20).collect::<String>()
        ));
    }
    Ok((&input[..end], &input[end..]))
}

fn quoted(input: &str) -> Result<(String, &str), String> {
    let rest = input
        .strip_prefix('"')
        .ok_or_else(|| "expected a quoted string".to_string())?;
    let end = rest
        .find('"')
        .ok_or_else(|| "unterminated string".to_string())?;
    Ok((rest[..end].to_string(), &rest[end + 1..]))
}

fn permission(kind: &str, name: &str, policy: &str) -> Result<Permission, String> {
    let access = match policy {
        "read" | "list" => Access::Read,
        "write" => Access::ReadWrite,
        "deny" => {
            return Err(format!(
                "{kind} {name:?}: deny is not supported; grants only allow, so leave the name out"
            ))
        }
        other => return Err(format!("{kind} {name:?}: unknown policy {other:?}")),
    };
    let service = |n: &str| format!("{DEFAULT_NAMESPACE}/{n}");
    let (kind, names) = match kind {
        "service" => (Kind::Registry, Names::one(service(name))),
        "service_prefix" => (Kind::Registry, Names::prefix(service(name))),
        "key" => (Kind::Kv, Names::one(name)),
        "key_prefix" => (Kind::Kv, Names::prefix(name)),
        other => {
            return Err(format!(
                "rules for {other} are not supported (service, service_prefix, key, key_prefix)"
            ))
        }
    };
    Ok(Permission {
        kind,
        names,
        access,
    })
}

/// A role's permissions as Consul HCL, for the kinds Consul rules can say.
fn render_rules(role: &Role) -> String {
    let prefix = format!("{DEFAULT_NAMESPACE}/");
    let mut lines = Vec::new();
    for p in &role.permissions {
        let start = String::from_utf8_lossy(&p.names.start).into_owned();
        let is_prefix = p
            .names
            .end
            .as_ref()
            .is_some_and(|end| *end == strata_proto::kv::prefix_end(&p.names.start));
        let is_one = p.names.end.is_none();
        if !is_prefix && !is_one {
            continue;
        }
        let (kind, name) = match p.kind {
            Kind::Registry => match start.strip_prefix(&prefix) {
                Some(name) => (
                    if is_prefix {
                        "service_prefix"
                    } else {
                        "service"
                    },
                    name.to_string(),
                ),
                None => continue,
            },
            Kind::Kv => (if is_prefix { "key_prefix" } else { "key" }, start),
            _ => continue,
        };
        let policy = if p.access == Access::Read {
            "read"
        } else {
            "write"
        };
        lines.push(format!("{kind} {name:?} {{ policy = {policy:?} }}"));
    }
    lines.join("\n")
}

fn policy_json(name: &str, role: &Role, description: &str) -> Value {
    json!({
        "ID": policy_id(name),
        "Name": name,
        "Description": description,
        "Rules": render_rules(role),
        "Datacenters": null,
        "Hash": "",
        "CreateIndex": 0,
        "ModifyIndex": 0,
    })
}

async fn policy_create(State(auth): State<Auth>, Who(who): Who, body: Bytes) -> AclResult {
    manage(&auth, &who, "acl_policy_create")?;
    let request = object(&body)?;
    if field(&request, "ID").is_some() {
        return Err(bad("Cannot specify the ID when creating a new policy"));
    }
    let name = text(&request, "Name");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(bad(format!("Invalid Policy: invalid Name {name:?}")));
    }
    // py-consul encodes the rules as a JSON string a second time.
    let rules = match field(&request, "Rules") {
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let permissions = parse_rules(&rules).map_err(|e| bad(format!("Invalid Policy: {e}")))?;
    auth.role_add(&name).await.map_err(ConsulError::from)?;
    for permission in permissions {
        auth.role_grant(&name, permission)
            .await
            .map_err(ConsulError::from)?;
    }
    let role = auth.role_get(&name).await.map_err(ConsulError::from)?;
    Ok(axum::Json(policy_json(&name, &role, &text(&request, "Description"))).into_response())
}

fn role_by_id(auth: &Auth, id: &str) -> Result<(String, Role), ConsulError> {
    auth.state()
        .roles
        .into_iter()
        .find(|(name, _)| policy_id(name) == id)
        .ok_or_else(not_found)
}

async fn policy_read(State(auth): State<Auth>, Who(who): Who, Path(id): Path<String>) -> AclResult {
    manage(&auth, &who, "acl_policy_read")?;
    let (name, role) = role_by_id(&auth, &id)?;
    Ok(axum::Json(policy_json(&name, &role, "")).into_response())
}

async fn policy_read_by_name(
    State(auth): State<Auth>,
    Who(who): Who,
    Path(name): Path<String>,
) -> AclResult {
    manage(&auth, &who, "acl_policy_read")?;
    let role = auth
        .state()
        .roles
        .get(&name)
        .cloned()
        .ok_or_else(not_found)?;
    Ok(axum::Json(policy_json(&name, &role, "")).into_response())
}

async fn policy_delete(
    State(auth): State<Auth>,
    Who(who): Who,
    Path(id): Path<String>,
) -> AclResult {
    manage(&auth, &who, "acl_policy_delete")?;
    let (name, _) = role_by_id(&auth, &id)?;
    auth.role_delete(&name).await.map_err(ConsulError::from)?;
    Ok(axum::Json(true).into_response())
}

async fn policy_list(State(auth): State<Auth>, Who(who): Who) -> AclResult {
    manage(&auth, &who, "acl_policy_list")?;
    let list: Vec<Value> = auth
        .state()
        .roles
        .iter()
        .map(|(name, role)| {
            let mut stub = policy_json(name, role, "");
            if let Some(object) = stub.as_object_mut() {
                object.remove("Rules");
            }
            stub
        })
        .collect();
    Ok(axum::Json(list).into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hcl_and_json_rules_give_the_same_grants() {
        let hcl = r#"
            # the web service and its keys
            service "web" { policy = "write" }
            service_prefix "" { policy = "read" }   // every service, read
            key_prefix "app/" { policy = "list" }
        "#;
        let json = r#"{"service": {"web": {"policy": "write"}},
                       "service_prefix": {"": {"policy": "read"}},
                       "key_prefix": {"app/": {"policy": "list"}}}"#;
        let mut a = parse_rules(hcl).unwrap();
        let mut b = parse_rules(json).unwrap();
        let key = |p: &Permission| format!("{:?}{:?}", p.kind, p.names);
        a.sort_by_key(key);
        b.sort_by_key(key);
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        let role = Role { permissions: a };
        assert_eq!(parse_rules(&render_rules(&role)).unwrap().len(), 3);
    }

    #[test]
    fn unsupported_rules_are_refused_with_a_reason() {
        assert!(parse_rules(r#"service "web" { policy = "deny" }"#)
            .unwrap_err()
            .contains("deny is not supported"));
        assert!(parse_rules(r#"node "n1" { policy = "read" }"#)
            .unwrap_err()
            .contains("not supported"));
        assert!(parse_rules(r#"service "web" { policy = "write""#).is_err());
        assert!(parse_rules(r#"service web { policy = "write" }"#).is_err());
        assert!(parse_rules("{").is_err());
        assert!(parse_rules("").unwrap().is_empty());
    }
}

#[cfg(test)]
mod fuzz_twin {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The `credentials` fuzz target's rules half, on stable: any text parses or is refused.
        #[test]
        fn any_rules_text_parses_or_is_refused(text in ".{0,200}") {
            // Whatever parses grants only kinds Consul rules can say.
            if let Ok(permissions) = parse_rules(&text) {
                prop_assert!(permissions.iter().all(|p| matches!(p.kind, Kind::Registry | Kind::Kv)));
            }
        }

        /// Rules-shaped text with random names and policies never panics either.
        #[test]
        fn rule_shaped_text_never_panics(
            kind in "(service|service_prefix|key|key_prefix|node|x)",
            name in "[a-z/\"{}=# ]{0,12}",
            policy in "(read|write|list|deny|\"|)",
        ) {
            let parsed = parse_rules(&format!("{kind} \"{name}\" {{ policy = \"{policy}\" }}"));
            if policy == "deny" {
                prop_assert!(parsed.is_err(), "deny is always refused");
            }
        }
    }
}
