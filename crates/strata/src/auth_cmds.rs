//! `strata auth ...`: log in, switch access control, and manage users, roles and tokens through
//! the native API's `/v1/auth/` routes (docs/auth.md).
//!
//! Passwords are read from stdin (`--password-stdin`) or `STRATA_PASSWORD`, never from an
//! argument, so they do not show in `ps` or the shell history. `strata auth login` stores the
//! token in `$XDG_CONFIG_HOME/strata/token` (else `~/.config/strata/token`) with mode 0600;
//! every client command sends it unless `--token` / `STRATA_TOKEN` says otherwise.

use crate::table::{Align, Table};
use crate::Output;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use strata_client::{Client, Method};

/// `strata auth ...`.
#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Log in with a password and store the token for later commands.
    Login(LoginArgs),
    /// Forget the stored token.
    Logout,
    /// Whether access control is on.
    Status,
    /// Who the current credential is.
    Whoami,
    /// Turn access control on (needs the user root with the role root).
    Enable,
    /// Turn access control off.
    Disable,
    /// Users.
    #[command(subcommand)]
    User(UserCommand),
    /// Roles and their permissions.
    #[command(subcommand)]
    Role(RoleCommand),
    /// Tokens for services and scripts.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// Arguments of `strata auth login`.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// User name.
    #[arg(long, default_value = "root")]
    pub user: String,
    /// Read the password from the first line of stdin (else STRATA_PASSWORD).
    #[arg(long)]
    pub password_stdin: bool,
    /// How long the token lasts (e.g. 30m, 8h).
    #[arg(long, default_value = "1h")]
    pub ttl: String,
}

/// `strata auth user ...`.
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user.
    Add {
        /// User name.
        name: String,
        /// Read the password from the first line of stdin (else STRATA_PASSWORD).
        #[arg(long)]
        password_stdin: bool,
        /// A user that cannot log in with a password (tokens or certificates only).
        #[arg(long, conflicts_with = "password_stdin")]
        no_password: bool,
    },
    /// List users.
    List,
    /// Show a user's roles.
    Get {
        /// User name.
        name: String,
    },
    /// Delete a user and its tokens.
    Delete {
        /// User name.
        name: String,
    },
    /// Set a user's password (read from stdin or STRATA_PASSWORD).
    Passwd {
        /// User name.
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Give a user a role.
    Grant {
        /// User name.
        name: String,
        /// Role name.
        role: String,
    },
    /// Take a role from a user.
    Revoke {
        /// User name.
        name: String,
        /// Role name.
        role: String,
    },
}

/// What a permission covers, for `role grant` and `role revoke`.
#[derive(Args, Debug)]
pub struct PermissionArgs {
    /// Role name.
    pub name: String,
    /// Resource kind: kv, registry (NAMESPACE/SERVICE), config (NAMESPACE/GROUP/DATA_ID),
    /// gateway, monitor.
    #[arg(long, default_value = "kv")]
    pub kind: String,
    /// The name (or first name of a range).
    pub key: String,
    /// End of the range, exclusive ("\0" for every name from KEY on).
    #[arg(long, conflicts_with = "prefix")]
    pub range_end: Option<String>,
    /// Every name that starts with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// read, write or readwrite.
    #[arg(long, default_value = "readwrite")]
    pub access: String,
}

/// `strata auth role ...`.
#[derive(Subcommand, Debug)]
pub enum RoleCommand {
    /// Create a role.
    Add {
        /// Role name.
        name: String,
    },
    /// List roles.
    List,
    /// Show a role's permissions.
    Get {
        /// Role name.
        name: String,
    },
    /// Delete a role (and take it from every user).
    Delete {
        /// Role name.
        name: String,
    },
    /// Allow a role to read and/or write names: strata auth role grant app app/ --prefix.
    Grant(PermissionArgs),
    /// Remove a permission from a role.
    Revoke(PermissionArgs),
}

/// `strata auth token ...`.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token (printed once) acting as a user or a set of roles.
    Create {
        /// Acts as this user (default: yourself).
        #[arg(long, conflicts_with = "roles")]
        user: Option<String>,
        /// Or as these roles, comma-separated, with no user behind it.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// How long it lasts (e.g. 24h); default until revoked.
        #[arg(long)]
        ttl: Option<String>,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (ids, never the tokens themselves).
    List,
    /// Revoke a token by its id (at least 8 digits) or by the token itself.
    Revoke {
        /// The id from `strata auth token list`, or the token.
        id: String,
    },
}

