//! Users, their roles, organizations and API tokens: the SQL.
//!
//! Owns user, role, organization and token rows. The prebuilds system user is created by
//! the first migration and is never modified here. Token secrets are never stored: only
//! their SHA-256, compared in constant time.

use crate::domain::TextEnum;
use crate::store::CachedStatements;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::auth::{Role, Subject};
use crate::store::StoreError;
use crate::store::time::{from_millis, to_millis};

/// The prefix of every token workspaced issues (`wsd_<id>_<secret>`), so a leaked one is
/// recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "wsd_";

/// Last-use times closer together than this are not written again.
const TOKEN_TOUCH_COALESCE_MS: i64 = 60_000;

/// Inserts an active user; returns its id.
pub fn insert(conn: &Connection, username: &str, now: DateTime<Utc>) -> Result<String, StoreError> {
    let id = uuid::Uuid::new_v4().to_string();
    conn.execute_cached(
        "INSERT INTO users (id, username, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
        params![id, username, to_millis(now)],
    )?;
    Ok(id)
}

/// The id of the user named `username`.
pub fn id_by_name(conn: &Connection, username: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row_cached("SELECT id FROM users WHERE username = ?1", [username], |row| row.get(0))
        .optional()?)
}

/// Grants `role` in `organization_id` (no-op when already held).
pub fn grant(
    conn: &Connection,
    user_id: &str,
    organization_id: &str,
    role: Role,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "INSERT OR IGNORE INTO user_roles (user_id, organization_id, role, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![user_id, organization_id, role.as_str(), to_millis(now)],
    )?;
    Ok(())
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub id: String,
    pub username: String,
    pub status: String,
    pub roles: Vec<RoleInfo>,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleInfo {
    pub organization_id: String,
    pub organization: String,
    pub role: String,
}

/// Every human user (the system user excluded), by name.
pub fn list(
    conn: &Connection,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<UserInfo>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, username, status, created_at FROM users
          WHERE is_system = 0 AND (?1 IS NULL OR username > ?1) ORDER BY username LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map(params![after, limit], |row| {
        Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?, row.get::<_, i64>(3)?))
    })?;
    let mut users = Vec::new();
    for row in rows {
        let (id, username, status, created_at) = row?;
        let roles = roles_info(conn, &id)?;
        users.push(UserInfo { id, username, status, roles, created_at: rfc3339(created_at) });
    }
    Ok(users)
}

