//! Human-readable renderings of registry records for the command line.

use crate::registry::{format_time, CaseStatus, Conflict, Event, Mismatch, Person, ServiceUse};
use std::fmt::Write;

pub fn person(
    p: &Person,
    uses: &[ServiceUse],
    retention_years: u32,
    today: chrono::NaiveDate,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "medical ID    {}  ({:?})",
        p.medical_id.grouped(),
        p.id_state(today, retention_years)
    );
    let _ = writeln!(s, "My Number     {}", p.my_number);
    let _ = writeln!(
        s,
        "name          {}  ({})",
        p.identity.name, p.identity.kana
    );
    let _ = writeln!(
        s,
        "birth date    {}   sex {} ",
        p.identity.birth,
        p.identity.sex.code()
    );
    let _ = writeln!(s, "address       {}", p.address.as_deref().unwrap_or("-"));
    if let Some(d) = p.death {
        let _ = writeln!(s, "death         {d}");
    }
    let _ = writeln!(s, "coverages:");
    for c in &p.coverages {
        let _ = writeln!(
            s,
            "  {:<10} {}  {} from {} until {}{}",
            c.kind.as_str(),
            c.card,
            c.relation.as_str(),
            c.from,
            c.until.map_or("-".into(), |u| u.to_string()),
            c.assigned_at.map_or(String::new(), |a| format!(
                "  (assigned {})",
                format_time(a)
            ))
        );
    }
    let _ = writeln!(s, "history:");
    for e in &p.history {
        let _ = writeln!(s, "  {}  {}", format_time(e.at()), event(e));
    }
    let _ = writeln!(s, "service use ({}):", uses.len());
    for u in uses {
        let _ = writeln!(
            s,
            "  {}  institution {}  {}",
            u.date,
            u.institution,
            if u.eligible {
                "eligible"
            } else {
                "not eligible"
            }
        );
    }
    s
}

pub fn event(e: &Event) -> String {
    match e {
        Event::Issued { id, .. } => format!("issued {}", id.grouped()),
        Event::CoverageAdded { card, .. } => format!("coverage added: {card}"),
        Event::CoverageUpdated { card, .. } => format!("coverage updated: {card}"),
        Event::IdChanged {
            old, new, reason, ..
        } => {
            format!(
                "medical ID changed {} -> {} ({reason})",
                old.grouped(),
                new.grouped()
            )
        }
        Event::MyNumberChanged { old, new, .. } => format!("My Number changed {old} -> {new}"),
        Event::Death { date, .. } => format!("death recorded: {date}"),
        Event::Retired { .. } => "medical ID retired".into(),
        Event::Corrected { what, reason, .. } => format!("corrected: {what} ({reason})"),
        Event::Notified { plan, .. } => format!("letter listed (plan {plan})"),
        Event::Changed {
            field,
            old,
            new,
            source,
            ..
        } => format!(
            "{field} changed from {} to {} (source: {source})",
            if old.is_empty() { "(none)" } else { old },
            if new.is_empty() { "(none)" } else { new }
        ),
        Event::DeathCorrected {
            old,
            new,
            reason,
            by,
            ..
        } => format!("date of death corrected from {old} to {new} by {by} ({reason})"),
        Event::DeathRevoked {
            old, reason, by, ..
        } => format!("death of {old} revoked by {by} ({reason})"),
    }
}

fn status(s: &CaseStatus) -> String {
    match s {
        CaseStatus::Open => "open".into(),
        CaseStatus::Resolved {
            action,
            reason,
            by,
            at,
        } => {
            format!(
                "resolved: {action} by {by} at {} ({reason})",
                format_time(*at)
            )
        }
    }
}

pub fn conflict(c: &Conflict) -> String {
    format!(
        "#{}  {}  {}\n     row: My Number {}  {} ({})  born {}  card {}\n     {}",
        c.id,
        c.source,
        c.kind,
        c.row.my_number,
        c.row.identity.name,
        c.row.identity.kana,
        c.row.identity.birth,
        c.row.card,
        status(&c.status)
    )
}

pub fn mismatch(m: &Mismatch) -> String {
    format!(
        "#{}  {}  institution {}  card {}\n     presented {}  registered {}\n     {}",
        m.id,
        m.date,
        m.institution,
        m.card,
        m.presented.grouped(),
        m.registered.grouped(),
        status(&m.status)
    )
}

