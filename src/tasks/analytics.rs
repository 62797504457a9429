//! The analytics summary: task counts, success rate, throughput, duration percentiles,
//! a time series and the busiest agents over a window, computed from stored tasks.
//! The arithmetic is a pure function (`summarize`) so it can be tested without a server;
//! every ratio has a defined value for an empty window (0 or null, never NaN).

use crate::domain::{AgentId, ParseError, TaskStatus};
use crate::store::TaskStat;
use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// The windows the summary offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Hour,
    Day,
    Week,
}

impl Window {
    /// `1h`, `24h` or `7d`; anything else is refused.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "1h" => Ok(Window::Hour),
            "24h" => Ok(Window::Day),
            "7d" => Ok(Window::Week),
            _ => Err(ParseError::new("window must be one of 1h, 24h, 7d")),
        }
    }

    /// How far back the window reaches.
    pub fn length(self) -> Duration {
        match self {
            Window::Hour => Duration::hours(1),
            Window::Day => Duration::hours(24),
            Window::Week => Duration::days(7),
        }
    }

    /// Time-series bucket width: 5 minutes, 1 hour, 1 day.
    pub fn bucket(self) -> Duration {
        match self {
            Window::Hour => Duration::minutes(5),
            Window::Day => Duration::hours(1),
            Window::Week => Duration::days(1),
        }
    }
}

/// `duration_ms` percentiles of completed tasks; `None` without any.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Percentiles {
    pub p50: Option<i64>,
    pub p95: Option<i64>,
    pub p99: Option<i64>,
}

/// The `tasks` part of the summary.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TaskFigures {
    pub total: u64,
    pub by_status: BTreeMap<&'static str, u64>,
    /// Completed over finished (completed + failed); `None` (JSON null) while nothing has
    /// finished in the window, so a page shows "—" rather than a misleading 0%.
    pub success_rate: Option<f64>,
    pub throughput_per_min: f64,
    pub duration_ms: Percentiles,
}

/// The `agents` part of the summary: all agents, not only the caller's.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct AgentFigures {
    pub total: i64,
    pub online: i64,
}

/// One time-series bucket: tasks submitted, completed and failed in it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Bucket {
    /// Start of the bucket.
    pub t: DateTime<Utc>,
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
}

/// An agent among the busiest of the window.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TopAgent {
    pub agent_id: AgentId,
    pub name: String,
    pub completed: u64,
    pub success_rate: f64,
    pub avg_ms: Option<i64>,
}

/// The whole answer of `GET /api/v1/analytics/summary`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Summary {
    pub tasks: TaskFigures,
    pub agents: AgentFigures,
    pub timeseries: Vec<Bucket>,
    pub top_agents: Vec<TopAgent>,
}

/// How many agents `top_agents` lists.
const TOP_AGENTS: usize = 5;

/// Computes the summary over `stats` (tasks created or finished since the window
/// start). Counts by status are over tasks *submitted* in the window; success rate,
/// throughput and durations over tasks *finished* in it.
pub fn summarize(
    stats: &[TaskStat],
    window: Window,
    now: DateTime<Utc>,
    agents: AgentFigures,
    agent_names: &HashMap<AgentId, String>,
) -> Summary {
    let start = now - window.length();
    let submitted: Vec<&TaskStat> = stats.iter().filter(|s| s.created_at >= start).collect();
    let mut by_status: BTreeMap<&'static str, u64> =
        TaskStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for s in &submitted {
        *by_status.entry(s.status.as_str()).or_default() += 1;
    }

    let finished_in_window = |s: &&TaskStat| {
        matches!(s.status, TaskStatus::Completed | TaskStatus::Failed)
            && s.completed_at.is_some_and(|t| t >= start && t <= now)
    };
    let finished: Vec<&TaskStat> = stats.iter().filter(finished_in_window).collect();
    let completed: Vec<&TaskStat> = finished
        .iter()
        .copied()
        .filter(|s| s.status == TaskStatus::Completed)
        .collect();
    let failed = finished.len() - completed.len();

    let mut durations: Vec<i64> = completed.iter().filter_map(|s| duration_ms(s)).collect();
    durations.sort_unstable();

    let minutes = window.length().num_minutes() as f64;
    let tasks = TaskFigures {
        total: submitted.len() as u64,
        by_status,
        success_rate: (completed.len() + failed > 0)
            .then(|| ratio(completed.len(), completed.len() + failed)),
        throughput_per_min: completed.len() as f64 / minutes,
        duration_ms: Percentiles {
            p50: percentile(&durations, 50.0),
            p95: percentile(&durations, 95.0),
            p99: percentile(&durations, 99.0),
        },
    };

    Summary {
        tasks,
        agents,
        timeseries: timeseries(stats, window, start, now),
        top_agents: top_agents(&finished, agent_names),
    }
}