/// Where `strata auth login` keeps the token.
pub(crate) fn token_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("strata").join("token"))
}

/// The token client commands send: `--token` / `STRATA_TOKEN` first, then the stored one.
pub(crate) fn resolve_token(given: Option<String>) -> Option<String> {
    if let Some(token) = given.filter(|t| !t.trim().is_empty()) {
        return Some(token.trim().to_string());
    }
    let text = std::fs::read_to_string(token_path()?).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_string())
}

fn store_token(token: &str) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = token_path()
        .context("cannot tell where to store the token: set HOME or XDG_CONFIG_HOME")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    file.write_all(token.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// A password from stdin's first line, or `STRATA_PASSWORD`.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("read the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        match std::env::var("STRATA_PASSWORD") {
            Ok(p) => p,
            Err(_) => {
                bail!("give the password on stdin with --password-stdin, or in STRATA_PASSWORD")
            }
        }
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

fn seconds(text: &str) -> anyhow::Result<u64> {
    let d = crate::duration::parse("ttl", text)?;
    Ok(d.as_secs().max(1))
}

fn access(text: &str) -> anyhow::Result<&'static str> {
    Ok(
        match text.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "read" => "read",
            "write" => "write",
            "readwrite" | "rw" => "read_write",
            other => bail!("access {other:?} is not read, write or readwrite"),
        },
    )
}

fn kind(text: &str) -> anyhow::Result<&'static str> {
    Ok(match text {
        "kv" => "kv",
        "registry" => "registry",
        "config" => "config",
        "gateway" => "gateway",
        "monitor" => "monitor",
        other => bail!("kind {other:?} is not kv, registry, config, gateway or monitor"),
    })
}

fn permission(args: &PermissionArgs) -> anyhow::Result<Value> {
    Ok(json!({
        "kind": kind(&args.kind)?,
        "key": args.key,
        "range_end": args.range_end.clone().unwrap_or_default(),
        "prefix": args.prefix,
        "access": access(&args.access)?,
    }))
}

