//! Task fields: status, priority, capability, query text, timeout, attempts, idempotency
//! key and how an attempt ended.

use super::ParseError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a task is in its life. `queued → running → completed | failed`, and `canceled`
/// from `queued` or `running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Canceled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Canceled => "canceled",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| {
                ParseError::new(
                    "status must be one of queued, running, completed, failed, canceled",
                )
            })
    }

    /// A finished task never changes again.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Canceled
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Queue order: critical before high before normal before low.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Critical,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    /// Numeric rank stored beside the task so the queue can sort on it (higher first).
    pub fn rank(self) -> i64 {
        match self {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High => 2,
            Priority::Critical => 3,
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "low" => Ok(Priority::Low),
            "normal" => Ok(Priority::Normal),
            "high" => Ok(Priority::High),
            "critical" => Ok(Priority::Critical),
            _ => Err(ParseError::new(
                "priority must be one of low, normal, high, critical",
            )),
        }
    }
}

/// A capability an agent offers and a task asks for: `^[a-z0-9][a-z0-9_.-]{0,63}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Capability(String);

impl Capability {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let cap = raw.trim().to_lowercase();
        let mut chars = cap.chars();
        let valid = cap.len() <= 64
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c));
        if valid {
            Ok(Self(cap))
        } else {
            Err(ParseError::new(
                "capability must be 1-64 characters of a-z, 0-9, '_', '.', '-'",
            ))
        }
    }

    /// The capability a task gets when it names none.
    pub fn general() -> Self {
        Self("general".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text of a task: 1 to 10 000 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TaskQuery(String);

impl TaskQuery {
    pub const MAX_CHARS: usize = 10_000;

    pub fn parse(raw: String) -> Result<Self, ParseError> {
        let chars = raw.chars().count();
        if raw.trim().is_empty() {
            return Err(ParseError::new("query must not be empty"));
        }
        if chars > Self::MAX_CHARS {
            return Err(ParseError::new("query must be at most 10000 characters"));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// How long a task may run before it fails: 1 to 3600 seconds, 300 by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TimeoutSecs(u32);

impl TimeoutSecs {
    pub const DEFAULT: TimeoutSecs = TimeoutSecs(300);
    const MAX: i64 = 3600;

    pub fn parse(raw: i64) -> Result<Self, ParseError> {
        if (1..=Self::MAX).contains(&raw) {
            Ok(Self(raw as u32))
        } else {
            Err(ParseError::new("timeout_s must be between 1 and 3600"))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// How many attempts a task may make: 1 to 10, 3 by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MaxAttempts(u32);

impl MaxAttempts {
    pub const DEFAULT: MaxAttempts = MaxAttempts(3);

    pub fn parse(raw: i64) -> Result<Self, ParseError> {
        if (1..=10).contains(&raw) {
            Ok(Self(raw as u32))
        } else {
            Err(ParseError::new("max_attempts must be between 1 and 10"))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// A submitter's idempotency key: 1 to 200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: String) -> Result<Self, ParseError> {
        let chars = raw.chars().count();
        if chars == 0 || chars > 200 || raw.chars().any(char::is_control) {
            return Err(ParseError::new(
                "idempotency_key must be 1-200 characters without control characters",
            ));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How one attempt at a task ended (or that it is still running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Running,
    Completed,
    Failed,
    LeaseExpired,
    HandedBack,
    Canceled,
    TimedOut,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 7] = [
        AttemptOutcome::Running,
        AttemptOutcome::Completed,
        AttemptOutcome::Failed,
        AttemptOutcome::LeaseExpired,
        AttemptOutcome::HandedBack,
        AttemptOutcome::Canceled,
        AttemptOutcome::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Running => "running",
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::LeaseExpired => "lease_expired",
            AttemptOutcome::HandedBack => "handed_back",
            AttemptOutcome::Canceled => "canceled",
            AttemptOutcome::TimedOut => "timed_out",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str() == raw)
            .ok_or_else(|| ParseError::new(format!("unknown attempt outcome {raw:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()).unwrap(), s);
        }
        assert!(TaskStatus::parse("done").is_err());
    }

    #[test]
    fn priority_orders_critical_first() {
        assert!(Priority::Critical.rank() > Priority::High.rank());
        assert!(Priority::High.rank() > Priority::Normal.rank());
        assert!(Priority::Normal.rank() > Priority::Low.rank());
    }

    #[test]
    fn capability_rules() {
        assert_eq!(Capability::parse("Text").unwrap().as_str(), "text");
        assert!(Capability::parse("").is_err());
        assert!(Capability::parse("a b").is_err());
        assert!(Capability::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn query_and_timeout_bounds() {
        assert!(TaskQuery::parse(" ".into()).is_err());
        assert!(TaskQuery::parse("x".repeat(10_001)).is_err());
        assert!(TaskQuery::parse("x".repeat(10_000)).is_ok());
        assert!(TimeoutSecs::parse(0).is_err());
        assert!(TimeoutSecs::parse(3601).is_err());
        assert_eq!(TimeoutSecs::parse(3600).unwrap().get(), 3600);
    }

    #[test]
    fn execution_fields() {
        assert!(MaxAttempts::parse(0).is_err() && MaxAttempts::parse(11).is_err());
        assert_eq!(MaxAttempts::parse(10).unwrap().get(), 10);
        assert!(IdempotencyKey::parse(String::new()).is_err());
        assert!(IdempotencyKey::parse("k".repeat(201)).is_err());
        assert!(IdempotencyKey::parse("a\nb".into()).is_err());
        assert!(IdempotencyKey::parse("é".repeat(200)).is_ok());
        for o in AttemptOutcome::ALL {
            assert_eq!(AttemptOutcome::parse(o.as_str()).unwrap(), o);
        }
    }
}
