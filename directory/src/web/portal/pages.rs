//! The signed-in pages: home, service history, access log.

use super::*;

pub(super) async fn home(
    State(web): State<Arc<Web>>,
    lang: Lang,
    SignedIn(s): SignedIn,
) -> Result<Response, WebError> {
    let w = web.clone();
    let pid_id = s.medical_id;
    let person = blocking(move || Ok(w.store.person_by_medical_id(pid_id)?)).await?;
    let day = today();
    let coverage = html! {
        @match person.coverage_on(day) {
            Some(c) => {
                span class="ok" id="coverage" { (lang.t("加入中", "Covered")) }
                " — " (lang.t("保険者番号", "insurer")) " " (c.card.insurer.as_str()) " " (c.card.to_string())
                " (" (lang.t("資格取得日", "from")) " " (c.from) "〜"
                (c.until.map(|u| u.to_string()).unwrap_or_default()) ")"
            }
            None => {
                span class="flag" id="coverage" {
                    (lang.t("現在、有効な保険資格はありません", "No insurance in force today"))
                }
            }
        }
    };
    let state = match person.id_state(day, web.store.retention_years()) {
        IdState::Active => lang.t("有効", "active"),
        IdState::Deceased { .. } => lang.t("死亡により資格終了", "ended by death"),
        IdState::Retired => lang.t("廃止", "retired"),
    };
    let body = html! {
        table {
            tr { th { (lang.t("医療ID", "Medical ID")) } td class="mid" id="medical-id" { (person.medical_id.grouped()) } }
            tr { th { (lang.t("氏名", "Name")) } td { (person.identity.name.to_string()) br; (person.identity.kana.to_string()) } }
            tr { th { (lang.t("医療IDの状態", "ID status")) } td { (state) } }
            tr { th { (lang.t("保険", "Insurance")) } td { (coverage) } }
        }
    };
    Ok(private(
        lang,
        lang.t("マイポータル", "My Portal"),
        "/portal/home",
        &s,
        body,
    ))
}

pub(super) async fn history(
    State(web): State<Arc<Web>>,
    lang: Lang,
    SignedIn(s): SignedIn,
) -> Result<Response, WebError> {
    let w = web.clone();
    let pid = s.pid;
    let rows = blocking(move || {
        let uses = w.store.reader()?.service_uses(pid)?;
        let mut names = Names {
            web: &w,
            seen: HashMap::new(),
        };
        Ok(uses
            .iter()
            .rev()
            .map(|u| {
                html! {
                    tr class="visit" {
                        td { (u.date) }
                        td { (names.of(u.institution)) }
                        td {
                            (if u.eligible {
                                lang.t("資格確認済み", "eligible")
                            } else {
                                lang.t("資格なし", "not eligible")
                            })
                        }
                    }
                }
            })
            .collect::<Vec<_>>())
    })
    .await?;
    let body = table_or_none(
        "visits",
        lang.t(
            "医療機関で資格確認が行われた記録です（新しい順）。",
            "Where your eligibility was checked (newest first).",
        ),
        &[
            lang.t("日付", "Date"),
            lang.t("医療機関", "Institution"),
            lang.t("結果", "Result"),
        ],
        &rows,
        lang.t("受診の記録はまだありません。", "No visits recorded yet."),
    );
    Ok(private(
        lang,
        lang.t("受診履歴", "Visits"),
        "/portal/history",
        &s,
        body,
    ))
}