/// One user by id or name.
pub fn get(conn: &Connection, id_or_name: &str) -> Result<Option<UserInfo>, StoreError> {
    let row: Option<(String, String, String, i64)> = conn
        .query_row_cached(
            "SELECT id, username, status, created_at FROM users
              WHERE (id = ?1 OR username = ?1) AND is_system = 0",
            [id_or_name],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .optional()?;
    let Some((id, username, status, created_at)) = row else { return Ok(None) };
    let roles = roles_info(conn, &id)?;
    Ok(Some(UserInfo { id, username, status, roles, created_at: rfc3339(created_at) }))
}

fn roles_info(conn: &Connection, user_id: &str) -> Result<Vec<RoleInfo>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT r.organization_id, o.name, r.role FROM user_roles r
           JOIN organizations o ON o.id = r.organization_id
          WHERE r.user_id = ?1 ORDER BY o.name, r.role",
    )?;
    let rows = statement.query_map([user_id], |row| {
        Ok(RoleInfo { organization_id: row.get(0)?, organization: row.get(1)?, role: row.get(2)? })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn rfc3339(millis: i64) -> String {
    from_millis(millis).map(|time| time.to_rfc3339()).unwrap_or_default()
}

/// An organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

pub fn organizations(conn: &Connection) -> Result<Vec<Organization>, StoreError> {
    let mut statement =
        conn.prepare_cached("SELECT id, name, created_at FROM organizations ORDER BY name")?;
    let rows = statement.query_map([], |row| {
        Ok(Organization { id: row.get(0)?, name: row.get(1)?, created_at: rfc3339(row.get(2)?) })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The organization with this id or name.
pub fn organization(
    conn: &Connection,
    id_or_name: &str,
) -> Result<Option<Organization>, StoreError> {
    Ok(conn
        .query_row_cached(
            "SELECT id, name, created_at FROM organizations WHERE id = ?1 OR name = ?1",
            [id_or_name],
            |row| {
                Ok(Organization {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    created_at: rfc3339(row.get(2)?),
                })
            },
        )
        .optional()?)
}

/// A freshly issued token: `secret` is shown once and never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedToken {
    pub id: String,
    pub token: String,
    pub expires_at: Option<String>,
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// The longest lifetime a token may be issued with (`--expires`, `expires_in`): 10 years.
pub const MAX_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3650 * 86_400);

/// Issues a token for `user_id`, valid until `expires_at` (`None` = until revoked).
pub fn create_token(
    conn: &Connection,
    user_id: &str,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<IssuedToken, StoreError> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    // Two v4 UUIDs: 244 bits from the OS's CSPRNG.
    let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    conn.execute_cached(
        "INSERT INTO api_tokens (id, user_id, name, hashed_secret, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, user_id, name, hash(&secret), to_millis(now), expires_at.map(to_millis)],
    )?;
    Ok(IssuedToken {
        token: format!("{TOKEN_PREFIX}{id}_{secret}"),
        id,
        expires_at: expires_at.map(|time| time.to_rfc3339()),
    })
}

/// Why a presented token was refused (logged, never told to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Malformed,
    Unknown,
    WrongSecret,
    Expired,
    Revoked,
    UserNotActive,
}

/// An accepted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub subject: Subject,
    pub token_id: String,
    /// Whether `last_used_at` is old enough to be written again (`touch_token`).
    pub needs_touch: bool,
}

/// Checks a presented `wsd_<id>_<secret>` token: known id, matching secret (constant-time),
/// not expired, not revoked, active user. Reads only.
pub fn authenticate(
    conn: &Connection,
    presented: &str,
    now: DateTime<Utc>,
) -> Result<Result<Authenticated, Refused>, StoreError> {
    let Some((id, secret)) =
        presented.strip_prefix(TOKEN_PREFIX).and_then(|rest| rest.split_once('_'))
    else {
        return Ok(Err(Refused::Malformed));
    };
    type TokenRow = (String, Vec<u8>, Option<i64>, Option<i64>, Option<i64>, String, String);
    let row: Option<TokenRow> = conn
        .query_row_cached(
            "SELECT t.user_id, t.hashed_secret, t.expires_at, t.revoked_at, t.last_used_at,
                    u.username, u.status
               FROM api_tokens t JOIN users u ON u.id = t.user_id
              WHERE t.id = ?1",
            [id],
            |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get(6)?,
                ))
            },
        )
        .optional()?;
    let Some((user_id, stored, expires_at, revoked_at, last_used_at, username, status)) = row
    else {
        return Ok(Err(Refused::Unknown));
    };
    if !constant_time_eq(&hash(secret), &stored) {
        return Ok(Err(Refused::WrongSecret));
    }
    let now_ms = to_millis(now);
    if revoked_at.is_some() {
        return Ok(Err(Refused::Revoked));
    }
    if expires_at.is_some_and(|expires| expires <= now_ms) {
        return Ok(Err(Refused::Expired));
    }
    if status != "active" {
        return Ok(Err(Refused::UserNotActive));
    }
    let mut statement =
        conn.prepare_cached("SELECT organization_id, role FROM user_roles WHERE user_id = ?1")?;
    let rows = statement
        .query_map([&user_id], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
    let mut roles = Vec::new();
    for row in rows {
        let (organization, role) = row?;
        if let Some(role) = Role::parse(&role) {
            roles.push((organization, role));
        }
    }
    Ok(Ok(Authenticated {
        subject: Subject { user_id, username, roles },
        token_id: id.to_owned(),
        needs_touch: last_used_at.is_none_or(|last| now_ms - last >= TOKEN_TOUCH_COALESCE_MS),
    }))
}

