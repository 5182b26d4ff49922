//! The console's queue of open cases (proposal §2-5): each conflict or mismatch shown
//! with the registered and the presented values side by side, the differing ones
//! marked, where the row came from, what each action will change and the person's
//! recent history; filtered by kind, insurer and age, and paged.

use super::operator::{console, csrf, operator, resolve_form};
use super::page::Lang;
use super::{blocking, Caller, Web, WebError};
use crate::registry::{now, Conflict, ConflictKind, Mismatch, Person};
use crate::report;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::Extension;
use iryo_proto::MedicalId;
use maud::{html, Markup};
use serde::Deserialize;
use std::sync::Arc;

/// Cases on one page of the queue.
const PER_PAGE: usize = 20;

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct Filter {
    /// `conflict` or `mismatch`; both when absent.
    #[serde(default)]
    kind: Option<String>,
    /// Only cases about cards of this insurer number.
    #[serde(default)]
    insurer: Option<String>,
    /// Only cases open at least this many days (a form sends it empty when unset).
    #[serde(default)]
    days: Option<String>,
    #[serde(default)]
    page: Option<usize>,
}

impl Filter {
    fn wants(&self, kind: &str, insurer: &str, at: i64, now: i64) -> bool {
        fn filled(o: Option<&String>) -> Option<&str> {
            o.map(|s| s.trim()).filter(|s| !s.is_empty())
        }
        filled(self.kind.as_ref()).is_none_or(|k| k == kind)
            && filled(self.insurer.as_ref()).is_none_or(|i| i == insurer)
            && self
                .days()
                .is_none_or(|d| now - at >= i64::from(d) * 86_400)
    }

    fn days(&self) -> Option<u32> {
        self.days.as_deref().and_then(|d| d.trim().parse().ok())
    }

    fn query(&self, page: usize) -> String {
        format!(
            "/operator/cases?kind={}&insurer={}&days={}&page={page}",
            self.kind.as_deref().unwrap_or(""),
            self.insurer.as_deref().unwrap_or(""),
            self.days().map(|d| d.to_string()).unwrap_or_default(),
        )
    }
}

/// One open case with the people it is about.
enum Case {
    Conflict {
        case: Conflict,
        registered: Option<Person>,
    },
    Mismatch {
        case: Mismatch,
        holder: Option<Person>,
        presented: Option<Person>,
    },
}

impl Case {
    fn people(&self) -> Vec<MedicalId> {
        let ids = match self {
            Case::Conflict { registered, .. } => vec![registered.as_ref()],
            Case::Mismatch {
                holder, presented, ..
            } => vec![holder.as_ref(), presented.as_ref()],
        };
        ids.into_iter().flatten().map(|p| p.medical_id).collect()
    }
}

