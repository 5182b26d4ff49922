//! The narrated demo: a fresh directory on sample data, end to end.

use anyhow::{Context as _, Result};
use iryo_directory::config::Config;
use iryo_directory::context::Context;
use iryo_directory::enrollment::{ingest_file, Encoding, IngestOptions, Progress};
use iryo_directory::registry::eligibility::{CheckKey, CheckRequest};
use iryo_directory::registry::{now, today, Person};
use iryo_directory::sample::{write_sample, SampleOptions};
use iryo_directory::store::{Plan, Store};
use iryo_proto::{InstitutionCode, MedicalId, PointTableKind};
use std::path::Path;

fn step(title: &str) {
    println!("\n== {title}");
}

fn card_check(
    institution: InstitutionCode,
    p: &Person,
    presented: Option<MedicalId>,
) -> CheckRequest {
    let c = &p.coverages[p.coverages.len() - 1].card;
    CheckRequest {
        institution,
        key: CheckKey::for_card(c, presented),
        date: today(),
        visit_consent: false,
        idempotency_key: None,
    }
}

fn show_answer(what: &str, store: &Store, req: &CheckRequest) -> Result<()> {
    let a = store.check(req, now())?;
    println!(
        "  {what:<44} -> {} ({:?}){}",
        if a.eligible {
            "eligible"
        } else {
            "not eligible"
        },
        a.reason,
        a.mismatch
            .map_or(String::new(), |m| format!(", mismatch #{m} recorded"))
    );
    Ok(())
}

pub(super) fn run(dir: &Path, persons: u64) -> Result<()> {
    for sub in ["data", "sample", "out"] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("clearing {}", p.display()))?;
        }
    }
    let config = Config {
        data_dir: dir.join("data"),
        ..Config::default()
    };
    let ctx = Context::new(config);

    step("1. init: a fresh database and the agency's keys");
    let (store, _) = ctx.init()?;
    let issuer = ctx.issuer(&store)?;
    println!(
        "  database {}  issuance: {}",
        ctx.config.db_path().display(),
        issuer.method().as_str()
    );

    step("2. sample: enrollment files from the four insurer kinds");
    let sample = write_sample(
        &dir.join("sample"),
        &SampleOptions {
            persons,
            seed: 1,
            bad_rows_percent: 1.0,
            encoding: Encoding::Utf8,
        },
    )?;
    println!(
        "  {} rows for {persons} persons ({} insurer changes, {} broken on purpose) in {} files",
        sample.rows,
        sample.movers,
        sample.bad_rows,
        sample.files.len()
    );

    step("3. enroll: validate, match by My Number, issue medical IDs");
    let opts = IngestOptions {
        encoding: Some(Encoding::Utf8),
        batch_rows: ctx.config.enrollment.batch_rows,
        only_insurer: None,
        max_line_bytes: ctx.config.enrollment.max_line_bytes,
        source_name: None,
    };
    for f in &sample.files {
        let s = ingest_file(&store, &issuer, f, &opts, &Progress::Silent)?;
        println!("  {s}");
    }
    let again = ingest_file(&store, &issuer, &sample.files[0], &opts, &Progress::Silent)?;
    println!(
        "  the same file again: {} new, {} unchanged (idempotent)",
        again.new, again.unchanged
    );

    step("4. assign: each insurer's file of My Number → medical ID");
    std::fs::create_dir_all(dir.join("out"))?;
    let insurers: std::collections::BTreeSet<_> = store
        .persons()?
        .iter()
        .flat_map(|p| p.coverages.iter().map(|c| c.card.insurer.clone()))
        .collect();
    for insurer in insurers {
        let rows = store.assignment_rows(&insurer, false)?;
        let out = dir.join("out").join(format!("assign_{insurer}.csv"));
        let file = iryo_directory::files::create_private(&out)?;
        iryo_directory::store::AssignmentRow::write_csv(file, &rows)?;
        store.mark_assigned(&rows, now())?;
        println!("  {insurer}: {} rows -> {}", rows.len(), out.display());
    }
    let letters = store.letter_rows(Plan::Agency, false, today())?;
    println!(
        "  {} letters to send under plan 2 (by the agency)",
        letters.len()
    );

    step("5. check: eligibility at a clinic (each check is recorded as service use)");
    let clinic = InstitutionCode::from_parts(13, PointTableKind::Medical, 123_456)?;
    let all = store.reader()?.first_persons(200)?;
    let active = all
        .iter()
        .find(|p| p.coverages.len() == 1)
        .context("no person enrolled")?;
    show_answer("insurance card", &store, &card_check(clinic, active, None))?;
    show_answer(
        "medical ID card alone",
        &store,
        &CheckRequest {
            institution: clinic,
            key: CheckKey::MedicalId(active.medical_id),
            date: today(),
            visit_consent: false,
            idempotency_key: None,
        },
    )?;
    if let Some(mover) = all.iter().find(|p| p.coverages.len() > 1) {
        let ended = mover
            .coverages
            .iter()
            .find(|c| c.until.is_some())
            .unwrap_or(&mover.coverages[0]);
        let mut old = card_check(clinic, mover, None);
        old.key = CheckKey::for_card(&ended.card, None);
        show_answer("old card of a person who changed insurer", &store, &old)?;
    }
    let other = all
        .iter()
        .rev()
        .find(|p| p.pid != active.pid)
        .context("need two persons")?;
    show_answer(
        "card with someone else's medical ID",
        &store,
        &card_check(clinic, active, Some(other.medical_id)),
    )?;

    step("6. lifecycle: change on application, death");
    let new = store.change_id(other.medical_id, "card lost and misused", &issuer, now())?;
    println!(
        "  changed {} -> {}",
        other.medical_id.grouped(),
        new.grouped()
    );
    show_answer(
        "the replaced ID",
        &store,
        &CheckRequest {
            institution: clinic,
            key: CheckKey::MedicalId(other.medical_id),
            date: today(),
            visit_consent: false,
            idempotency_key: None,
        },
    )?;
    let until = store.record_death(new, today(), "demo", now())?;
    println!(
        "  death recorded for {}; kept for research until {until}",
        new.grouped()
    );
    show_answer(
        "after death",
        &store,
        &CheckRequest {
            institution: clinic,
            key: CheckKey::MedicalId(new),
            date: today(),
            visit_consent: false,
            idempotency_key: None,
        },
    )?;

    step("7. status");
    let c = store.counts()?;
    println!(
        "  {} persons, {} IDs ever issued, {} cards, {} service-use entries, {} open conflicts, {} open mismatches",
        c.persons, c.issued_ids, c.cards, c.service_uses, c.open_conflicts, c.open_mismatches
    );
    println!(
        "\nTry: iryo-directory --data-dir {} show --medical-id {}",
        ctx.config.data_dir.display(),
        active.medical_id
    );
    println!(
        "     iryo-directory --data-dir {} conflicts list",
        ctx.config.data_dir.display()
    );
    Ok(())
}