/// Records a token's use (coalesced by the caller through `needs_touch`).
pub fn touch_token(conn: &Connection, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    conn.execute_cached(
        "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
        params![id, to_millis(now)],
    )?;
    Ok(())
}

/// Equal length and equal bytes, in time independent of where they differ.
pub fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    // Constant time in the contents; lengths are public (both are SHA-256 digests).
    bool::from(subtle::ConstantTimeEq::ct_eq(left, right))
}

/// A token as listings show it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub user_id: String,
    pub username: String,
    pub name: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
}

/// Tokens, newest first; only `user_id`'s when given.
pub fn list_tokens(
    conn: &Connection,
    user_id: Option<&str>,
    limit: usize,
) -> Result<Vec<TokenInfo>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT t.id, t.user_id, u.username, t.name, t.created_at, t.expires_at, t.revoked_at, t.last_used_at
           FROM api_tokens t JOIN users u ON u.id = t.user_id
          WHERE ?1 IS NULL OR t.user_id = ?1
          ORDER BY t.created_at DESC, t.id LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement.query_map(params![user_id, limit], |row| {
        let optional = |index| row.get::<_, Option<i64>>(index).map(|value| value.map(rfc3339));
        Ok(TokenInfo {
            id: row.get(0)?,
            user_id: row.get(1)?,
            username: row.get(2)?,
            name: row.get(3)?,
            created_at: rfc3339(row.get(4)?),
            expires_at: optional(5)?,
            revoked_at: optional(6)?,
            last_used_at: optional(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The user a token belongs to.
pub fn token_owner(conn: &Connection, id: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row_cached("SELECT user_id FROM api_tokens WHERE id = ?1", [id], |row| row.get(0))
        .optional()?)
}

/// Revokes a token; false when there is no such token (revoking twice is fine).
pub fn revoke_token(conn: &Connection, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let exists = token_owner(conn, id)?.is_some();
    conn.execute_cached(
        "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        params![id, to_millis(now)],
    )?;
    Ok(exists)
}

/// Sets a human user's status (`active` or `suspended`); false when there is no such user.
/// A suspended user's tokens stop working at once (`authenticate` checks the status) and
/// the lifecycle stops their started workspaces.
pub fn set_status(
    conn: &Connection,
    id: &str,
    status: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    Ok(conn.execute_cached(
        "UPDATE users SET status = ?2, updated_at = ?3 WHERE id = ?1 AND is_system = 0",
        params![id, status, to_millis(now)],
    )? == 1)
}

/// Replaces the user's roles in one organization with `roles`.
pub fn set_roles(
    conn: &Connection,
    user_id: &str,
    organization_id: &str,
    roles: &[Role],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "DELETE FROM user_roles WHERE user_id = ?1 AND organization_id = ?2",
        params![user_id, organization_id],
    )?;
    for role in roles {
        grant(conn, user_id, organization_id, *role, now)?;
    }
    Ok(())
}

/// Live workspaces the user owns (a user with any cannot be deleted).
pub fn live_workspaces(conn: &Connection, user_id: &str) -> Result<i64, StoreError> {
    Ok(conn.query_row_cached(
        "SELECT COUNT(*) FROM workspaces WHERE owner_id = ?1 AND deleted = 0",
        [user_id],
        |row| row.get(0),
    )?)
}

/// Deletes a user: the row stays (builds and audit entries name it), its tokens are
/// revoked, its roles dropped, its status suspended and its name freed for reuse
/// (`deleted-<id>-<name>`).
pub fn retire(conn: &Connection, user_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    let now = to_millis(now);
    conn.execute_cached(
        "UPDATE api_tokens SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
        params![user_id, now],
    )?;
    conn.execute_cached("DELETE FROM user_roles WHERE user_id = ?1", [user_id])?;
    conn.execute_cached(
        "UPDATE users SET status = 'suspended', username = 'deleted-' || id || '-' || username,
                updated_at = ?2 WHERE id = ?1 AND is_system = 0",
        params![user_id, now],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