pub(super) async fn cases(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    lang: Lang,
    Query(filter): Query<Filter>,
) -> Result<Response, WebError> {
    let op = operator(&caller)?;
    if let Some(d) = filter.days.as_deref().filter(|d| !d.trim().is_empty()) {
        if filter.days().is_none() {
            return Err(WebError::BadRequest(format!(
                "days: {d:?} is not a number of days"
            )));
        }
    }
    let (w, o) = (web.clone(), op.clone());
    let page = filter.page.unwrap_or(1).max(1);
    let links = filter.clone();
    let (shown, total, counts) = blocking(move || {
        let t = now();
        let conflicts = w.store.conflicts(true)?;
        let mismatches = w.store.mismatches(true)?;
        let counts = (conflicts.len(), mismatches.len());
        // The oldest first: the queue is worked from its head.
        let mut wanted: Vec<(i64, bool, usize)> = Vec::new();
        for (i, c) in conflicts.iter().enumerate() {
            if filter.wants("conflict", c.row.card.insurer.as_str(), c.at, t) {
                wanted.push((c.at, true, i));
            }
        }
        for (i, m) in mismatches.iter().enumerate() {
            if filter.wants("mismatch", m.card.insurer.as_str(), m.at, t) {
                wanted.push((m.at, false, i));
            }
        }
        wanted.sort_unstable();
        let total = wanted.len();
        let find = |n| w.store.person_by_medical_id(n).ok();
        let mut shown = Vec::new();
        for (_, conflict, i) in wanted
            .into_iter()
            .skip((page - 1).saturating_mul(PER_PAGE))
            .take(PER_PAGE)
        {
            shown.push(if conflict {
                let case = conflicts[i].clone();
                let mine = match &case.kind {
                    ConflictKind::CardHeldByOther { holder } => *holder,
                    ConflictKind::IdentityMismatch { .. } => case.row.my_number,
                };
                let registered = w.store.person_by_my_number(mine).ok();
                Case::Conflict { case, registered }
            } else {
                let case = mismatches[i].clone();
                Case::Mismatch {
                    holder: find(case.registered),
                    presented: find(case.presented),
                    case,
                }
            });
        }
        // Each person whose data the page shows sees the read in their access log.
        let mut ids: Vec<MedicalId> = shown.iter().flat_map(Case::people).collect();
        ids.sort_unstable();
        ids.dedup();
        w.store.log_reads(
            &o,
            &ids,
            "the open cases (enrollment conflicts, mismatches) about them",
        )?;
        w.store.log_operator(
            &o,
            format!(
                "viewed open cases: {} shown of {total} matching",
                shown.len()
            ),
        )?;
        Ok((shown, total, counts))
    })
    .await?;
    let token = csrf(&web, &op);
    let body = html! {
        p id="case-counts" {
            (lang.t("未処理", "Open")) ": "
            (lang.t("登録の不整合", "enrollment conflicts")) " " (counts.0) "、"
            (lang.t("医療機関での不一致", "mismatches at institutions")) " " (counts.1)
        }
        (filter_form(lang))
        @if shown.is_empty() {
            p id="no-cases" { (lang.t("条件に合う未処理の案件はありません。", "No open cases match.")) }
        }
        @for case in &shown {
            @match case {
                Case::Conflict { case, registered } => (conflict(lang, &token, case, registered.as_ref())),
                Case::Mismatch { case, holder, presented } => (mismatch(lang, &token, case, holder.as_ref(), presented.as_ref())),
            }
        }
        nav class="pager" aria-label=(lang.t("ページ", "Pages")) {
            @if page > 1 { a href=(links.query(page - 1)) id="newer" { (lang.t("← 前へ", "← Previous")) } " " }
            (lang.t("ページ", "Page")) " " (page) " / " (total.div_ceil(PER_PAGE).max(1))
            @if page * PER_PAGE < total { " " a href=(links.query(page + 1)) id="older" { (lang.t("次へ →", "Next →")) } }
        }
    };
    Ok(console(
        &web,
        (lang, lang.t("未処理案件", "Open cases"), "/operator/cases"),
        &op,
        body,
    ))
}

fn filter_form(lang: Lang) -> Markup {
    html! {
        form method="get" action="/operator/cases" id="case-filter" {
            label {
                (lang.t("種類", "Kind"))
                select name="kind" {
                    option value="" { (lang.t("すべて", "all")) }
                    option value="conflict" { (lang.t("登録の不整合", "enrollment conflicts")) }
                    option value="mismatch" { (lang.t("医療機関での不一致", "mismatches")) }
                }
            }
            label { (lang.t("保険者番号", "Insurer number")) input name="insurer" inputmode="numeric"; }
            label { (lang.t("未処理の日数（以上）", "Open for at least (days)")) input name="days" inputmode="numeric"; }
            button { (lang.t("絞り込む", "Filter")) }
        }
    }
}

/// A table of the values one person has and another, the differing rows marked.
fn compare(lang: Lang, heads: (&str, &str), rows: &[(&str, String, String)]) -> Markup {
    html! {
        table class="compare" {
            tr { th { (lang.t("項目", "Field")) } th { (heads.0) } th { (heads.1) } }
            @for (label, a, b) in rows {
                @let differs = a != b;
                tr class=(if differs { "differs" } else { "same" }) {
                    th { (label) @if differs { " " span class="flag" { "≠" } } }
                    td { (a) }
                    td { (b) }
                }
            }
        }
    }
}

fn history(lang: Lang, p: Option<&Person>) -> Markup {
    html! {
        @if let Some(p) = p {
            details class="history" {
                summary { (lang.t("この人の最近の履歴", "This person's recent history")) }
                ul {
                    @for e in p.history.iter().rev().take(8) { li { (report::event(e)) } }
                }
            }
        }
    }
}