pub fn audit_entry(e: &crate::audit::LogEntry) -> String {
    use crate::audit::LogEntry;
    match e {
        LogEntry::Notification { from, notification } => match notification.open_unverified() {
            Ok(n) => format!(
                "{}  {} reports {:?}: {} -> {}  {} ({} records: {}){}",
                format_time(n.at),
                from,
                n.side,
                n.source,
                n.requester,
                n.purpose.as_str(),
                n.record_count,
                n.resource_types.join(", "),
                if n.emergency { "  EMERGENCY" } else { "" }
            ),
            Err(e) => format!("notification from {from} (undecodable: {e})"),
        },
        LogEntry::GrantIssued {
            requester,
            source,
            purpose,
            emergency_reason,
            at,
            ..
        } => format!(
            "{}  grant: {} may read from {} for {}{}",
            format_time(*at),
            requester,
            source,
            purpose.as_str(),
            emergency_reason
                .as_ref()
                .map_or(String::new(), |r| format!("  EMERGENCY: {r}"))
        ),
        LogEntry::GrantRefused {
            requester,
            source,
            purpose,
            reason,
            at,
            ..
        } => format!(
            "{}  grant refused: {} from {} for {} ({reason})",
            format_time(*at),
            requester,
            source,
            purpose.as_str()
        ),
        LogEntry::Eligibility {
            institution,
            reason,
            at,
            ..
        } => {
            format!(
                "{}  eligibility check at {institution}: {reason:?}",
                format_time(*at)
            )
        }
        LogEntry::Operator {
            operator,
            action,
            at,
        } => format!("{}  {operator}: {action}", format_time(*at)),
        LogEntry::AccessRefused { from, report } => match report.open_unverified() {
            Ok(r) => format!(
                "{}  ACCESS REFUSED by {from}: {} asked for {} ({}) and was refused: {}",
                format_time(r.at),
                r.requester
                    .map_or("an unknown requester".into(), |c| c.to_string()),
                r.medical_id.grouped(),
                r.purpose.as_str(),
                r.reason
            ),
            Err(e) => format!("refusal report from {from} (unreadable: {e})"),
        },
        LogEntry::OperatorRead {
            operator,
            medical_id,
            what,
            at,
        } => format!(
            "{}  operator {operator} read {what} of {}",
            format_time(*at),
            medical_id.grouped()
        ),
        LogEntry::RegistryNotice { notice } => match notice.open_unverified() {
            Ok(n) => format!(
                "{}  registry notice {}: {}",
                format_time(n.at),
                n.seq,
                registry_notice(&n.kind)
            ),
            Err(e) => format!("registry notice (unreadable: {e})"),
        },
    }
}

/// What a registry notice says, for operators.
pub fn registry_notice(kind: &iryo_proto::roles::NoticeKind) -> String {
    use iryo_proto::roles::NoticeKind;
    match kind {
        NoticeKind::IdChanged { old, new } => {
            format!("medical ID {} replaced by {}", old.grouped(), new.grouped())
        }
        NoticeKind::Died { medical_id, date } => {
            format!("the holder of {} died on {date}", medical_id.grouped())
        }
        NoticeKind::DeathWithdrawn { medical_id } => {
            format!(
                "the death of the holder of {} withdrawn",
                medical_id.grouped()
            )
        }
        NoticeKind::Retired { medical_id } => {
            format!("medical ID {} retired", medical_id.grouped())
        }
        NoticeKind::VisitConsent {
            institution,
            medical_id,
            until,
        } => format!(
            "the holder of {} agreed at {institution} that it may obtain their records for treatment until {}",
            medical_id.grouped(),
            format_time(*until)
        ),
        NoticeKind::Visited {
            institution,
            medical_id,
            date,
            eligible,
        } => format!(
            "the holder of {} was seen at {institution} on {date} ({})",
            medical_id.grouped(),
            if *eligible { "covered" } else { "not covered" }
        ),
        NoticeKind::StaffRead {
            medical_id,
            operator,
            what,
        } => format!(
            "the registry's operator {operator} read {what} of {}",
            medical_id.grouped()
        ),
        NoticeKind::PortalCode {
            medical_id,
            expires,
            ..
        } => format!(
            "a letter gave the holder of {} a My Portal code, valid until {}",
            medical_id.grouped(),
            format_time(*expires)
        ),
    }
}