async fn call(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    client
        .call::<Value, Value>(method, path, body.as_ref())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn done(output: Output, value: &Value, message: &str) -> anyhow::Result<()> {
    match output {
        Output::Json => print(value),
        Output::Table => {
            println!("{message}");
            Ok(())
        }
    }
}

fn print<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn names(output: Output, value: &Value, header: &'static str) -> anyhow::Result<()> {
    if output == Output::Json {
        return print(value);
    }
    let mut table = Table::new(&[(header, Align::Left)]);
    for name in value["names"].as_array().into_iter().flatten() {
        table.row(vec![name.as_str().unwrap_or_default().to_string()]);
    }
    table.print();
    Ok(())
}

/// Runs `strata auth ...`.
pub async fn auth(endpoints: &[String], output: Output, cmd: AuthCommand) -> anyhow::Result<()> {
    let client = Client::new(endpoints).with_connect_timeout(Duration::from_secs(3));
    match cmd {
        AuthCommand::Login(args) => {
            let password = read_password(args.password_stdin)?;
            let ttl = seconds(&args.ttl)?;
            // A login needs no token, and a stale one must not get in the way.
            let anonymous = Client::new(endpoints)
                .with_connect_timeout(Duration::from_secs(3))
                .with_token(None);
            let body = json!({"user": args.user, "password": password, "ttl_seconds": ttl});
            let reply = call(&anonymous, Method::POST, "/v1/auth/login", Some(body)).await?;
            let token = reply["token"]
                .as_str()
                .context("the login answer has no token")?;
            let path = store_token(token)?;
            match output {
                Output::Json => print(
                    &json!({"user": args.user, "token_file": path, "expires_in_seconds": ttl}),
                ),
                Output::Table => {
                    println!(
                        "logged in as {}; token stored in {} (valid {})",
                        args.user,
                        path.display(),
                        args.ttl
                    );
                    Ok(())
                }
            }
        }
        AuthCommand::Logout => {
            if let Some(path) = token_path() {
                match std::fs::remove_file(&path) {
                    Ok(()) => println!("removed {}", path.display()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        println!("no stored token")
                    }
                    Err(e) => bail!("remove {}: {e}", path.display()),
                }
            }
            Ok(())
        }
        AuthCommand::Status => {
            let reply = call(&client, Method::GET, "/v1/auth/status", None).await?;
            let on = reply["enabled"].as_bool().unwrap_or(false);
            done(
                output,
                &reply,
                if on {
                    "access control: on"
                } else {
                    "access control: off"
                },
            )
        }
        AuthCommand::Whoami => {
            let reply = call(&client, Method::GET, "/v1/auth/whoami", None).await?;
            let message = match (reply["enabled"].as_bool(), reply["user"].as_str()) {
                (Some(false), _) => "access control is off: every request is allowed".to_string(),
                (_, Some(user)) if reply["root"].as_bool() == Some(true) => {
                    format!("{user} (root)")
                }
                (_, Some(user)) => user.to_string(),
                (_, None) => "a role token".to_string(),
            };
            done(output, &reply, &message)
        }
        AuthCommand::Enable => {
            let reply = call(&client, Method::POST, "/v1/auth/enable", Some(json!({}))).await?;
            done(output, &reply, "access control enabled")
        }
        AuthCommand::Disable => {
            let reply = call(&client, Method::POST, "/v1/auth/disable", Some(json!({}))).await?;
            done(output, &reply, "access control disabled")
        }
        AuthCommand::User(cmd) => user(&client, output, cmd).await,
        AuthCommand::Role(cmd) => role(&client, output, cmd).await,
        AuthCommand::Token(cmd) => token(&client, output, cmd).await,
    }
}

async fn user(client: &Client, output: Output, cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            password_stdin,
            no_password,
        } => {
            let password = if no_password {
                None
            } else {
                Some(read_password(password_stdin)?)
            };
            let body = json!({"name": name, "password": password});
            let reply = call(client, Method::POST, "/v1/auth/users", Some(body)).await?;
            done(output, &reply, &format!("user {name} created"))
        }
        UserCommand::List => {
            let reply = call(client, Method::GET, "/v1/auth/users", None).await?;
            names(output, &reply, "USER")
        }
        UserCommand::Get { name } => {
            let reply = call(
                client,
                Method::GET,
                &format!("/v1/auth/users/{}", seg(&name)),
                None,
            )
            .await?;
            let roles: Vec<&str> = reply["roles"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            done(
                output,
                &reply,
                &format!(
                    "user {name}\nroles: {}",
                    if roles.is_empty() {
                        "(none)".to_string()
                    } else {
                        roles.join(", ")
                    }
                ),
            )
        }
        UserCommand::Delete { name } => {
            let reply = call(
                client,
                Method::DELETE,
                &format!("/v1/auth/users/{}", seg(&name)),
                None,
            )
            .await?;
            done(output, &reply, &format!("user {name} deleted"))
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            let path = format!("/v1/auth/users/{}/password", seg(&name));
            let reply = call(
                client,
                Method::POST,
                &path,
                Some(json!({"password": password})),
            )
            .await?;
            done(output, &reply, &format!("password of {name} changed"))
        }
        UserCommand::Grant { name, role } => {
            let path = format!("/v1/auth/users/{}/roles", seg(&name));
            let reply = call(client, Method::POST, &path, Some(json!({"role": role}))).await?;
            done(output, &reply, &format!("role {role} granted to {name}"))
        }
        UserCommand::Revoke { name, role } => {
            let path = format!("/v1/auth/users/{}/roles/{}", seg(&name), seg(&role));
            let reply = call(client, Method::DELETE, &path, None).await?;
            done(output, &reply, &format!("role {role} revoked from {name}"))
        }
    }
}