fn person_rows(lang: Lang, p: Option<&Person>) -> [(&'static str, String); 6] {
    let v = |f: &dyn Fn(&Person) -> String| p.map_or_else(|| "—".to_string(), f);
    [
        (lang.t("氏名", "Name"), v(&|p| p.identity.name.to_string())),
        (lang.t("カナ", "Kana"), v(&|p| p.identity.kana.to_string())),
        (
            lang.t("生年月日", "Born"),
            v(&|p| p.identity.birth.to_string()),
        ),
        (
            lang.t("性別", "Sex"),
            v(&|p| p.identity.sex.code().to_string()),
        ),
        (
            lang.t("住所", "Address"),
            v(&|p| p.address.clone().unwrap_or_default()),
        ),
        (
            lang.t("個人番号", "My Number"),
            v(&|p| p.my_number.to_string()),
        ),
    ]
}

fn conflict(lang: Lang, token: &str, c: &Conflict, registered: Option<&Person>) -> Markup {
    let row = &c.row;
    let presented = [
        row.identity.name.to_string(),
        row.identity.kana.to_string(),
        row.identity.birth.to_string(),
        row.identity.sex.code().to_string(),
        row.address.clone().unwrap_or_default(),
        row.my_number.to_string(),
    ];
    let rows: Vec<(&str, String, String)> = person_rows(lang, registered)
        .into_iter()
        .zip(presented)
        .map(|((label, a), b)| (label, a, b))
        .chain([(
            lang.t("保険証", "Card"),
            registered
                .map(|p| {
                    p.coverages
                        .iter()
                        .map(|c| c.card.to_string())
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
                .unwrap_or_default(),
            row.card.to_string(),
        )])
        .collect();
    let (what, apply) = match &c.kind {
        ConflictKind::IdentityMismatch { fields } => (
            match lang {
                Lang::Ja => format!("届出と登録で {} が違います", fields.join("・")),
                Lang::En => format!("the row and the registry differ in {}", fields.join(", ")),
            },
            match lang {
                Lang::Ja => format!("登録の {} を届出の値に訂正します（古い値は履歴に残ります）。", fields.join("・")),
                Lang::En => format!("corrects the registry's {} to the row's values (the old ones stay in the history).", fields.join(", ")),
            },
        ),
        ConflictKind::CardHeldByOther { holder } => (
            match lang {
                Lang::Ja => format!("保険証がほかの人（個人番号 {holder}）に登録されています"),
                Lang::En => format!("the card is registered to another person (My Number {holder})"),
            },
            lang.t(
                "保険証を今の持ち主から外し、届出の個人番号の人に付けます。",
                "takes the card from its present holder and gives it to the row's person.",
            )
            .to_string(),
        ),
    };
    html! {
        div class="case" id=(format!("conflict-{}", c.id)) {
            h3 { (lang.t("登録の不整合", "Enrollment conflict")) " #" (c.id) ": " (what) }
            p class="source" {
                (lang.t("届出ファイルと行: ", "From file and line: ")) (c.source)
                "　" (lang.t("受付: ", "Received: ")) (lang.time(c.at))
            }
            (compare(lang, (lang.t("登録されている値", "Registered"), lang.t("届出の値", "In the row")), &rows))
            ul class="effects" {
                li { b { (lang.t("届出どおり訂正", "Apply")) } ": " (apply) }
                li { b { (lang.t("登録どおり（却下）", "Dismiss")) } ": " (lang.t("登録は変えず、案件を閉じます。", "changes nothing and closes the case.")) }
            }
            (history(lang, registered))
            (resolve_form(token, lang, &format!("/operator/conflicts/{}", c.id), &[
                ("apply", lang.t("届出どおり訂正", "apply the row")),
                ("dismiss", lang.t("登録どおり（却下）", "dismiss")),
            ]))
        }
    }
}

fn mismatch(
    lang: Lang,
    token: &str,
    m: &Mismatch,
    holder: Option<&Person>,
    presented: Option<&Person>,
) -> Markup {
    let rows: Vec<(&str, String, String)> = person_rows(lang, holder)
        .into_iter()
        .zip(person_rows(lang, presented))
        .map(|((label, a), (_, b))| (label, a, b))
        .chain([(
            lang.t("医療ID", "Medical ID"),
            m.registered.grouped(),
            m.presented.grouped(),
        )])
        .collect();
    html! {
        div class="case" id=(format!("mismatch-{}", m.id)) {
            h3 {
                (lang.t("医療機関での不一致", "Mismatch at an institution")) " #" (m.id) ": "
                (lang.t("医療機関", "institution")) " " (m.institution) "、" (lang.date(m.date)) "、"
                (lang.t("保険証", "card")) " " (m.card.to_string())
            }
            (compare(lang, (lang.t("保険証の登録者", "The card's registered holder"), lang.t("提示された医療IDの人", "The person of the presented ID")), &rows))
            ul class="effects" {
                li { b { (lang.t("登録どおり", "Keep")) } ": " (lang.t(
                    "保険証は今の登録者のままです。医療機関には正しい医療IDを伝えてください。",
                    "the card stays with its registered holder; tell the institution the right medical ID.",
                )) }
                li { b { (lang.t("付け替え", "Rebind")) } ": " (lang.t(
                    "保険証を、提示された医療IDの人に付け替えます（履歴に残ります）。",
                    "moves the card to the person of the presented medical ID (kept in the history).",
                )) }
            }
            (history(lang, holder))
            (resolve_form(token, lang, &format!("/operator/mismatches/{}", m.id), &[
                ("keep", lang.t("登録どおり", "keep the registry")),
                ("rebind", lang.t("提示された医療IDに付け替え", "rebind the card")),
            ]))
        }
    }
}
