//! Who may read whose records (proposal §4-3): the patient's consent, and the rules by which
//! the agency grants or refuses access. Plain functions; `store` keeps the records.

use crate::registry::IdState;
use iryo_proto::federation::{Purpose, Time};
use iryo_proto::wire::{ConsentView, Refusal, RefusalReason};
use iryo_proto::InstitutionCode;
use serde::{Deserialize, Serialize};

/// Where a consent record came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsentOrigin {
    /// Entered by an agency operator (from a signed form).
    Operator(String),
    /// Given at the reception desk of this institution during an eligibility check.
    Visit(InstitutionCode),
    /// Set by the patient in the portal.
    Portal,
}

impl std::fmt::Display for ConsentOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsentOrigin::Operator(who) => write!(f, "operator {who}"),
            ConsentOrigin::Visit(code) => write!(f, "visit at {code}"),
            ConsentOrigin::Portal => f.write_str("portal"),
        }
    }
}

/// One decision of the patient: allow or refuse, for one institution or all, for one
/// purpose or all, until an optional expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    pub institution: Option<InstitutionCode>,
    pub purpose: Option<Purpose>,
    pub allow: bool,
    /// The first second the decision no longer covers; `None` for never.
    pub expires_at: Option<Time>,
    pub at: Time,
    pub origin: ConsentOrigin,
}

impl ConsentRecord {
    /// Whether this decision speaks for a request. A permission for "all purposes"
    /// never includes research, which a person allows only by naming it; a refusal
    /// for all purposes covers research too.
    fn covers(&self, requester: InstitutionCode, purpose: Purpose, now: Time) -> bool {
        self.institution.is_none_or(|i| i == requester) && self.covers_purpose(purpose, now)
    }

    fn covers_purpose(&self, purpose: Purpose, now: Time) -> bool {
        let purpose_covered = match self.purpose {
            Some(p) => p == purpose,
            None => !(self.allow && purpose == Purpose::Research),
        };
        purpose_covered && self.expires_at.is_none_or(|e| now < e)
    }

    pub fn view(&self) -> ConsentView {
        ConsentView {
            institution: self.institution,
            purpose: self.purpose,
            allow: self.allow,
            expires_at: self.expires_at,
            at: self.at,
            origin: self.origin.to_string(),
        }
    }
}

/// What holds when the patient has said nothing that covers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultPolicy {
    /// Opt-in: no exchange without consent.
    Deny,
    /// Opt-out: exchange unless the patient refused.
    Allow,
}

/// The latest record that covers the request decides, so a later "refuse all" overrides
/// an earlier permission and a later permission for one institution overrides an earlier
/// "refuse all". `records` are in the order they were made.
pub fn consent_allows(
    records: &[ConsentRecord],
    requester: InstitutionCode,
    purpose: Purpose,
    now: Time,
    default: DefaultPolicy,
) -> bool {
    records
        .iter()
        .rev()
        .find(|r| r.covers(requester, purpose, now))
        .map_or(default == DefaultPolicy::Allow, |r| r.allow)
}

/// Where a person's consent stands for one purpose: whether `institution` (or, for
/// `None`, every institution no decision names) may read the records, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub institution: Option<InstitutionCode>,
    pub purpose: Purpose,
    pub allowed: bool,
    /// When an allowance lapses; `None` for never (or when not allowed).
    pub until: Option<Time>,
}

/// The purposes a person decides on (an emergency needs no consent).
pub const DECIDED_PURPOSES: [Purpose; 3] =
    [Purpose::Treatment, Purpose::Referral, Purpose::Research];

