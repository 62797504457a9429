//! The queue's `/metrics` gauges: queued tasks by capability, running tasks, agents
//! online. Refreshed by the reaper every pass from one store read, so they are never more
//! than a second old and never drift from the database.
//!
//! Capabilities are user input, and `/metrics` label values must come from a bounded
//! set: the first `MAX_CAPABILITY_LABELS` capabilities seen get their own series, the
//! rest are summed under `other`.

use crate::store::QueueGauges as Figures;
use std::collections::HashSet;
use std::sync::Mutex;

/// Capability label values, at most; later capabilities count as `other`.
const MAX_CAPABILITY_LABELS: usize = 50;
/// The label of capabilities beyond the bound.
const OTHER: &str = "other";

/// The gauges and the labels they have used.
#[derive(Default)]
pub(super) struct QueueGauges {
    /// Capability labels with a series; each is set every pass (to 0 once empty).
    /// A std mutex: held only while setting gauges, never across an await.
    labels: Mutex<HashSet<String>>,
}

impl QueueGauges {
    /// Publishes one reading.
    pub(super) fn set(&self, figures: &Figures) {
        let mut labels = self
            .labels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut depth: std::collections::HashMap<String, i64> =
            labels.iter().map(|l| (l.clone(), 0)).collect();
        for (capability, queued) in &figures.queued {
            let name = capability.as_str();
            let label = if labels.contains(name) {
                name.to_owned()
            } else if labels.len() < MAX_CAPABILITY_LABELS {
                labels.insert(name.to_owned());
                name.to_owned()
            } else {
                labels.insert(OTHER.to_owned());
                OTHER.to_owned()
            };
            *depth.entry(label).or_default() += queued;
        }
        for (label, queued) in depth {
            metrics::gauge!("zerostate_tasks_queued", "capability" => label).set(queued as f64);
        }
        metrics::gauge!("zerostate_tasks_running").set(figures.running as f64);
        metrics::gauge!("zerostate_agents_online").set(figures.agents_online as f64);
    }
}
