//! Accounts, sessions and API keys on SQLite.

use super::{outbox, SqliteStore};
use crate::domain::{ApiKeyId, Email, FullName, Role, SessionId, UserId};
use crate::store::{
    from_millis, to_millis, Announce, ApiKeyRecord, NewUser, SessionRecord, StoreError, User,
    UserCredentials, UserStore,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

const USER_COLUMNS: &str = "id, email, full_name, role, created_at, password_hash";
const KEY_COLUMNS: &str =
    "id, user_id, name, prefix, key_hash, created_at, last_used_at, expires_at, revoked_at";

fn user_from_row(row: &SqliteRow) -> Result<User, StoreError> {
    Ok(User {
        id: UserId::parse(row.try_get("id")?)?,
        email: Email::parse(row.try_get("email")?)?,
        full_name: FullName::parse(row.try_get("full_name")?)?,
        role: Role::parse(row.try_get("role")?)?,
        created_at: from_millis(row.try_get("created_at")?),
    })
}

fn session_from_row(row: &SqliteRow) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        id: SessionId::parse(row.try_get("id")?)?,
        user_id: UserId::parse(row.try_get("user_id")?)?,
        created_at: from_millis(row.try_get("created_at")?),
        expires_at: from_millis(row.try_get("expires_at")?),
        revoked_at: row
            .try_get::<Option<i64>, _>("revoked_at")?
            .map(from_millis),
    })
}

fn key_from_row(row: &SqliteRow) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        id: ApiKeyId::parse(row.try_get("id")?)?,
        user_id: UserId::parse(row.try_get("user_id")?)?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        key_hash: row.try_get("key_hash")?,
        created_at: from_millis(row.try_get("created_at")?),
        last_used_at: row
            .try_get::<Option<i64>, _>("last_used_at")?
            .map(from_millis),
        expires_at: row
            .try_get::<Option<i64>, _>("expires_at")?
            .map(from_millis),
        revoked_at: row
            .try_get::<Option<i64>, _>("revoked_at")?
            .map(from_millis),
    })
}

#[async_trait]
impl UserStore for SqliteStore {
    #[tracing::instrument(skip_all)]
    async fn create_user(&self, new: NewUser) -> Result<User, StoreError> {
        let id = UserId::new();
        let now = to_millis(Utc::now());
        // The role is decided inside the INSERT so that two first sign-ups racing on an
        // empty database cannot both become admin (SQLite runs one writer at a time).
        let row = sqlx::query(&format!(
            "INSERT INTO users (id, email, full_name, password_hash, role, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4,
                     COALESCE(?5, CASE WHEN EXISTS (SELECT 1 FROM users) THEN 'user' ELSE 'admin' END),
                     ?6, ?6)
             RETURNING {USER_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(new.email.as_str())
        .bind(new.full_name.as_str())
        .bind(&new.password_hash)
        .bind(new.role.map(Role::as_str))
        .bind(now)
        .fetch_one(self.pool())
        .await?;
        user_from_row(&row)
    }

    async fn user_by_id(&self, id: UserId) -> Result<User, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_one(self.reader())
            .await?;
        user_from_row(&row)
    }

    async fn user_credentials(&self, email: &Email) -> Result<UserCredentials, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = ?1"
        ))
        .bind(email.as_str())
        .fetch_one(self.reader())
        .await?;
        Ok(UserCredentials {
            user: user_from_row(&row)?,
            password_hash: row.try_get("password_hash")?,
        })
    }

    async fn update_full_name(&self, id: UserId, name: &FullName) -> Result<User, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE users SET full_name = ?2, updated_at = ?3 WHERE id = ?1 RETURNING {USER_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(name.as_str())
        .bind(to_millis(Utc::now()))
        .fetch_one(self.pool())
        .await?;
        user_from_row(&row)
    }

    async fn set_password_hash(&self, id: UserId, hash: &str) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE users SET password_hash = ?2, updated_at = ?3 WHERE id = ?1")
                .bind(id.to_string())
                .bind(hash)
                .bind(to_millis(Utc::now()))
                .execute(self.pool())
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn set_role(&self, email: &Email, role: Role) -> Result<User, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE users SET role = ?2, updated_at = ?3 WHERE email = ?1 RETURNING {USER_COLUMNS}"
        ))
        .bind(email.as_str())
        .bind(role.as_str())
        .bind(to_millis(Utc::now()))
        .fetch_one(self.pool())
        .await?;
        user_from_row(&row)
    }

    async fn user_exists(&self, id: UserId) -> Result<bool, StoreError> {
        let found = sqlx::query("SELECT 1 FROM users WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(self.reader())
            .await?;
        Ok(found.is_some())
    }

    async fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id, user_id, created_at, expires_at, revoked_at)
             VALUES (?1, ?2, ?3, ?4, NULL)",
        )
        .bind(session.id.to_string())
        .bind(session.user_id.to_string())
        .bind(to_millis(session.created_at))
        .bind(to_millis(session.expires_at))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn session(&self, id: SessionId) -> Result<SessionRecord, StoreError> {
        let row = sqlx::query(
            "SELECT id, user_id, created_at, expires_at, revoked_at FROM sessions WHERE id = ?1",
        )
        .bind(id.to_string())
        .fetch_one(self.reader())
        .await?;
        session_from_row(&row)
    }

    async fn revoke_session(&self, id: SessionId, at: DateTime<Utc>) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")
                .bind(id.to_string())
                .bind(to_millis(at))
                .execute(self.pool())
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn revoke_other_sessions(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        at: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError> {
        let rows = sqlx::query(
            "UPDATE sessions SET revoked_at = ?3
             WHERE user_id = ?1 AND revoked_at IS NULL AND id IS NOT ?2
             RETURNING id",
        )
        .bind(user.to_string())
        .bind(keep.map(|k| k.to_string()))
        .bind(to_millis(at))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| Ok(SessionId::parse(row.try_get("id")?)?))
            .collect()
    }

    async fn create_api_key(
        &self,
        key: &ApiKeyRecord,
        announce: Announce<'_, ApiKeyRecord>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ))
        .bind(key.id.to_string())
        .bind(key.user_id.to_string())
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(&key.key_hash)
        .bind(to_millis(key.created_at))
        .bind(key.last_used_at.map(to_millis))
        .bind(key.expires_at.map(to_millis))
        .bind(key.revoked_at.map(to_millis))
        .execute(&mut *tx)
        .await?;
        outbox::write(&mut tx, &announce(key)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<ApiKeyRecord, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?1"
        ))
        .bind(hash)
        .fetch_one(self.reader())
        .await?;
        key_from_row(&row)
    }

    async fn touch_api_key(&self, id: ApiKeyId, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1")
            .bind(id.to_string())
            .bind(to_millis(at))
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn list_api_keys(&self, user: UserId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = ?1 AND revoked_at IS NULL
             ORDER BY created_at DESC, id DESC"
        ))
        .bind(user.to_string())
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        at: DateTime<Utc>,
        announce: Announce<'_, ApiKeyRecord>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE api_keys SET revoked_at = ?3
              WHERE id = ?1 AND user_id = ?2 AND revoked_at IS NULL
             RETURNING {KEY_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(user.to_string())
        .bind(to_millis(at))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound);
        };
        outbox::write(&mut tx, &announce(&key_from_row(&row)?)).await?;
        tx.commit().await?;
        Ok(())
    }
}
