//! The signed-in pages: home, service history, access log.

use super::*;
use crate::registry::ServiceUse;
use axum::extract::Query;
use iryo_proto::roles::NoticeKind;
use iryo_proto::InsurerKind;

/// Lines on one page of the history or the access log.
const PER_PAGE: usize = 20;

#[derive(Deserialize)]
pub(super) struct Paging {
    #[serde(default)]
    page: Option<usize>,
}

impl Paging {
    /// The lines of page `page` (1 = the newest), and whether there are more.
    fn slice<T>(&self, all: Vec<T>) -> (usize, Vec<T>, bool) {
        let page = self.page.unwrap_or(1).max(1);
        let total = all.len();
        let shown: Vec<T> = all
            .into_iter()
            .skip((page - 1).saturating_mul(PER_PAGE))
            .take(PER_PAGE)
            .collect();
        (page, shown, total > page.saturating_mul(PER_PAGE))
    }
}

/// One page of a listing of `here`: the table (or the line saying there is nothing)
/// and the links to the newer and older pages.
fn listing(
    lang: Lang,
    (id, here): (&str, &str),
    (intro, headers, none): (&str, &[&str], &str),
    rows: &[Markup],
    (page, more): (usize, bool),
) -> Markup {
    html! {
        (table_or_none(id, intro, headers, rows, none))
        (pager(lang, here, page, more))
    }
}

/// Links to the newer and older pages of `here`.
fn pager(lang: Lang, here: &str, page: usize, more: bool) -> Markup {
    html! {
        @if page > 1 || more {
            nav class="pager" {
                @if page > 1 {
                    a href=(format!("{here}?page={}", page - 1)) id="newer" { (lang.t("← 新しい記録", "← Newer")) }
                }
                " " (lang.t("ページ", "Page")) " " (page) " "
                @if more {
                    a href=(format!("{here}?page={}", page + 1)) id="older" { (lang.t("古い記録 →", "Older →")) }
                }
            }
        }
    }
}

fn insurer_kind(lang: Lang, kind: InsurerKind) -> &'static str {
    match kind {
        InsurerKind::Nhi => lang.t("国民健康保険", "National Health Insurance"),
        InsurerKind::Kyokai => lang.t(
            "全国健康保険協会（協会けんぽ）",
            "Japan Health Insurance Association (Kyokai Kenpo)",
        ),
        InsurerKind::Society => lang.t("健康保険組合", "Health insurance society"),
        InsurerKind::MutualAid => lang.t("共済組合", "Mutual aid association"),
    }
}

