//! Prometheus metrics of the directory, served at `/metrics` on the HTTPS front.
//! One registry per process: the network service, the HTTPS front and enrollment all
//! count into it without being handed it.

use iryo_proto::wire::{DirectoryRequest, DirectoryResponse};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::time::Duration;

use iryo_p2p::metrics::{latencies, Labels, Latencies};

pub struct Metrics {
    registry: Registry,
    pub enrollment_rows: Family<Labels, Counter>,
    pub checks: Family<Labels, Counter>,
    pub grants: Family<Labels, Counter>,
    pub notifications: Counter,
    pub refusals: Family<Labels, Counter>,
    /// Passwords hashed or verified for My Portal's sign-in and activation.
    pub portal_hashes: Counter,
    pub requests: Latencies,
    /// 1 once the database's storage failed (the process then stops to be restarted).
    pub storage_failed: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("iryo_directory");
        let m = Self {
            registry: Registry::default(),
            enrollment_rows: Family::default(),
            checks: Family::default(),
            grants: Family::default(),
            notifications: Counter::default(),
            refusals: Family::default(),
            portal_hashes: Counter::default(),
            requests: latencies(),
            storage_failed: Gauge::default(),
        };
        registry.register(
            "storage_failed",
            "1 once the database's storage failed; the process stops to be restarted",
            m.storage_failed.clone(),
        );
        registry.register(
            "enrollment_rows",
            "Enrollment rows by outcome",
            m.enrollment_rows.clone(),
        );
        registry.register("checks", "Eligibility checks by answer", m.checks.clone());
        registry.register("grants", "Access grants issued", m.grants.clone());
        registry.register(
            "notifications",
            "Linkage notifications verified and logged",
            m.notifications.clone(),
        );
        registry.register(
            "portal_password_hashes",
            "Passwords hashed or verified for sign-in and activation",
            m.portal_hashes.clone(),
        );
        registry.register(
            "refusals",
            "Requests refused, by reason",
            m.refusals.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request, by interface and kind",
            m.requests.clone(),
        );
        Self { registry, ..m }
    }

    pub fn render(&self) -> String {
        iryo_p2p::metrics::render(&self.registry)
    }

    pub fn observe_request(&self, interface: &'static str, kind: &str, took: Duration) {
        self.requests
            .get_or_create(&vec![
                ("interface", interface.into()),
                ("kind", kind.into()),
            ])
            .observe(took.as_secs_f64());
    }

    /// Counts the rows of an enrolled file by outcome.
    pub fn enrolled(&self, s: &crate::enrollment::Summary) {
        for (outcome, n) in [
            ("new", s.new),
            ("updated", s.updated),
            ("unchanged", s.unchanged),
            ("rejected", s.rejected),
            ("conflict", s.conflicts),
        ] {
            self.enrollment_rows
                .get_or_create(&vec![("outcome", outcome.to_string())])
                .inc_by(n);
        }
    }

    pub fn storage_failed(&self) {
        self.storage_failed.set(1);
    }

    /// One password hashed or verified for the portal.
    pub fn portal_hash(&self) {
        self.portal_hashes.inc();
    }

    pub fn refused(&self, reason: &str) {
        iryo_p2p::metrics::count(&self.refusals, "reason", reason);
    }

    /// Counts what one answer of the network service carried.
    pub fn observe_directory(&self, request: &str, response: &DirectoryResponse, took: Duration) {
        self.observe_request("p2p", request, took);
        let check = |a: &iryo_proto::eligibility::CheckAnswer| {
            self.checks
                .get_or_create(&vec![("reason", format!("{:?}", a.reason))])
                .inc();
        };
        match response {
            DirectoryResponse::Eligibility(a) => check(a),
            DirectoryResponse::EligibilityBatch(answers) => answers.iter().for_each(check),
            DirectoryResponse::Grant(_) => {
                self.grants.get_or_create(&vec![]).inc();
            }
            DirectoryResponse::Acknowledged { ids } => {
                self.notifications.inc_by(ids.len() as u64);
            }
            DirectoryResponse::Refused(r) => self.refused(&format!("{:?}", r.reason)),
            DirectoryResponse::Membership(_)
            | DirectoryResponse::Consent(_)
            | DirectoryResponse::TreeHead(_)
            | DirectoryResponse::AuditProof { .. }
            | DirectoryResponse::WitnessedCheckpoint { .. }
            | DirectoryResponse::NoticesApplied { .. } => {}
        }
    }
}

pub fn request_kind(r: &DirectoryRequest) -> &'static str {
    match r {
        DirectoryRequest::Resolve { .. } => "resolve",
        DirectoryRequest::Eligibility { .. } => "eligibility",
        DirectoryRequest::EligibilityBatch { .. } => "eligibility_batch",
        DirectoryRequest::Consent { .. } => "consent",
        DirectoryRequest::Grant { .. } => "grant",
        DirectoryRequest::Notify { .. } => "notify",
        DirectoryRequest::ReportRefusals { .. } => "report_refusals",
        DirectoryRequest::TreeHead => "tree_head",
        DirectoryRequest::AuditProof { .. } => "audit_proof",
        DirectoryRequest::WitnessedCheckpoint { .. } => "witnessed_checkpoint",
        DirectoryRequest::RegistryNotices { .. } => "registry_notices",
        DirectoryRequest::MemberByKey { .. } => "member_by_key",
    }
}

pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = metrics();
        m.refused("NoConsent");
        m.observe_request("https", "portal", Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("iryo_directory_refusals_total{reason=\"NoConsent\"}"));
        assert!(text.contains("iryo_directory_request_duration_seconds_bucket"));
        assert!(text.ends_with("# EOF\n"));
    }
}
