//! Counters of the events an operator watches for (they appear on `GET /metrics`): money
//! that did not go as planned, and load the server turned away.

use std::sync::atomic::{AtomicU64, Ordering};

/// One counter per event; cheap to bump from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Replies whose upstream reported more output than the request allowed (charged in
    /// full, above their hold).
    pub overages: AtomicU64,
    /// Settlements that found their hold gone and charged from the request's own record.
    pub holds_lost: AtomicU64,
    /// Settlement attempts that failed and were retried.
    pub settlement_failures: AtomicU64,
    /// Connections refused because their peer address had too many open.
    pub refused_per_peer: AtomicU64,
    /// Connections refused because the server had too many open.
    pub refused_total: AtomicU64,
    /// Requests refused because requests in flight already held the memory budget.
    pub refused_memory: AtomicU64,
}

impl Metrics {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in the Prometheus text format.
    pub fn render(&self) -> String {
        let all: [(&str, &str, &AtomicU64); 6] = [
            (
                "tollgate_upstream_overages_total",
                "Replies whose upstream returned more output than allowed.",
                &self.overages,
            ),
            (
                "tollgate_holds_lost_total",
                "Settlements that found their hold released and charged from the request's record.",
                &self.holds_lost,
            ),
            (
                "tollgate_settlement_failures_total",
                "Settlement attempts that failed and were retried.",
                &self.settlement_failures,
            ),
            (
                "tollgate_connections_refused_per_peer_total",
                "Connections refused at the per-peer connection cap.",
                &self.refused_per_peer,
            ),
            (
                "tollgate_connections_refused_total",
                "Connections refused at the server's connection cap.",
                &self.refused_total,
            ),
            (
                "tollgate_requests_refused_memory_total",
                "Requests refused because requests in flight held the memory budget.",
                &self.refused_memory,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in all {
            let value = value.load(Ordering::Relaxed);
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text() {
        let m = Metrics::default();
        Metrics::bump(&m.holds_lost);
        Metrics::bump(&m.holds_lost);
        let text = m.render();
        assert!(
            text.contains(
                "# TYPE tollgate_holds_lost_total counter\ntollgate_holds_lost_total 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("tollgate_upstream_overages_total 0\n"),
            "{text}"
        );
    }
}