/// Where consent stands now, as the next grant would see it: first for every
/// institution no decision names, then for each institution a decision names, in the
/// order they were first named; each for every purpose of `DECIDED_PURPOSES`.
pub fn standing(records: &[ConsentRecord], now: Time, default: DefaultPolicy) -> Vec<Standing> {
    let mut scopes: Vec<Option<InstitutionCode>> = vec![None];
    for r in records {
        if r.institution.is_some() && !scopes.contains(&r.institution) {
            scopes.push(r.institution);
        }
    }
    let mut out = Vec::new();
    for scope in scopes {
        for purpose in DECIDED_PURPOSES {
            // For the unnamed institutions only decisions for all institutions speak.
            let deciding = records.iter().rev().find(|r| match scope {
                Some(code) => r.covers(code, purpose, now),
                None => r.institution.is_none() && r.covers_purpose(purpose, now),
            });
            let allowed = deciding.map_or(default == DefaultPolicy::Allow, |r| r.allow);
            out.push(Standing {
                institution: scope,
                purpose,
                allowed,
                until: deciding.filter(|r| r.allow).and_then(|r| r.expires_at),
            });
        }
    }
    out
}

/// What a requester asks the agency for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantAsk {
    pub requester: InstitutionCode,
    pub source: InstitutionCode,
    pub purpose: Purpose,
    pub reason: Option<String>,
}

