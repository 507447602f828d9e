//! Users: accounts, roles, tiers, activation.

use sqlx::FromRow;

use super::{Store, StoreError, parse_column};
use crate::domain::{Email, Role, Tier, now_ms};

/// A user as the rest of the gateway sees it.
#[derive(Clone, Debug)]
pub struct User {
    /// Stable id (UUIDv7).
    pub id: String,
    /// Normalised login e-mail.
    pub email: String,
    /// Display name.
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// What the user may do.
    pub role: Role,
    /// The plan deciding quotas.
    pub tier: Tier,
    /// Set when an administrator deactivated the account; such users cannot log in.
    pub deactivated_at: Option<i64>,
    /// Access tokens carry the generation they were issued under; bumping it (password change,
    /// deactivation) makes every outstanding access token invalid at once.
    pub token_generation: i64,
    /// Last successful login.
    pub last_login_at: Option<i64>,
    /// Creation instant.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
}

impl User {
    /// Whether the account may be used.
    pub fn is_active(&self) -> bool {
        self.deactivated_at.is_none()
    }
}

#[derive(FromRow)]
struct UserRow {
    id: String,
    email: String,
    name: String,
    password_hash: String,
    role: String,
    tier: String,
    deactivated_at: Option<i64>,
    token_generation: i64,
    last_login_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<UserRow> for User {
    type Error = StoreError;
    fn try_from(row: UserRow) -> Result<Self, StoreError> {
        Ok(User {
            role: parse_column("users.role", &row.role)?,
            tier: parse_column("users.tier", &row.tier)?,
            id: row.id,
            email: row.email,
            name: row.name,
            password_hash: row.password_hash,
            deactivated_at: row.deactivated_at,
            token_generation: row.token_generation,
            last_login_at: row.last_login_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

const USER_COLUMNS: &str = "id, email, name, password_hash, role, tier, deactivated_at, \
    token_generation, last_login_at, created_at, updated_at";

/// What registering (or `admin create-user`) needs.
#[derive(Debug)]
pub struct NewUser<'a> {
    /// Login e-mail.
    pub email: &'a Email,
    /// Display name.
    pub name: &'a str,
    /// Already-hashed password.
    pub password_hash: &'a str,
    /// Role of the new account.
    pub role: Role,
    /// Tier of the new account.
    pub tier: Tier,
}

/// An administrator's change to a user; `None` leaves a field alone.
#[derive(Debug, Default)]
pub struct UserUpdate {
    /// New display name.
    pub name: Option<String>,
    /// New tier.
    pub tier: Option<Tier>,
    /// New role.
    pub role: Option<Role>,
    /// `Some(false)` deactivates (and kills outstanding tokens), `Some(true)` reactivates.
    pub active: Option<bool>,
}

/// Paging and search over users (admin list).
#[derive(Debug)]
pub struct UserListQuery {
    /// Case-insensitive substring of e-mail or name.
    pub search: Option<String>,
    /// 1-based page.
    pub page: u32,
    /// Page size (1..=100).
    pub per_page: u32,
}

/// One page of users plus the total matching count.
#[derive(Debug)]
pub struct UserPage {
    /// The users on this page, newest first.
    pub users: Vec<User>,
    /// How many users match the search in total.
    pub total: i64,
}

impl Store {
    /// Creates a user; `Conflict` when the e-mail is taken.
    pub async fn insert_user(&self, new: NewUser<'_>) -> Result<User, StoreError> {
        let now = now_ms();
        let id = crate::domain::new_id();
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, role, tier, token_generation, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $7)",
        )
        .bind(&id)
        .bind(new.email.as_str())
        .bind(new.name)
        .bind(new.password_hash)
        .bind(new.role.as_str())
        .bind(new.tier.as_str())
        .bind(now)
        .execute(self.pool())
        .await
        .map_err(|e| StoreError::from_sqlx(e, "email already registered"))?;
        self.user_by_id(&id).await
    }

    /// A user by id.
    pub async fn user_by_id(&self, id: &str) -> Result<User, StoreError> {
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.ok_or(StoreError::NotFound)?.try_into()
    }

    /// A user by (normalised) e-mail.
    pub async fn user_by_email(&self, email: &Email) -> Result<User, StoreError> {
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
        )))
        .bind(email.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.ok_or(StoreError::NotFound)?.try_into()
    }

    /// Records a successful login.
    pub async fn touch_user_login(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET last_login_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Changes the user's own name (profile update).
    pub async fn update_user_name(&self, id: &str, name: &str) -> Result<User, StoreError> {
        let done = sqlx::query("UPDATE users SET name = $1, updated_at = $2 WHERE id = $3")
            .bind(name)
            .bind(now_ms())
            .bind(id)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.user_by_id(id).await
    }

    /// Replaces the password hash and invalidates every access token issued before now.
    pub async fn update_user_password(
        &self,
        id: &str,
        password_hash: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE users SET password_hash = $1, token_generation = token_generation + 1, updated_at = $2 \
             WHERE id = $3",
        )
        .bind(password_hash)
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Invalidates every outstanding access token of the user (logout everywhere).
    pub async fn bump_token_generation(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET token_generation = token_generation + 1, updated_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Applies an administrator's update.
    pub async fn admin_update_user(
        &self,
        id: &str,
        update: &UserUpdate,
    ) -> Result<User, StoreError> {
        let current = self.user_by_id(id).await?;
        let now = now_ms();
        let name = update.name.clone().unwrap_or(current.name);
        let tier = update.tier.unwrap_or(current.tier);
        let role = update.role.unwrap_or(current.role);
        let (deactivated_at, token_generation) = match update.active {
            Some(false) if current.deactivated_at.is_none() => {
                (Some(now), current.token_generation + 1)
            }
            Some(false) => (current.deactivated_at, current.token_generation),
            Some(true) => (None, current.token_generation),
            None => (current.deactivated_at, current.token_generation),
        };
        sqlx::query(
            "UPDATE users SET name = $1, tier = $2, role = $3, deactivated_at = $4, token_generation = $5, \
             updated_at = $6 WHERE id = $7",
        )
        .bind(&name)
        .bind(tier.as_str())
        .bind(role.as_str())
        .bind(deactivated_at)
        .bind(token_generation)
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        self.user_by_id(id).await
    }

    /// Lists users, newest first, with optional search.
    pub async fn list_users(&self, query: &UserListQuery) -> Result<UserPage, StoreError> {
        let per_page = i64::from(query.per_page.clamp(1, 100));
        let offset = i64::from(query.page.max(1) - 1) * per_page;
        let pattern = query
            .search
            .as_deref()
            .map(|s| format!("%{}%", escape_like(&s.to_lowercase())));
        let filter =
            "($1 IS NULL OR LOWER(email) LIKE $1 ESCAPE '\\' OR LOWER(name) LIKE $1 ESCAPE '\\')";
        let rows: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE {filter} ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
        )))
        .bind(pattern.as_deref())
        .bind(per_page)
        .bind(offset)
        .fetch_all(self.pool())
        .await?;
        let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM users WHERE {filter}"
        )))
        .bind(pattern.as_deref())
        .fetch_one(self.pool())
        .await?;
        let users = rows
            .into_iter()
            .map(User::try_from)
            .collect::<Result<_, _>>()?;
        Ok(UserPage { users, total })
    }
}

/// Escapes LIKE wildcards so a search for `50%` matches literally.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
