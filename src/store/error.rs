//! Typed store errors; the HTTP layer turns them into client errors in one place.

/// What can go wrong in the store, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken (for example a taken email).
    #[error("conflict on {constraint}")]
    Conflict { constraint: String },
    /// A row held a value the domain types refuse: the database was edited by hand or
    /// written by a newer version.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict {
                constraint: db.constraint().unwrap_or(db.message()).to_owned(),
            },
            _ => StoreError::Database(err),
        }
    }
}

impl From<crate::domain::ParseError> for StoreError {
    fn from(err: crate::domain::ParseError) -> Self {
        StoreError::Corrupt(err.0)
    }
}