/// Buckets aligned to the bucket width (UTC), from the one holding the window start to
/// the one holding `now`, so every task of the window lands in exactly one.
fn timeseries(
    stats: &[TaskStat],
    window: Window,
    start: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<Bucket> {
    let width = window.bucket();
    let first = start.duration_trunc(width).unwrap_or(start);
    let mut buckets = Vec::new();
    let mut t = first;
    while t <= now {
        buckets.push(Bucket {
            t,
            submitted: 0,
            completed: 0,
            failed: 0,
        });
        t += width;
    }
    let index = |at: DateTime<Utc>| -> Option<usize> {
        if at < start || at > now {
            return None;
        }
        let i = (at - first).num_milliseconds() / width.num_milliseconds();
        usize::try_from(i).ok().filter(|i| *i < buckets.len())
    };
    let mut counts = vec![(0u64, 0u64, 0u64); buckets.len()];
    for s in stats {
        if let Some(i) = index(s.created_at) {
            counts[i].0 += 1;
        }
        if let Some(i) = s.completed_at.and_then(index) {
            match s.status {
                TaskStatus::Completed => counts[i].1 += 1,
                TaskStatus::Failed => counts[i].2 += 1,
                _ => {}
            }
        }
    }
    for (bucket, (sub, done, fail)) in buckets.iter_mut().zip(counts) {
        bucket.submitted = sub;
        bucket.completed = done;
        bucket.failed = fail;
    }
    buckets
}

fn top_agents(finished: &[&TaskStat], names: &HashMap<AgentId, String>) -> Vec<TopAgent> {
    // agent -> (completed, failed, summed duration, durations counted)
    let mut per_agent: HashMap<AgentId, (u64, u64, i64, i64)> = HashMap::new();
    for s in finished {
        let Some(agent) = s.agent_id else { continue };
        let entry = per_agent.entry(agent).or_default();
        if s.status == TaskStatus::Completed {
            entry.0 += 1;
            if let Some(ms) = duration_ms(s) {
                entry.2 += ms;
                entry.3 += 1;
            }
        } else {
            entry.1 += 1;
        }
    }
    let mut top: Vec<TopAgent> = per_agent
        .into_iter()
        .map(|(agent_id, (done, fail, sum, n))| TopAgent {
            agent_id,
            name: names
                .get(&agent_id)
                .cloned()
                .unwrap_or_else(|| "(deleted agent)".to_owned()),
            completed: done,
            success_rate: ratio(done as usize, (done + fail) as usize),
            avg_ms: (n > 0).then(|| sum / n),
        })
        .collect();
    top.sort_by(|a, b| {
        b.completed
            .cmp(&a.completed)
            .then(b.success_rate.total_cmp(&a.success_rate))
            .then(a.agent_id.cmp(&b.agent_id))
    });
    top.truncate(TOP_AGENTS);
    top
}

/// The agents `summarize` will want names for.
pub fn agents_of(stats: &[TaskStat]) -> Vec<AgentId> {
    let mut ids: Vec<AgentId> = stats.iter().filter_map(|s| s.agent_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn duration_ms(s: &TaskStat) -> Option<i64> {
    Some((s.completed_at? - s.started_at?).num_milliseconds().max(0))
}

/// `part / whole`, 0 when `whole` is 0.
fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Nearest-rank percentile of sorted values: the smallest value with at least `p`% of
/// the values at or below it.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(
        status: TaskStatus,
        created_min_ago: i64,
        run_ms: Option<i64>,
        now: DateTime<Utc>,
    ) -> TaskStat {
        let created = now - Duration::minutes(created_min_ago);
        let started = run_ms.map(|_| created);
        TaskStat {
            status,
            agent_id: None,
            created_at: created,
            started_at: started,
            completed_at: run_ms.map(|ms| created + Duration::milliseconds(ms)),
        }
    }

    #[test]
    fn empty_window_has_no_nan() {
        let now = Utc::now();
        let s = summarize(
            &[],
            Window::Hour,
            now,
            AgentFigures {
                total: 0,
                online: 0,
            },
            &HashMap::new(),
        );
        assert_eq!(s.tasks.total, 0);
        assert_eq!(s.tasks.success_rate, None);
        assert_eq!(s.tasks.throughput_per_min, 0.0);
        assert_eq!(
            s.tasks.duration_ms,
            Percentiles {
                p50: None,
                p95: None,
                p99: None
            }
        );
        assert!(s.timeseries.len() >= 12 && s.timeseries.len() <= 13);
        assert!(serde_json::to_string(&s).unwrap().find("NaN").is_none());
    }

    #[test]
    fn figures_over_known_tasks() {
        let now = Utc::now();
        let mut stats: Vec<TaskStat> = (1..=10)
            .map(|i| stat(TaskStatus::Completed, 10, Some(i * 100), now))
            .collect();
        stats.push(stat(TaskStatus::Failed, 10, Some(50), now));
        stats.push(stat(TaskStatus::Queued, 5, None, now));
        stats.push(stat(TaskStatus::Completed, 120, Some(10), now)); // outside 1h
        let s = summarize(
            &stats,
            Window::Hour,
            now,
            AgentFigures {
                total: 1,
                online: 1,
            },
            &HashMap::new(),
        );
        assert_eq!(s.tasks.total, 12);
        assert_eq!(s.tasks.by_status["completed"], 10);
        assert_eq!(s.tasks.by_status["failed"], 1);
        assert_eq!(s.tasks.by_status["queued"], 1);
        assert!((s.tasks.success_rate.unwrap() - 10.0 / 11.0).abs() < 1e-9);
        assert!((s.tasks.throughput_per_min - 10.0 / 60.0).abs() < 1e-9);
        assert_eq!(s.tasks.duration_ms.p50, Some(500));
        assert_eq!(s.tasks.duration_ms.p95, Some(1000));
        assert_eq!(s.tasks.duration_ms.p99, Some(1000));
        let submitted: u64 = s.timeseries.iter().map(|b| b.submitted).sum();
        assert_eq!(submitted, 12);
    }

    #[test]
    fn windows_parse() {
        assert_eq!(Window::parse("7d").unwrap(), Window::Week);
        assert!(Window::parse("2h").is_err());
    }
}