async fn role(client: &Client, output: Output, cmd: RoleCommand) -> anyhow::Result<()> {
    match cmd {
        RoleCommand::Add { name } => {
            let reply = call(
                client,
                Method::POST,
                "/v1/auth/roles",
                Some(json!({"name": name})),
            )
            .await?;
            done(output, &reply, &format!("role {name} created"))
        }
        RoleCommand::List => {
            let reply = call(client, Method::GET, "/v1/auth/roles", None).await?;
            names(output, &reply, "ROLE")
        }
        RoleCommand::Get { name } => {
            let reply = call(
                client,
                Method::GET,
                &format!("/v1/auth/roles/{}", seg(&name)),
                None,
            )
            .await?;
            if output == Output::Json {
                return print(&reply);
            }
            println!("role {name}");
            let mut table = Table::new(&[
                ("KIND", Align::Left),
                ("NAMES", Align::Left),
                ("ACCESS", Align::Left),
            ]);
            for p in reply["permissions"].as_array().into_iter().flatten() {
                let key = p["key"].as_str().unwrap_or_default();
                let names = if p["prefix"].as_bool() == Some(true) {
                    format!("{key}*")
                } else {
                    match p["range_end"].as_str() {
                        Some("\u{0}") => format!("{key}.."),
                        Some(end) if !end.is_empty() => format!("[{key}, {end})"),
                        _ => key.to_string(),
                    }
                };
                table.row(vec![
                    p["kind"].as_str().unwrap_or_default().to_string(),
                    names,
                    p["access"].as_str().unwrap_or_default().replace('_', ""),
                ]);
            }
            table.print();
            Ok(())
        }
        RoleCommand::Delete { name } => {
            let reply = call(
                client,
                Method::DELETE,
                &format!("/v1/auth/roles/{}", seg(&name)),
                None,
            )
            .await?;
            done(output, &reply, &format!("role {name} deleted"))
        }
        RoleCommand::Grant(args) => {
            let path = format!("/v1/auth/roles/{}/grant", seg(&args.name));
            let reply = call(client, Method::POST, &path, Some(permission(&args)?)).await?;
            done(
                output,
                &reply,
                &format!(
                    "role {} may now {} {} {}",
                    args.name,
                    args.access,
                    args.kind,
                    shown(&args)
                ),
            )
        }
        RoleCommand::Revoke(args) => {
            let path = format!("/v1/auth/roles/{}/revoke", seg(&args.name));
            let reply = call(client, Method::POST, &path, Some(permission(&args)?)).await?;
            done(
                output,
                &reply,
                &format!(
                    "permission over {} {} revoked from role {}",
                    args.kind,
                    shown(&args),
                    args.name
                ),
            )
        }
    }
}

fn shown(args: &PermissionArgs) -> String {
    if args.prefix {
        format!("{}*", args.key)
    } else {
        match &args.range_end {
            Some(end) => format!("[{}, {end})", args.key),
            None => args.key.clone(),
        }
    }
}

async fn token(client: &Client, output: Output, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            user,
            roles,
            ttl,
            description,
        } => {
            let ttl_seconds = ttl.as_deref().map(seconds).transpose()?;
            let body = json!({"user": user, "roles": roles, "ttl_seconds": ttl_seconds, "description": description});
            let reply = call(client, Method::POST, "/v1/auth/tokens", Some(body)).await?;
            match output {
                Output::Json => print(&reply),
                Output::Table => {
                    // The token alone on stdout, so `TOKEN=$(strata auth token create ...)` works.
                    println!("{}", reply["token"].as_str().unwrap_or_default());
                    Ok(())
                }
            }
        }
        TokenCommand::List => {
            let reply = call(client, Method::GET, "/v1/auth/tokens", None).await?;
            if output == Output::Json {
                return print(&reply);
            }
            let mut table = Table::new(&[
                ("ID", Align::Left),
                ("ACTS AS", Align::Left),
                ("EXPIRES", Align::Left),
                ("DESCRIPTION", Align::Left),
            ]);
            for t in reply["tokens"].as_array().into_iter().flatten() {
                let owner = if let Some(user) = t["owner"]["user"].as_str() {
                    format!("user {user}")
                } else {
                    let roles: Vec<&str> = t["owner"]["roles"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    format!("roles {}", roles.join(","))
                };
                let expires = match t["expires_at_ms"].as_u64() {
                    Some(ms) => humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_millis(ms),
                    )
                    .to_string(),
                    None => "never".to_string(),
                };
                table.row(vec![
                    t["id"].as_str().unwrap_or_default().to_string(),
                    owner,
                    expires,
                    t["description"].as_str().unwrap_or_default().to_string(),
                ]);
            }
            table.print();
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            let reply = call(
                client,
                Method::DELETE,
                &format!("/v1/auth/tokens/{}", seg(&id)),
                None,
            )
            .await?;
            done(output, &reply, "token revoked")
        }
    }
}

/// A path segment with everything but unreserved characters percent-encoded.
fn seg(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