/// The agency's rules for a grant, given the ID's state and the consent answer.
pub fn decide_grant(ask: &GrantAsk, state: IdState, consented: bool) -> Result<(), Refusal> {
    match state {
        IdState::Retired => {
            return Err(Refusal::new(
                RefusalReason::Retired,
                "the medical ID is retired",
            ));
        }
        IdState::Deceased { research_until } if ask.purpose != Purpose::Research => {
            return Err(Refusal::new(
                RefusalReason::Deceased,
                format!("the patient has died; the ID serves research until {research_until}"),
            ));
        }
        _ => {}
    }
    if ask.purpose == Purpose::Emergency {
        return match ask.reason.as_deref().map(str::trim) {
            Some(r) if !r.is_empty() => Ok(()),
            _ => Err(Refusal::new(
                RefusalReason::ReasonRequired,
                "emergency access is granted without consent only with a written reason",
            )),
        };
    }
    if consented {
        Ok(())
    } else {
        Err(Refusal::new(
            RefusalReason::NoConsent,
            format!(
                "the patient has not consented to {} by institution {}",
                ask.purpose.as_str(),
                ask.requester
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(n: u32) -> InstitutionCode {
        InstitutionCode::from_parts(13, iryo_proto::PointTableKind::Medical, n).unwrap()
    }

    fn rec(inst: Option<u32>, purpose: Option<Purpose>, allow: bool, at: Time) -> ConsentRecord {
        ConsentRecord {
            institution: inst.map(code),
            purpose,
            allow,
            expires_at: None,
            at,
            origin: ConsentOrigin::Portal,
        }
    }

    #[test]
    fn standing_is_what_the_next_grant_would_see() {
        let (t, r_) = (Purpose::Treatment, Purpose::Research);
        let mut one = rec(Some(1), Some(t), true, 1);
        one.expires_at = Some(100);
        let records = vec![rec(None, None, true, 0), one, rec(Some(2), None, false, 2)];
        let s = standing(&records, 10, DefaultPolicy::Deny);
        // Every purpose of the three scopes: all others, institution 1, institution 2.
        assert_eq!(s.len(), 9);
        let find = |i: Option<u32>, p: Purpose| {
            s.iter()
                .find(|x| x.institution == i.map(code) && x.purpose == p)
                .unwrap()
                .clone()
        };
        assert!(find(None, t).allowed && find(None, t).until.is_none());
        assert!(
            !find(None, r_).allowed,
            "all purposes never includes research"
        );
        assert_eq!(find(Some(1), t).until, Some(100));
        assert!(!find(Some(2), t).allowed);
        // The standing agrees with the grant's own rule for the named institutions.
        for x in &s {
            if let Some(c) = x.institution {
                assert_eq!(
                    x.allowed,
                    consent_allows(&records, c, x.purpose, 10, DefaultPolicy::Deny)
                );
            }
        }
        // After institution 1's permission lapses, the permission for all decides.
        let later = standing(&records, 200, DefaultPolicy::Deny);
        assert!(later.iter().any(|x| x.institution == Some(code(1))
            && x.purpose == t
            && x.allowed
            && x.until.is_none()));
        assert!(
            standing(&[], 0, DefaultPolicy::Allow)
                .iter()
                .filter(|x| x.allowed)
                .count()
                == 3
        );
    }

    #[test]
    fn the_latest_covering_record_decides() {
        let t = Purpose::Treatment;
        assert!(!consent_allows(&[], code(1), t, 0, DefaultPolicy::Deny));
        assert!(consent_allows(&[], code(1), t, 0, DefaultPolicy::Allow));
        let mut r = vec![rec(Some(1), Some(t), true, 1)];
        assert!(consent_allows(&r, code(1), t, 2, DefaultPolicy::Deny));
        assert!(!consent_allows(&r, code(2), t, 2, DefaultPolicy::Deny));
        assert!(!consent_allows(
            &r,
            code(1),
            Purpose::Research,
            2,
            DefaultPolicy::Deny
        ));
        r.push(rec(None, None, false, 3));
        assert!(
            !consent_allows(&r, code(1), t, 4, DefaultPolicy::Allow),
            "opt-out of all"
        );
        r.push(rec(Some(2), None, true, 5));
        assert!(consent_allows(&r, code(2), t, 6, DefaultPolicy::Deny));
        assert!(!consent_allows(&r, code(1), t, 6, DefaultPolicy::Deny));
        let mut expiring = rec(Some(3), None, true, 7);
        expiring.expires_at = Some(10);
        r.push(expiring);
        assert!(consent_allows(&r, code(3), t, 9, DefaultPolicy::Deny));
        // `expires_at` is the first second not covered, at the precision it is kept.
        assert!(
            !consent_allows(&r, code(3), t, 10, DefaultPolicy::Deny),
            "expired at its second"
        );
        assert!(
            !consent_allows(&r, code(3), t, 11, DefaultPolicy::Deny),
            "expired"
        );
        // "All purposes" never lets research in; research is allowed only by name.
        let mut all = rec(Some(5), None, true, 13);
        all.purpose = None;
        r.push(all);
        assert!(consent_allows(
            &r,
            code(5),
            Purpose::Treatment,
            14,
            DefaultPolicy::Deny
        ));
        assert!(!consent_allows(
            &r,
            code(5),
            Purpose::Research,
            14,
            DefaultPolicy::Deny
        ));
        let mut research = rec(Some(5), None, true, 15);
        research.purpose = Some(Purpose::Research);
        r.push(research);
        assert!(consent_allows(
            &r,
            code(5),
            Purpose::Research,
            16,
            DefaultPolicy::Deny
        ));
        // A decision that expires the moment it is made covers nothing.
        let mut instant = rec(Some(4), None, true, 12);
        instant.expires_at = Some(12);
        r.push(instant);
        assert!(!consent_allows(&r, code(4), t, 12, DefaultPolicy::Deny));
    }

    #[test]
    fn grant_rules() {
        let ask = |purpose, reason: Option<&str>| GrantAsk {
            requester: code(1),
            source: code(2),
            purpose,
            reason: reason.map(String::from),
        };
        let until = chrono::NaiveDate::from_ymd_opt(2030, 1, 1).unwrap();
        let dead = IdState::Deceased {
            research_until: until,
        };
        assert!(decide_grant(&ask(Purpose::Treatment, None), IdState::Active, true).is_ok());
        let no = decide_grant(&ask(Purpose::Treatment, None), IdState::Active, false);
        assert_eq!(no.unwrap_err().reason, RefusalReason::NoConsent);
        let e = decide_grant(&ask(Purpose::Emergency, Some("  ")), IdState::Active, false);
        assert_eq!(e.unwrap_err().reason, RefusalReason::ReasonRequired);
        assert!(decide_grant(
            &ask(Purpose::Emergency, Some("unconscious")),
            IdState::Active,
            false
        )
        .is_ok());
        let d = decide_grant(&ask(Purpose::Treatment, None), dead, true);
        assert_eq!(d.unwrap_err().reason, RefusalReason::Deceased);
        assert!(decide_grant(&ask(Purpose::Research, None), dead, true).is_ok());
        let r = decide_grant(&ask(Purpose::Research, None), IdState::Retired, true);
        assert_eq!(r.unwrap_err().reason, RefusalReason::Retired);
    }
}
