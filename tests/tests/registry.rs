//! The directory's registry end to end: the real `iryo-directory` binary on real redb
//! files in temp dirs and on a PostgreSQL database of its own, driven as an operator
//! would.

use iryo_proto::{MedicalId, MyNumber};
use iryo_tests::rows::*;
use iryo_tests::{on_both_backends, Backend, Directory};

on_both_backends! {
    fn init_creates_private_keys_and_refuses_to_run_twice(backend) {
        let d = Directory::on(backend);
        let out = d.ok(&["init"]);
        assert!(out.contains("agency root public key"), "{out}");
        for f in ["agency-root.ed25519", "issuance-ff1.aes256"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(d.data.join("keys").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let err = d.fails(&["init"]);
        assert!(err.contains("refusing") || err.contains("exists"), "{err}");
        // The registry's files hold personal data; the data directory is the owner's alone.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d.data), 0o700);
        d.ok(&["status"]);
        if backend == Backend::Redb {
            for f in [
                "directory.redb",
                "linkage.redb",
                "intake-0.redb",
                "intake-1.redb",
            ] {
                assert_eq!(mode(&d.data.join(f)), 0o600, "{f}");
            }
        }
    }
}

on_both_backends! {
    fn bad_rows_are_reported_by_line_and_field_while_good_rows_are_kept(backend) {
        let d = Directory::on(backend);
        d.ok(&["init"]);
        let f = file(
            &d,
            "kyokai.csv",
            &[
                Row::person(1),
                Row::person(2).set(MY, "123456789012"),
                Row::person(3).set(KANA, "山田 タロウ"),
                Row::person(4).set(BIRTH, "2099-01-01"),
                Row::person(5).set(KIND, "society"),
                Row::person(6),
            ],
        );
        let out = d.run(&["enroll", &f, "--json"]);
        assert_eq!(out.status.code(), Some(3), "rejected rows give exit code 3");
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary[0]["new"], 2);
        assert_eq!(summary[0]["rejected"], 4);
        let errors = std::fs::read_to_string(format!("{f}.errors.csv")).unwrap();
        assert!(errors.starts_with("line,field,value,reason"), "{errors}");
        assert!(
            errors.contains("3,my_number,123456789012,\"My Number: check digit"),
            "{errors}"
        );
        assert!(errors.contains("4,kana_name"), "{errors}");
        assert!(
            errors.contains('山'),
            "the bad character is named: {errors}"
        );
        assert!(errors.contains("5,birth_date"), "{errors}");
        assert!(errors.contains("6,insurer_number"), "{errors}");
        assert_eq!(d.json(&["status"])["persons"], 2);
    }
}

on_both_backends! {
    fn enrolling_the_same_file_again_changes_nothing(backend) {
        let d = Directory::on(backend);
        d.ok(&["init"]);
        let rows: Vec<Row> = (0..50).map(Row::person).collect();
        let f = file(&d, "a.csv", &rows);
        d.ok(&["enroll", &f]);
        let before = d.snapshot();
        let again = d.json(&["enroll", &f, "--json"]);
        assert_eq!(again[0]["unchanged"], 50);
        assert_eq!(again[0]["new"], 0);
        assert_eq!(d.snapshot(), before);
    }
}

on_both_backends! {
    fn shift_jis_and_bom_files_are_read(backend) {
        let d = Directory::on(backend);
        d.ok(&["init"]);
        let mut text = String::from(iryo_tests::HEADER);
        text.push('\n');
        text.push_str(&Row::person(1).set(KANA, "ﾔﾏﾀﾞ ﾀﾛｳ").line());
        text.push('\n');
        let sjis = encoding_rs::SHIFT_JIS.encode(&text).0.into_owned();
        let path = d.path("nhi.csv");
        std::fs::write(&path, &sjis).unwrap();
        let p = path.display().to_string();
        // Forced to read it as UTF-8 it is garbage, and the error says what to do.
        let out = d.run(&["enroll", "--encoding", "utf-8", &p]);
        assert_eq!(out.status.code(), Some(3));
        let errors = std::fs::read_to_string(format!("{p}.errors.csv")).unwrap();
        assert!(errors.contains("--encoding"), "{errors}");
        // Without a byte-order mark or --encoding, Shift_JIS is recognised.
        let out = d.ok(&["enroll", &p]);
        assert!(out.contains("read as shift_jis (detected)"), "{out}");
        let v = d.json(&["show", "--my-number", &my(1), "--json"]);
        assert_eq!(v["person"]["identity"]["kana"], "ヤマダ　タロウ");
        assert_eq!(v["person"]["identity"]["name"], "山田　太郎");

        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(
            format!("{}\n{}\n", iryo_tests::HEADER, Row::person(2).line()).as_bytes(),
        );
        let path = d.path("bom.csv");
        std::fs::write(&path, bom).unwrap();
        // The BOM wins over --encoding.
        d.ok(&[
            "enroll",
            "--encoding",
            "shift_jis",
            &path.display().to_string(),
        ]);
        assert_eq!(d.json(&["status"])["persons"], 2);
    }
}

on_both_backends! {
    fn a_person_who_moves_insurer_keeps_one_id_and_old_dates(backend) {
        let d = Directory::on(backend);
        d.ok(&["init"]);
        let old = Row::person(1).set(UNTIL, "2024-03-31");
        let new = Row::person(1)
            .set(KIND, "society")
            .set(INSURER, &society())
            .set(NUMBER, "77")
            .set(12, "2024-04-01");
        d.ok(&["enroll", &file(&d, "old.csv", &[old])]);
        let id = medical_id_of(&d, &my(1));
        let s = d.json(&["enroll", &file(&d, "new.csv", &[new]), "--json"]);
        assert_eq!(s[0]["updated"], 1);
        assert_eq!(medical_id_of(&d, &my(1)), id);
        let v = d.json(&["show", "--my-number", &my(1), "--json"]);
        let cov = v["person"]["coverages"].as_array().unwrap();
        assert_eq!(cov.len(), 2);
        assert_eq!(cov[0]["until"], "2024-03-31");
        assert_eq!(cov[1]["from"], "2024-04-01");
        // The old card answers for itself; the medical ID finds the current coverage.
        let old_card = d.answer(&[
            "check",
            "--institution",
            "1310000011",
            "--insurer",
            &kyokai(),
            "--symbol",
            "10000001",
            "--number",
            "101",
            "--json",
        ]);
        assert_eq!(old_card["reason"], "coverage_ended");
        let by_id = d.check_by_id(&id.to_string());
        assert_eq!(by_id["reason"], "active");
        assert_eq!(by_id["coverage"]["card"]["insurer"], society());
    }
}

on_both_backends! {
    fn disagreements_become_conflicts_that_an_operator_resolves(backend) {
        let d = two_enrolled_on(backend);
        let id1 = medical_id_of(&d, &my(1));
        // Same My Number, other birth date: nothing is overwritten.
        let wrong_birth = Row::person(1).set(BIRTH, "1981-04-01").set(NUMBER, "999");
        // A card already bound to person 2 arrives with another My Number.
        let card_thief = Row::person(3).set(NUMBER, "102");
        let f = file(&d, "b.csv", &[wrong_birth, card_thief]);
        let s = d.json(&["enroll", &f, "--json"]);
        assert_eq!(s[0]["conflicts"], 2);
        let again = d.json(&["enroll", &f, "--json"]);
        assert_eq!(again[0]["conflicts"], 2);
        let list = d.json(&["conflicts", "list", "--json"]);
        assert_eq!(list.as_array().unwrap().len(), 2, "recorded once: {list}");
        let v = d.json(&["show", "--my-number", &my(1), "--json"]);
        assert_eq!(v["person"]["identity"]["birth"], "1980-04-01");

        let birth_case = list[0]["id"].as_u64().unwrap().to_string();
        let card_case = list[1]["id"].as_u64().unwrap().to_string();
        let err = d.fails(&[
            "conflicts",
            "resolve",
            &birth_case,
            "--apply",
            "--reason",
            " ",
        ]);
        assert!(err.contains("reason"), "{err}");
        d.ok(&[
            "conflicts",
            "resolve",
            &birth_case,
            "--apply",
            "--reason",
            "insurer confirmed the birth date",
            "--operator",
            "op1",
        ]);
        let v = d.json(&["show", "--my-number", &my(1), "--json"]);
        assert_eq!(v["person"]["identity"]["birth"], "1981-04-01");
        assert_eq!(v["person"]["medical_id"], id1.to_string());
        assert_eq!(v["person"]["coverages"].as_array().unwrap().len(), 2);
        d.ok(&[
            "conflicts",
            "resolve",
            &card_case,
            "--dismiss",
            "--reason",
            "typo in the card number",
        ]);
        assert_eq!(
            d.json(&["conflicts", "list", "--json"])
                .as_array()
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            d.json(&["conflicts", "list", "--all", "--json"])
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let err = d.fails(&[
            "conflicts",
            "resolve",
            &card_case,
            "--dismiss",
            "--reason",
            "again",
        ]);
        assert!(err.contains("resolved already"), "{err}");
    }
}

on_both_backends! {
    fn assignment_and_letters(backend) {
        let d = Directory::on(backend);
        d.ok(&["init"]);
        let rows: Vec<Row> = (0..5).map(Row::person).collect();
        d.ok(&["enroll", &file(&d, "a.csv", &rows)]);
        let out = d.path("assign.csv");
        let o = out.display().to_string();
        d.ok(&["assign", "--insurer", &kyokai(), "--out", &o]);
        let mut r = csv::Reader::from_path(&out).unwrap();
        let headers = r.headers().unwrap().clone();
        assert_eq!(
            headers.iter().collect::<Vec<_>>(),
            [
                "insurer_number",
                "card_symbol",
                "card_number",
                "branch",
                "my_number",
                "medical_id"
            ]
        );
        let recs: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(recs.len(), 5);
        for rec in &recs {
            let id: MedicalId = rec[5].parse().unwrap();
            assert_eq!(medical_id_of(&d, &rec[4]), id);
        }
        d.ok(&["assign", "--insurer", &kyokai(), "--out", &o]);
        assert_eq!(
            csv::Reader::from_path(&out).unwrap().records().count(),
            0,
            "only rows not yet assigned"
        );
        d.ok(&["assign", "--insurer", &kyokai(), "--out", &o, "--all"]);
        assert_eq!(csv::Reader::from_path(&out).unwrap().records().count(), 5);
        let v = d.json(&["show", "--my-number", &my(0), "--json"]);
        assert!(v["person"]["coverages"][0]["assigned_at"].is_i64());

        let (letters, rows) = d.print_letters("letters", &[]);
        let text = std::fs::read_to_string(letters.join("letters.csv")).unwrap();
        assert!(text.contains("東京都千代田区千代田1-1"), "{text}");
        assert_eq!(text.lines().count(), 6);
        // The PDF opens and carries each medical ID as 4-4-4-4, read back by pdftotext.
        let pdf_text = pdftotext(&letters.join("letters-0001.pdf"));
        let id0 = medical_id_of(&d, &my(0));
        assert!(pdf_text.contains(&id0.grouped()), "{pdf_text}");
        assert!(pdf_text.contains("医療ID"), "{pdf_text}");
        let code = rows[0]["activation_code"].clone();
        assert!(pdf_text.contains(&code), "the activation code is printed");
        assert!(
            !d.stores(&code),
            "the activation code is stored only as a hash"
        );
        let plan1 = d.path("plan1");
        d.ok(&[
            "letters",
            "--plan",
            "insurer",
            "--out",
            &plan1.display().to_string(),
            "--all",
        ]);
        assert!(std::fs::read_to_string(plan1.join("letters.csv"))
            .unwrap()
            .contains(&kyokai()));
    }
}

on_both_backends! {
    fn a_letter_carries_every_field_and_embeds_only_the_glyphs_it_uses(backend) {
        let d = Directory::on(backend);
        d.ok(&["init"]);
        // A postal code in its own column, and an address too long for one line.
        let long = "北海道札幌市中央区北一条西二丁目一番地 札幌中央ビルディング第三別館十二階 一二三四号室 山田様方";
        let line = Row::person(1).set(ADDRESS, long).line();
        let path = d.path("a.csv");
        std::fs::write(
            &path,
            format!(
                "{},postal_code\n{line},０６０－０００１\n",
                iryo_tests::HEADER
            ),
        )
        .unwrap();
        d.ok(&["enroll", &path.display().to_string()]);
        let (out, letters) = d.print_letters("letters", &[]);
        let pdf = out.join("letters-0001.pdf");
        let size = std::fs::metadata(&pdf).unwrap().len();
        assert!(size < 200_000, "a one-letter PDF is {size} bytes");
        let text = pdftotext(&pdf);
        let flat: String = text.split_whitespace().collect();
        let id = medical_id_of(&d, &my(1));
        let code = letters[0]["activation_code"].clone();
        for field in [
            "〒060-0001",
            &long.replace(' ', ""),
            "山田太郎様",
            &id.grouped(),
            &code,
            "発行日令和",
            "有効期限令和",
            "医療IDとは",
            "コードをなくしたとき",
            "医療ID管理機関お問い合わせ窓口",
        ] {
            assert!(
                flat.contains(field),
                "{field} missing from the letter:\n{text}"
            );
        }
        // The address wraps instead of running off the page: more than one line holds it.
        let holding = text
            .lines()
            .filter(|l| long.contains(l.trim()) && !l.trim().is_empty())
            .count();
        assert!(holding >= 2, "{text}");
    }
}

fn pdftotext(pdf: &std::path::Path) -> String {
    let out = std::process::Command::new("pdftotext")
        .arg(pdf)
        .arg("-")
        .output()
        .expect("pdftotext (Debian's poppler-utils, installed by .ci/run)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

on_both_backends! {
    fn checks_record_service_use_and_mismatches(backend) {
        let d = two_enrolled_on(backend);
        let id1 = medical_id_of(&d, &my(1)).to_string();
        let id2 = medical_id_of(&d, &my(2)).to_string();
        let card1 = [
            "--insurer",
            &kyokai(),
            "--symbol",
            "１００００００１",
            "--number",
            "101",
            "--branch",
            "0",
        ]
        .map(String::from);
        let mut args: Vec<&str> = vec![
            "check",
            "--institution",
            "1310000011",
            "--json",
            "--date",
            "2026-01-05",
        ];
        args.extend(card1.iter().map(String::as_str));
        let a = d.answer(&args);
        assert_eq!(a["eligible"], true);
        assert_eq!(a["medical_id"], id1);
        let by_id = d.answer(&[
            "check",
            "--institution",
            "0110113719",
            "--medical-id",
            &id1,
            "--json",
        ]);
        assert_eq!(by_id["reason"], "active");
        let unknown = d.answer(&[
            "check",
            "--institution",
            "0110113719",
            "--medical-id",
            &MedicalId::from_body(5).to_string(),
            "--json",
        ]);
        assert_eq!(unknown["reason"], "not_found");

        let v = d.json(&["show", "--medical-id", &id1, "--json"]);
        let uses = v["service_use"].as_array().unwrap();
        assert_eq!(uses.len(), 2);
        assert_eq!(uses[0]["institution"], "1310000011");
        assert_eq!(uses[0]["date"], "2026-01-05");

        // Person 1's card presented with person 2's medical ID.
        let mut args: Vec<&str> = vec![
            "check",
            "--institution",
            "1310000011",
            "--json",
            "--medical-id",
            &id2,
        ];
        args.extend(card1.iter().map(String::as_str));
        let a = d.answer(&args);
        assert!(a["mismatch"].is_u64(), "{a}");
        let list = d.json(&["mismatches", "list", "--json"]);
        assert_eq!(list.as_array().unwrap().len(), 1);
        let notices = d.ok(&["notices", "--insurer", &kyokai()]);
        assert!(notices.contains("1310000011"), "{notices}");
        assert_eq!(
            d.ok(&["notices"]).matches('#').count(),
            2,
            "person and insurer notified"
        );
        // The operator finds the card was bound to the wrong person and moves it.
        let case = list[0]["id"].as_u64().unwrap().to_string();
        d.ok(&[
            "mismatches",
            "resolve",
            &case,
            "--action",
            "rebind",
            "--reason",
            "insurer confirmed card belongs to person 2",
        ]);
        let mut args: Vec<&str> = vec!["check", "--institution", "1310000011", "--json"];
        args.extend(card1.iter().map(String::as_str));
        assert_eq!(d.answer(&args)["medical_id"], id2);
        assert_eq!(
            d.json(&["mismatches", "list", "--json"])
                .as_array()
                .unwrap()
                .len(),
            0
        );
    }
}

on_both_backends! {
    fn change_death_and_retirement(backend) {
        let d = two_enrolled_on(backend);
        let old = medical_id_of(&d, &my(1)).to_string();
        let err = d.fails(&["change", "--medical-id", &old, "--reason", ""]);
        assert!(err.contains("reason"), "{err}");
        let out = d.ok(&["change", "--medical-id", &old, "--reason", "leaked"]);
        let new = medical_id_of(&d, &my(1)).to_string();
        assert_ne!(new, old);
        assert!(
            out.contains(&MedicalId::parse(&new).unwrap().grouped()),
            "{out}"
        );
        let a = d.check_by_id(&old);
        assert_eq!(a["reason"], "id_changed");
        assert_eq!(a["medical_id"], new);
        let err = d.fails(&["change", "--medical-id", &old, "--reason", "again"]);
        assert!(err.contains("changed"), "{err}");
        let v = d.json(&["show", "--medical-id", &old, "--json"]);
        assert_eq!(
            v["person"]["medical_id"], new,
            "the old ID still finds the person"
        );
        assert!(d.ok(&["show", "--medical-id", &new]).contains("leaked"));

        // A new My Number keeps the medical ID; the old number still finds the person.
        let renumbered = MyNumber::from_body(99_999_999_999).to_string();
        d.ok(&["my-number-change", "--old", &my(1), "--new", &renumbered]);
        assert_eq!(medical_id_of(&d, &renumbered).to_string(), new);
        let err = d.fails(&["my-number-change", "--old", &my(2), "--new", &renumbered]);
        assert!(err.contains("registered already"), "{err}");

        let id2 = medical_id_of(&d, &my(2)).to_string();
        d.ok(&["death", "--medical-id", &id2, "--date", "2025-01-10"]);
        let a = d.answer(&[
            "check",
            "--institution",
            "1310000011",
            "--medical-id",
            &id2,
            "--json",
            "--date",
            "2025-02-01",
        ]);
        assert_eq!(a["reason"], "deceased");
        assert!(d.ok(&["retire-due"]).starts_with("0 medical IDs retired"));
        // Retirement is never judged as of a day to come.
        let err = d.fails(&["retire-due", "--date", "2100-01-01"]);
        assert!(err.contains("in the future"), "{err}");
        // The date was wrong: corrected, the retention period runs from the new date.
        d.ok(&[
            "death",
            "--correct",
            "--medical-id",
            &id2,
            "--date",
            "2014/01/10",
            "--reason",
            "municipality corrected the date",
        ]);
        let out = d.ok(&["retire-due"]);
        assert!(out.starts_with("1 medical IDs retired"), "{out}");
        let a = d.check_by_id(&id2);
        assert_eq!(a["reason"], "retired");
        let counts = d.json(&["status"]);
        assert_eq!(
            counts["issued_ids"], 3,
            "two persons, one change: every ID stays issued"
        );
    }
}

on_both_backends! {
    fn random_issuance_gives_valid_distinct_ids(backend) {
        let d = Directory::on(backend);
        d.ok(&["init", "--method", "random"]);
        let rows: Vec<Row> = (0..200).map(Row::person).collect();
        d.ok(&["enroll", &file(&d, "a.csv", &rows)]);
        let ids: std::collections::HashSet<MedicalId> =
            d.persons().iter().map(|p| p.medical_id).collect();
        assert_eq!(ids.len(), 200);
        assert_eq!(
            d.with_store(|s| s.method().unwrap()),
            iryo_directory::issuance::Method::Random
        );
        // Made by the method `init` fixed, whatever a config says later.
        let again = d.json(&["enroll", &file(&d, "b.csv", &[Row::person(200)]), "--json"]);
        assert_eq!(again[0]["new"], 1);
        assert_eq!(d.persons().len(), 201);
    }
}

on_both_backends! {
    fn sample_files_enroll_with_their_broken_rows_reported(backend) {
        let d = Directory::on(backend);
        d.ok(&["init"]);
        let dir = d.path("sample");
        let out = d.ok(&[
            "sample",
            "--persons",
            "400",
            "--seed",
            "3",
            "--bad-rows",
            "5",
            "--out",
            &dir.display().to_string(),
        ]);
        assert!(out.contains("broken on purpose"), "{out}");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path().display().to_string())
            .filter(|p| p.ends_with(".csv"))
            .collect();
        files.sort();
        assert_eq!(files.len(), 8);
        let mut args = vec!["enroll", "--json"];
        args.extend(files.iter().map(String::as_str));
        let out = d.run(&args);
        assert_eq!(out.status.code(), Some(3));
        let summaries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rejected: u64 = summaries
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["rejected"].as_u64().unwrap())
            .sum();
        let new: u64 = summaries
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["new"].as_u64().unwrap())
            .sum();
        assert!(rejected > 0 && new > 300, "rejected {rejected}, new {new}");
    }
}

on_both_backends! {
    fn commands_run_at_once_take_turns_instead_of_refusing_each_other(backend) {
        let d = two_enrolled_on(backend);
        let runs: Vec<std::process::Child> = (0..4)
            .map(|_| {
                d.command(&["status"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for r in runs {
            let out = r.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