pub(super) async fn home(
    State(web): State<Arc<Web>>,
    lang: Lang,
    SignedIn(s): SignedIn,
) -> Result<Response, WebError> {
    let w = web.clone();
    let pid_id = s.medical_id;
    let patient = blocking(move || Ok(w.store.patient(pid_id)?)).await?;
    let day = today();
    let state = match patient.id_state(day, web.store.retention_years()) {
        IdState::Active => lang.t("有効", "active"),
        IdState::Deceased { .. } => lang.t("死亡により資格終了", "ended by death"),
        IdState::Retired => lang.t("廃止", "retired"),
    };
    let Some(person) = patient.person() else {
        // The exchange authority keeps no name, birth date or insurance (docs/roles.md).
        let body = html! {
            table class="facts" {
                tr { th { (lang.t("医療ID", "Medical ID")) } td class="mid" id="medical-id" { (patient.medical_id().grouped()) } }
                tr { th { (lang.t("医療IDの状態", "ID status")) } td { (state) } }
            }
            p id="kept-apart" {
                (lang.t(
                    "このサイトは、あなたの記録をだれが見たかと、見てよい相手を管理します。お名前・住所・保険の情報はここにはありません。それらは医療IDを発行した登録機関が別に管理しています。変更は保険者にお申し出ください。",
                    "This site keeps who read your records and who may. It does not hold your name, address or insurance: the registry that issued your medical ID keeps those apart. To change them, ask your insurer.",
                ))
            }
        };
        return Ok(private(
            lang,
            lang.t("マイポータル", "My Portal"),
            "/portal/home",
            &s,
            body,
        ));
    };
    let coverage = html! {
        @match person.coverage_on(day) {
            Some(c) => {
                span class="ok" id="coverage" { (lang.t("加入中", "Covered")) }
                br;
                span id="insurer" { (insurer_kind(lang, c.kind)) }
                " (" (lang.t("保険者番号", "insurer number")) " " (c.card.insurer.as_str()) ")"
                br;
                (lang.t("記号", "symbol")) " " (c.card.symbol.as_str()) "　"
                (lang.t("番号", "number")) " " (c.card.number.as_str()) "　"
                (lang.t("枝番", "branch")) " " (c.card.branch)
                br;
                (lang.date(c.from)) (lang.t("から", " onwards"))
                @if let Some(u) = c.until { " " (lang.t("〜", "until ")) (lang.date(u)) }
            }
            None => {
                span class="flag" id="coverage" {
                    (lang.t("現在、有効な保険資格はありません", "No insurance in force today"))
                }
            }
        }
    };
    let body = html! {
        table class="facts" {
            tr { th { (lang.t("医療ID", "Medical ID")) } td class="mid" id="medical-id" { (person.medical_id.grouped()) } }
            tr { th { (lang.t("氏名", "Name")) } td { (person.identity.name.to_string()) br; (person.identity.kana.to_string()) } }
            tr { th { (lang.t("生年月日", "Born")) } td { (lang.date(person.identity.birth.date())) } }
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

/// One visit: the checks at one institution on one day, however many there were.
struct Visit {
    date: chrono::NaiveDate,
    institution: InstitutionCode,
    checks: usize,
    eligible: bool,
    latest: i64,
}

/// Service uses as visits, newest first.
fn visits(uses: &[ServiceUse]) -> Vec<Visit> {
    let mut by: HashMap<(chrono::NaiveDate, InstitutionCode), Visit> = HashMap::new();
    for u in uses {
        let v = by.entry((u.date, u.institution)).or_insert(Visit {
            date: u.date,
            institution: u.institution,
            checks: 0,
            eligible: false,
            latest: i64::MIN,
        });
        v.checks += 1;
        v.eligible |= u.eligible;
        v.latest = v.latest.max(u.at);
    }
    let mut out: Vec<Visit> = by.into_values().collect();
    out.sort_by_key(|v| std::cmp::Reverse((v.date, v.latest)));
    out
}

pub(super) async fn history(
    State(web): State<Arc<Web>>,
    lang: Lang,
    SignedIn(s): SignedIn,
    Query(paging): Query<Paging>,
) -> Result<Response, WebError> {
    let w = web.clone();
    let pid = s.pid;
    let all = blocking(move || Ok(visits(&w.store.service_uses(pid)?))).await?;
    let (page, shown, more) = paging.slice(all);
    let mut names = Names {
        web: &web,
        seen: HashMap::new(),
    };
    let rows: Vec<Markup> = shown
        .iter()
        .map(|v| {
            html! {
                tr class="visit" {
                    td data-label=(lang.t("日付", "Date")) { (lang.date(v.date)) }
                    td data-label=(lang.t("医療機関", "Institution")) { (names.of(v.institution)) }
                    td data-label=(lang.t("資格確認", "Eligibility")) {
                        (if v.eligible {
                            lang.t("資格確認済み", "eligible")
                        } else {
                            lang.t("資格なし", "not eligible")
                        })
                        @if v.checks > 1 {
                            " " span class="checks" {
                                @match lang {
                                    Lang::Ja => { "（確認 " (v.checks) " 回）" },
                                    Lang::En => { "(" (v.checks) " checks)" },
                                }
                            }
                        }
                    }
                }
            }
        })
        .collect();
    let body = listing(
        lang,
        ("visits", "/portal/history"),
        (
            lang.t(
                "医療機関で保険資格の確認が行われた日です（新しい順）。同じ日に同じ医療機関で何度確認されても1行です。",
                "The days an institution checked your insurance (newest first); one line per institution and day.",
            ),
            &[
                lang.t("日付", "Date"),
                lang.t("医療機関", "Institution"),
                lang.t("資格確認", "Eligibility"),
            ],
            lang.t("受診の記録はまだありません。", "No visits recorded yet."),
        ),
        &rows,
        (page, more),
    );
    Ok(private(
        lang,
        lang.t("受診履歴", "Visits"),
        "/portal/history",
        &s,
        body,
    ))
}

/// A kind of record as a person names it.
fn record_kind(lang: Lang, fhir_type: &str) -> String {
    let (ja, en) = match fhir_type {
        "Condition" => ("病名", "diagnoses"),
        "Observation" => ("検査結果", "test results"),
        "DiagnosticReport" => ("検査の報告", "test reports"),
        "MedicationRequest" => ("処方", "prescriptions"),
        "MedicationStatement" | "MedicationDispense" | "MedicationAdministration" => {
            ("お薬", "medicines")
        }
        "AllergyIntolerance" => ("アレルギー", "allergies"),
        "Procedure" => ("処置・手術", "procedures"),
        "Immunization" => ("予防接種", "immunizations"),
        "Encounter" => ("受診", "visits"),
        "DocumentReference" | "Composition" => ("文書", "documents"),
        "ImagingStudy" => ("画像検査", "imaging"),
        "Patient" => ("患者情報", "patient details"),
        other => {
            return match lang {
                Lang::Ja => format!("その他（{other}）"),
                Lang::En => format!("other ({other})"),
            }
        }
    };
    lang.t(ja, en).to_string()
}

/// What the agency's staff read, in the page's language. The log keeps the operator's
/// own words; the portal says the known ones in plain Japanese.
fn staff_read(lang: Lang, what: &str) -> String {
    let known = [
        (
            "the registry record",
            "氏名・個人番号・住所・保険・受診の記録・同意",
        ),
        ("the open cases", "登録内容の食い違いについての案件"),
        ("the audit log of their records", "あなたの記録の監査ログ"),
        (
            "reissued their letter",
            "お知らせの再発行のため、氏名と住所。新しい初回登録コードを発行し、古いコードは使えなくなりました",
        ),
    ];
    match (lang, known.iter().find(|(en, _)| what.starts_with(en))) {
        (Lang::Ja, Some((_, ja))) => ja.to_string(),
        _ => what.to_string(),
    }
}

/// One line of the access log: a sentence, when, whether it was an emergency, and the
/// positions of the log entries it stands for with the tree size each is proved in.
struct Line {
    at: Time,
    /// The last log position it stands for: orders lines of the same second.
    last: u64,
    text: String,
    emergency: bool,
    proofs: Vec<(u64, Option<u64>)>,
}

impl Line {
    /// The line of one log entry, not an emergency.
    fn one(index: u64, at: Time, text: String) -> Self {
        Line {
            at,
            last: index,
            text,
            emergency: false,
            proofs: vec![(index, None)],
        }
    }
}

/// One exchange: the grant and the notifications its two ends sent.
#[derive(Default)]
struct Exchange {
    granted: Option<(
        InstitutionCode,
        InstitutionCode,
        Purpose,
        Option<String>,
        Time,
    )>,
    records: Option<(u32, Vec<String>)>,
    reported: Option<(InstitutionCode, InstitutionCode, Purpose, bool, Time)>,
    entries: Vec<u64>,
}

fn exchange_sentence(lang: Lang, names: &mut Names<'_>, x: &Exchange) -> Option<Line> {
    let (requester, source, purpose_, reason, at, emergency) = match (&x.granted, &x.reported) {
        (Some((r, s, p, reason, at)), _) => (*r, *s, *p, reason.clone(), *at, reason.is_some()),
        (None, Some((r, s, p, e, at))) => (*r, *s, *p, None, *at, *e),
        (None, None) => return None,
    };
    let (who, whose, why) = (
        names.of(requester),
        names.of(source),
        purpose(lang, Some(purpose_)),
    );
    let mut text = match (&x.records, lang) {
        (Some((n, types)), Lang::Ja) => {
            let kinds: Vec<String> = types.iter().map(|t| record_kind(lang, t)).collect();
            format!("{who}が、{why}のために、{whose}にあるあなたの記録（{}、計{n}件）を閲覧しました。", kinds.join("・"))
        }
        (Some((n, types)), Lang::En) => {
            let kinds: Vec<String> = types.iter().map(|t| record_kind(lang, t)).collect();
            format!("{who} read your records at {whose} ({}; {n} in all) for {why}.", kinds.join(", "))
        }
        (None, Lang::Ja) => format!(
            "{who}に、{why}のために{whose}にあるあなたの記録を見ることが許可されました（閲覧の報告はまだありません）。"
        ),
        (None, Lang::En) => format!(
            "{who} was allowed to read your records at {whose} for {why} (no reading reported yet)."
        ),
    };
    if let Some(r) = reason {
        text.push_str(&match lang {
            Lang::Ja => format!(" 救急の理由: {r}"),
            Lang::En => format!(" Emergency reason: {r}"),
        });
    }
    Some(Line {
        at,
        last: x.entries.iter().copied().max().unwrap_or_default(),
        text,
        emergency,
        proofs: x.entries.iter().map(|i| (*i, None)).collect(),
    })
}

/// The log entries about a person as lines, newest first: one per exchange, one per
/// refusal, one per read by the agency's staff.
fn lines(lang: Lang, names: &mut Names<'_>, entries: &[(u64, LogEntry)]) -> Vec<Line> {
    let mut exchanges: HashMap<[u8; 16], Exchange> = HashMap::new();
    let mut out = Vec::new();
    for (index, entry) in entries {
        match entry {
            LogEntry::GrantIssued {
                grant_id,
                requester,
                source,
                purpose: p,
                emergency_reason,
                at,
                ..
            } => {
                let x = exchanges.entry(*grant_id).or_default();
                x.granted = Some((*requester, *source, *p, emergency_reason.clone(), *at));
                x.entries.push(*index);
            }
            LogEntry::Notification { notification, .. } => {
                let Ok(n) = notification.open_unverified() else {
                    continue;
                };
                let x = exchanges.entry(n.grant_id).or_default();
                if n.side == Side::Disclosed || x.records.is_none() {
                    x.records = Some((n.record_count, n.resource_types.clone()));
                }
                x.reported = Some((n.requester, n.source, n.purpose, n.emergency, n.at));
                x.entries.push(*index);
            }
            LogEntry::GrantRefused {
                requester,
                source,
                purpose: p,
                reason,
                at,
                ..
            } => {
                let (who, whose, why) = (
                    names.of(*requester),
                    names.of(*source),
                    purpose(lang, Some(*p)),
                );
                let because = refusal(lang, reason);
                let text = match lang {
                    Lang::Ja => format!("{who}が、{why}のために{whose}にあるあなたの記録を見ようとしましたが、{because}、管理機関が断りました。"),
                    Lang::En => format!("{who} asked to read your records at {whose} for {why}; the agency refused ({because})."),
                };
                out.push(Line::one(*index, *at, text));
            }
            LogEntry::AccessRefused { report, .. } => {
                let Ok(r) = report.open_unverified() else {
                    continue;
                };
                let who = match r.requester {
                    Some(c) => names.of(c),
                    None => lang.t("不明な機関", "an unknown institution").to_string(),
                };
                let (whose, why, because) = (
                    names.of(r.source),
                    purpose(lang, Some(r.purpose)),
                    refusal(lang, &r.reason),
                );
                let text = match lang {
                    Lang::Ja => format!("{who}が、{why}のために{whose}にあるあなたの記録を見ようとしましたが、{because}、{whose}が断りました。"),
                    Lang::En => format!("{who} tried to read your records at {whose} for {why}; {whose} refused ({because})."),
                };
                out.push(Line {
                    at: r.at,
                    last: *index,
                    text,
                    emergency: true,
                    proofs: vec![(*index, None)],
                });
            }
            LogEntry::OperatorRead {
                operator, what, at, ..
            } => {
                let what = staff_read(lang, what);
                let text = match lang {
                    Lang::Ja => format!("管理機関の職員（{operator}）が、あなたの登録情報を閲覧しました（{what}）。"),
                    Lang::En => format!("The agency's staff ({operator}) read your registry record ({what})."),
                };
                out.push(Line::one(*index, *at, text));
            }
            LogEntry::RegistryNotice { notice } => {
                // Of what the registry told, only its staff's reads are reads of the
                // person's records; the rest shows on the ID's own page.
                let Ok(n) = notice.open_unverified() else {
                    continue;
                };
                if let NoticeKind::StaffRead { operator, what, .. } = &n.kind {
                    let what = staff_read(lang, what);
                    let text = match lang {
                        Lang::Ja => format!("登録機関の職員（{operator}）が、あなたの登録情報を閲覧しました（{what}）。"),
                        Lang::En => format!("The registry's staff ({operator}) read your registry record ({what})."),
                    };
                    out.push(Line::one(*index, n.at, text));
                }
            }
            // Not reads of the person's records.
            LogEntry::Eligibility { .. } | LogEntry::Operator { .. } => {}
        }
    }
    out.extend(
        exchanges
            .values()
            .filter_map(|x| exchange_sentence(lang, names, x)),
    );
    out.sort_by_key(|l| std::cmp::Reverse((l.at, l.last)));
    out
}

pub(super) async fn access(
    State(web): State<Arc<Web>>,
    lang: Lang,
    SignedIn(s): SignedIn,
    Query(paging): Query<Paging>,
) -> Result<Response, WebError> {
    let w = web.clone();
    let id = s.medical_id;
    let (page, shown, more, witnessed) = blocking(move || {
        let entries = w
            .store
            .audit_for_patient(&w.store.patient(id)?.holder().ids)?;
        let mut names = Names {
            web: &w,
            seen: HashMap::new(),
        };
        let (page, mut shown, more) = paging.slice(lines(lang, &mut names, &entries));
        // Only the lines shown are proved: against the checkpoint the witnesses
        // cosigned when it holds them, else against the latest signed head.
        let agency = w.agency.verifying_key();
        let witnessed = crate::witnesses::latest_witnessed(&*w.store, &w.config.audit, &w.agency);
        for line in &mut shown {
            for (index, size) in &mut line.proofs {
                *size = match &witnessed {
                    Some(c) if *index < c.checkpoint.size => {
                        let cp = &c.checkpoint;
                        let leaf = iryo_proto::merkle::leaf_hash(
                            &w.store.audit_entry(*index)?.canonical(),
                        );
                        let proof = w.store.inclusion_proof(*index, cp.size)?;
                        iryo_proto::merkle::verify_inclusion(
                            &leaf, *index, cp.size, &proof, &cp.root,
                        )
                        .then_some(cp.size)
                    }
                    _ => w.store.prove_entry(*index, &agency)?,
                };
            }
        }
        Ok((page, shown, more, witnessed))
    })
    .await?;
    let witnessed_size = witnessed.as_ref().map(|c| c.checkpoint.size);
    let rows: Vec<Markup> = shown
        .iter()
        .map(|line| {
            let proved = line.proofs.iter().all(|(_, size)| size.is_some());
            html! {
                tr class=(if line.emergency { "access emergency-row" } else { "access" }) {
                    td data-label=(lang.t("日時", "When")) { (lang.time(line.at)) }
                    td data-label=(lang.t("内容", "What")) {
                        @if line.emergency {
                            span class="flag emergency" { (lang.t("救急・要確認", "EMERGENCY")) } " "
                        }
                        (line.text)
                    }
                    td data-label=(lang.t("証明", "Proof")) {
                        details class="proof" {
                            @if proved {
                                summary class="ok" { "✔" span class="why" { (lang.t("確認済み", "verified")) } }
                                @for (index, size) in &line.proofs {
                                    p {
                                        @match lang {
                                            Lang::Ja => { "署名付き監査ログの " (index) " 番目の記録（全 " (size.unwrap_or_default()) " 件の木で証明）" },
                                            Lang::En => { "Entry " (index) " of the signed audit log (proved in its tree of " (size.unwrap_or_default()) ")" },
                                        }
                                        @if let Some(ws) = witnessed_size {
                                            @if *size == Some(ws) {
                                                " " (lang.t("立会人が確かめた木です。", "A tree the witnesses confirmed."))
                                            } @else {
                                                " " (lang.t("立会人の確認待ちです。", "Awaiting the witnesses' confirmation."))
                                            }
                                        }
                                    }
                                }
                            } @else {
                                summary class="flag" { "✘" span class="why" { (lang.t("検証できません", "cannot be verified")) } }
                            }
                        }
                    }
                }
            }
        })
        .collect();
    let witnessed_note = witnessed.as_ref().map(|c| {
        let n = c.witnesses.len();
        let size = c.checkpoint.size;
        let at = lang.time(i64::try_from(c.cosigned_at).unwrap_or(0));
        match lang {
            Lang::Ja => format!(
                "監査ログは、管理機関から独立した立会人 {n} 者が確かめています（{size} 件目まで、{at} 時点）。それより新しい行は、確認待ちです。"
            ),
            Lang::En => format!(
                "The audit log is confirmed by {n} witness(es) independent of the agency (its first {size} entries, as of {at}). Newer lines await their confirmation."
            ),
        }
    });
    let body = listing(
        lang,
        ("access", "/portal/access"),
        (
            lang.t(
                "どの医療機関が、いつ、なぜあなたの記録を見たかの記録です（新しい順）。各行は、管理機関が署名した監査ログに含まれることを確認しています（✔ を押すと詳しく表示）。",
                "Which institution read your records, when and why (newest first). Each line is checked to be in the agency's signed audit log (press ✔ for details).",
            ),
            &[
                lang.t("日時", "When"),
                lang.t("内容", "What"),
                lang.t("証明", "Proof"),
            ],
            lang.t("閲覧の記録はありません。", "Nobody has accessed your records."),
        ),
        &rows,
        (page, more),
    );
    let body = html! {
        @if let Some(note) = &witnessed_note {
            p class="witnessed" { (note) }
        }
        (body)
    };
    Ok(private(
        lang,
        lang.t("閲覧記録", "Access log"),
        "/portal/access",
        &s,
        body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_on_one_day_at_one_institution_are_one_visit() {
        let code =
            |n| InstitutionCode::from_parts(13, iryo_proto::PointTableKind::Medical, n).unwrap();
        let day = |d| chrono::NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
        let mut uses: Vec<ServiceUse> = (0..70)
            .map(|i| ServiceUse {
                institution: code(1),
                date: day(5),
                eligible: true,
                at: i,
            })
            .collect();
        uses.push(ServiceUse {
            institution: code(2),
            date: day(5),
            eligible: false,
            at: 100,
        });
        uses.push(ServiceUse {
            institution: code(1),
            date: day(6),
            eligible: true,
            at: 200,
        });
        let v = visits(&uses);
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].date, v[0].checks), (day(6), 1));
        assert_eq!(
            (v[1].institution, v[1].checks, v[1].eligible),
            (code(2), 1, false)
        );
        assert_eq!((v[2].institution, v[2].checks), (code(1), 70));
        let paging = Paging { page: Some(2) };
        let (page, shown, more) = paging.slice((0..45).collect::<Vec<_>>());
        assert_eq!((page, shown.len(), shown[0], more), (2, 20, 20, true));
        let (_, shown, more) = Paging { page: Some(3) }.slice((0..45).collect::<Vec<_>>());
        assert_eq!((shown.len(), more), (5, false));
    }
}