fn describe(lang: Lang, names: &mut Names<'_>, entry: &LogEntry) -> Option<(Time, String, bool)> {
    match entry {
        LogEntry::Notification { notification, .. } => {
            let n = notification.open_unverified().ok()?;
            let what = match n.side {
                Side::Disclosed => format!(
                    "{} → {}: {} ({} {})",
                    names.of(n.source),
                    names.of(n.requester),
                    lang.t("記録を開示", "records disclosed"),
                    n.record_count,
                    n.resource_types.join(", ")
                ),
                Side::Received => format!(
                    "{} ← {}: {} ({} {})",
                    names.of(n.requester),
                    names.of(n.source),
                    lang.t("記録を受領", "records received"),
                    n.record_count,
                    n.resource_types.join(", ")
                ),
            };
            Some((
                n.at,
                format!("{what} — {}", purpose(lang, Some(n.purpose))),
                n.emergency,
            ))
        }
        LogEntry::GrantIssued {
            requester,
            source,
            purpose: p,
            emergency_reason,
            at,
            ..
        } => Some((
            *at,
            format!(
                "{}: {} ← {} — {}{}",
                lang.t("閲覧を許可", "access granted"),
                names.of(*requester),
                names.of(*source),
                purpose(lang, Some(*p)),
                emergency_reason.as_ref().map_or(String::new(), |r| format!(
                    " — {}: {}",
                    lang.t("理由", "reason"),
                    r
                ))
            ),
            emergency_reason.is_some(),
        )),
        LogEntry::GrantRefused {
            requester,
            source,
            purpose: p,
            reason,
            at,
            ..
        } => Some((
            *at,
            format!(
                "{}: {} ← {} — {} ({})",
                lang.t("閲覧を拒否", "access refused"),
                names.of(*requester),
                names.of(*source),
                purpose(lang, Some(*p)),
                refusal(lang, reason)
            ),
            false,
        )),
        LogEntry::AccessRefused { report, .. } => {
            let r = report.open_unverified().ok()?;
            let requester = match r.requester {
                Some(c) => names.of(c),
                None => lang.t("不明な機関", "an unknown institution").to_string(),
            };
            Some((
                r.at,
                format!(
                    "{}: {} ← {} — {} ({})",
                    lang.t(
                        "閲覧を拒否（記録の保有機関）",
                        "access refused by the source"
                    ),
                    requester,
                    names.of(r.source),
                    purpose(lang, Some(r.purpose)),
                    refusal(lang, &r.reason)
                ),
                true,
            ))
        }
        LogEntry::OperatorRead {
            operator, what, at, ..
        } => Some((
            *at,
            format!(
                "{}: {} ({})",
                lang.t("管理機関の職員が閲覧", "read by the agency's staff"),
                what,
                operator
            ),
            false,
        )),
        LogEntry::Eligibility { .. } | LogEntry::Operator { .. } => None,
    }
}

pub(super) async fn access(
    State(web): State<Arc<Web>>,
    lang: Lang,
    SignedIn(s): SignedIn,
) -> Result<Response, WebError> {
    let w = web.clone();
    let id = s.medical_id;
    let rows = blocking(move || {
        let person = w.store.person_by_medical_id(id)?;
        let entries = w.store.audit_for_person(&person)?;
        let agency = w.agency.verifying_key();
        let mut names = Names {
            web: &w,
            seen: HashMap::new(),
        };
        let mut out = Vec::new();
        // The newest 200: a person reads what happened lately.
        for (index, entry) in entries.iter().rev().take(200) {
            let Some((at, text, emergency)) = describe(lang, &mut names, entry) else {
                continue;
            };
            let proved = w.store.prove_entry(*index, &agency)?;
            out.push(html! {
                tr class="access" {
                    td { (time(at)) }
                    td {
                        (text)
                        @if emergency {
                            " " span class="flag emergency" { (lang.t("救急アクセス", "EMERGENCY")) }
                        }
                    }
                    td {
                        @match proved {
                            Some(size) => span class="ok proof" {
                                "✔ " (lang.t("署名付き監査ログに記録", "in the signed audit log")) " #" (index) " / " (size)
                            },
                            None => span class="flag proof" {
                                "✘ " (lang.t("検証できません", "cannot be verified"))
                            },
                        }
                    }
                }
            });
        }
        Ok(out)
    })
    .await?;
    let body = table_or_none(
        "access",
        lang.t(
            "どの医療機関が、いつ、なぜあなたの記録を閲覧したかの記録です。各行は機関が署名した監査ログに含まれることを確認しています。",
            "Which institution read your records, when and why. Each line is checked to be in the agency's signed audit log.",
        ),
        &[
            lang.t("日時", "When"),
            lang.t("内容", "What"),
            lang.t("証明", "Proof"),
        ],
        &rows,
        lang.t("閲覧の記録はありません。", "Nobody has accessed your records."),
    );
    Ok(private(
        lang,
        lang.t("閲覧記録", "Access log"),
        "/portal/access",
        &s,
        body,
    ))
}
