//! The registry keeps its records right: physical line numbers, rows that do not fit
//! the header, old files sent again, corrections that keep what they replace,
//! impossible dates, deaths corrected or revoked, notices, letters, encodings — and a
//! command line that says what it did and what went wrong. Real `iryo-directory`
//! processes on redb files in temp dirs.

use iryo_tests::rows::*;
use iryo_tests::{on_both_backends, Directory, HEADER};

/// Writes `lines` (header first) joined by `end`, as the insurer's system would:
/// in UTF-8, with a byte-order mark, or in Shift_JIS without one.
fn write_in(d: &Directory, name: &str, lines: &[String], end: &str, form: Form) -> String {
    let path = d.path(name);
    let mut text = lines.join(end);
    text.push_str(end);
    let bytes = match form {
        Form::Utf8 => text.into_bytes(),
        Form::Bom => [b"\xEF\xBB\xBF".as_slice(), text.as_bytes()].concat(),
        Form::ShiftJis => encoding_rs::SHIFT_JIS.encode(&text).0.into_owned(),
    };
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

fn write_with(d: &Directory, name: &str, lines: &[String], end: &str) -> String {
    write_in(d, name, lines, end, Form::Utf8)
}

#[derive(Clone, Copy, Debug)]
enum Form {
    Utf8,
    Bom,
    ShiftJis,
}

fn errors_of(file: &str) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(format!("{file}.errors.csv"))
        .unwrap()
        .records()
        .map(Result::unwrap)
        .collect()
}

on_both_backends! {
    fn error_lines_are_physical_lines_for_lf_crlf_and_cr_files(backend) {
        let ends = [("\n", "lf"), ("\r\n", "crlf"), ("\r", "cr")];
        let forms = [Form::Utf8, Form::Bom, Form::ShiftJis];
        for ((end, tag), form) in ends
            .iter()
            .flat_map(|e| forms.iter().map(move |f| (*e, *f)))
        {
            let tag = format!("{tag}-{form:?}");
            let d = Directory::on(backend);
            d.ok(&["init"]);
            let quoted = Row::person(2).set(ADDRESS, "\"東京都\n千代田区\"");
            let lines = vec![
                HEADER.to_string(),
                Row::person(1).line(),
                quoted.line().replace('\n', end),
                String::new(),
                Row::person(3).set(MY, "123456789012").line(),
                format!("{},extra", Row::person(4).line()),
            ];
            let f = write_in(&d, &format!("{tag}.csv"), &lines, end, form);
            let out = d.run(&["enroll", &f]);
            assert_eq!(out.status.code(), Some(3), "{tag}");
            let errors = errors_of(&f);
            let at: Vec<(&str, &str)> = errors.iter().map(|e| (&e[0], &e[1])).collect();
            // Header 1, person 1 on 2, an address with a line break on 3-4 (refused: a
            // line break is no part of an address), a blank line 5.
            assert_eq!(
                at,
                [("3", "address"), ("6", "my_number"), ("7", "(row)")],
                "{tag}: {errors:?}"
            );
            assert!(errors[2][3].starts_with("too_many_fields"), "{errors:?}");
            assert_eq!(&errors[2][2], "extra");
            assert_eq!(d.json(&["status"])["persons"], 1, "{tag}");
            // A conflict names the same physical line.
            let conflict = Row::person(1).set(BIRTH, "1981-01-01").set(NUMBER, "999");
            let g = write_with(
                &d,
                &format!("{tag}-b.csv"),
                &[HEADER.to_string(), String::new(), conflict.line()],
                end,
            );
            d.ok(&["enroll", &g]);
            let list = d.json(&["conflicts", "list", "--json"]);
            let source = list[0]["source"].as_str().unwrap();
            assert!(source.ends_with(":3"), "{tag}: {source}");
        }
    }
}

on_both_backends! {
    fn an_old_file_sent_again_changes_nothing_and_every_change_is_in_the_history(backend) {
        let d = Directory::on(backend);
        d.ok(&["init"]);
        let first = Row::person(1).set(ADDRESS, "旧住所 1-1");
        let old = file(&d, "2022.csv", std::slice::from_ref(&first));
        d.ok(&["enroll", &old]);
        let ended = file(&d, "2023.csv", &[first.set(UNTIL, "2023-03-31")]);
        d.ok(&["enroll", &ended]);
        let moved = Row::person(1)
            .set(KIND, "society")
            .set(INSURER, &society())
            .set(NUMBER, "77")
            .set(FROM, "2023-04-01")
            .set(ADDRESS, "新住所 2-2");
        let new = file(&d, "2024.csv", &[moved]);
        d.ok(&["enroll", &new]);
        let before = d.json(&["show", "--my-number", &my(1), "--json"]);
        let again = d.json(&["enroll", &old, "--json"]);
        assert_eq!(again[0]["unchanged"], 1, "{again}");
        let after = d.json(&["show", "--my-number", &my(1), "--json"]);
        assert_eq!(after["person"]["address"], "新住所 2-2");
        assert_eq!(after["person"]["coverages"][0]["until"], "2023-03-31");
        assert_eq!(before, after);
        let text = d.ok(&["show", "--my-number", &my(1)]);
        assert!(
            text.contains(&format!(
                "address changed from 旧住所 1-1 to 新住所 2-2 (source: {new}:2)"
            )),
            "{text}"
        );
        assert!(
            text.contains("until 2023-03-31") && text.contains(&format!("{ended}:2")),
            "{text}"
        );
    }
}

on_both_backends! {
    fn applying_a_conflict_keeps_the_values_it_replaces(backend) {
        let d = two_enrolled_on(backend);
        let row = Row::person(1)
            .set(BIRTH, "1981-04-01")
            .set(NAME, "山田 次郎")
            .set(NUMBER, "999");
        d.ok(&["enroll", &file(&d, "b.csv", &[row])]);
        let list = d.json(&["conflicts", "list", "--json"]);
        let id = list[0]["id"].as_u64().unwrap().to_string();
        d.ok(&[
            "conflicts",
            "resolve",
            &id,
            "--apply",
            "--reason",
            "insurer confirmed",
            "--operator",
            "op1",
        ]);
        let v = d.json(&["show", "--my-number", &my(1), "--json"]);
        let history = v["person"]["history"].as_array().unwrap();
        let changed = |field: &str| {
            history
                .iter()
                .find_map(|e| e["Changed"].as_object().filter(|c| c["field"] == field))
                .unwrap_or_else(|| panic!("no change of {field}: {history:?}"))
                .clone()
        };
        let birth = changed("birth_date");
        assert_eq!(birth["old"], "1980-04-01");
        assert_eq!(birth["new"], "1981-04-01");
        let source = birth["source"].as_str().unwrap();
        assert!(
            source.contains(&format!("conflict {id}")) && source.contains("op1"),
            "{source}"
        );
        assert_eq!(changed("name")["old"], "山田　太郎");
    }
}

on_both_backends! {
    fn impossible_dates_are_refused(backend) {
        let d = two_enrolled_on(backend);
        let id = medical_id_of(&d, &my(1)).to_string();
        let err = d.fails(&["death", "--medical-id", &id, "--date", "1850-01-01"]);
        assert!(err.contains("before the person's birth date"), "{err}");
        let err = d.fails(&["death", "--medical-id", &id, "--date", "2999-01-01"]);
        assert!(err.contains("in the future"), "{err}");
        let err = d.fails(&["retire-due", "--date", "2100-01-01"]);
        assert!(err.contains("in the future"), "{err}");
        let err = d.fails(&[
            "check",
            "--institution",
            "1310000011",
            "--medical-id",
            &id,
            "--date",
            "2999-01-01",
        ]);
        assert!(
            err.contains("date of service 2999-01-01 is in the future"),
            "{err}"
        );
        let v = d.json(&["show", "--medical-id", &id, "--json"]);
        assert!(v["person"]["death"].is_null());
        assert_eq!(v["service_use"].as_array().unwrap().len(), 0);
        // One date parser, one message naming the accepted forms.
        let err = d.fails(&["death", "--medical-id", &id, "--date", "2026-02-30"]);
        assert!(
            err.contains("YYYY-MM-DD") && !err.contains("out of range"),
            "{err}"
        );
    }
}

on_both_backends! {
    fn a_death_is_corrected_or_revoked_with_a_reason_and_never_overwritten(backend) {
        let d = two_enrolled_on(backend);
        let id = medical_id_of(&d, &my(1)).to_string();
        d.ok(&["death", "--medical-id", &id, "--date", "2025/01/10"]);
        let err = d.fails(&["death", "--medical-id", &id, "--date", "2025-02-10"]);
        assert!(err.contains("--correct"), "{err}");
        let err = d.fails(&[
            "death",
            "--correct",
            "--medical-id",
            &id,
            "--date",
            "2025-02-10",
        ]);
        assert!(err.contains("--reason"), "{err}");
        d.ok(&[
            "death",
            "--correct",
            "--medical-id",
            &id,
            "--date",
            "2025-02-10",
            "--reason",
            "date misread",
        ]);
        d.ok(&[
            "death",
            "--revoke",
            "--medical-id",
            &id,
            "--reason",
            "recorded for the wrong person",
            "--operator",
            "op2",
        ]);
        let a = d.check_by_id(&id);
        assert_eq!(a["reason"], "active");
        let text = d.ok(&["show", "--medical-id", &id]);
        assert!(
            text.contains("date of death corrected from 2025-01-10 to 2025-02-10"),
            "{text}"
        );
        assert!(
            text.contains("death of 2025-02-10 revoked by op2"),
            "{text}"
        );
        let err = d.fails(&["death", "--revoke", "--medical-id", &id, "--reason", "x"]);
        assert!(err.contains("no death is recorded"), "{err}");
    }
}

on_both_backends! {
    fn checks_say_the_same_words_in_text_and_json_with_exit_codes(backend) {
        let d = two_enrolled_on(backend);
        let old = medical_id_of(&d, &my(1)).to_string();
        d.ok(&["change", "--medical-id", &old, "--reason", "card lost"]);
        let new = medical_id_of(&d, &my(1));
        let args = ["check", "--institution", "1310000011", "--medical-id"];
        let out = d.run(&[&args[..], &[&old]].concat());
        assert_eq!(out.status.code(), Some(4));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("NOT ELIGIBLE (id_changed)"), "{text}");
        assert!(
            text.contains(&format!("successor medical ID: {}", new.grouped())),
            "{text}"
        );
        let unknown = iryo_proto::MedicalId::from_body(5).to_string();
        let out = d.run(&[&args[..], &[&unknown]].concat());
        assert_eq!(out.status.code(), Some(5));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("NOT ELIGIBLE (not_found)"));
        let out = d.run(&[&args[..], &[&new.to_string()]].concat());
        assert_eq!(out.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ELIGIBLE (active)"));
        let help = d.ok(&["check", "--help"]);
        assert!(
            help.contains("Exit codes: 0 eligible, 4 not eligible, 5"),
            "{help}"
        );
    }
}

on_both_backends! {
    fn a_persons_notice_shows_only_their_own_data(backend) {
        let d = two_enrolled_on(backend);
        let id1 = medical_id_of(&d, &my(1));
        let id2 = medical_id_of(&d, &my(2));
        let a = d.answer(&[
            "check",
            "--institution",
            "1310000011",
            "--json",
            "--insurer",
            &kyokai(),
            "--symbol",
            "10000001",
            "--number",
            "101",
            "--medical-id",
            &id2.to_string(),
        ]);
        assert!(a["mismatch"].is_u64(), "{a}");
        let notices = d.ok(&["notices"]);
        assert!(
            !notices.contains("Person {") && !notices.contains("Insurer {"),
            "{notices}"
        );
        let person = notices
            .split('#')
            .find(|n| n.contains("to the person"))
            .unwrap_or_else(|| panic!("{notices}"));
        assert!(person.contains(&id1.grouped()), "{person}");
        assert!(!person.contains(&id2.grouped()), "{person}");
    }
}

on_both_backends! {
    fn letters_codes_take_effect_only_once_the_letters_are_written(backend) {
        let d = two_enrolled_on(backend);
        let blocked = d.path("not-a-dir");
        std::fs::write(&blocked, "a file where the letters' directory should be").unwrap();
        d.fails(&[
            "letters",
            "--plan",
            "agency",
            "--out",
            &blocked.display().to_string(),
        ]);
        d.with_store(|store| {
            for p in store.first_persons(usize::MAX).unwrap() {
                assert!(p.notified_at.is_none());
                let account = store.account(p.pid).unwrap();
                assert!(
                    account.is_none_or(|a| a.activation.is_none()),
                    "no code issued for letters never written"
                );
            }
        });
        let (out, _) = d.print_letters("letters", &[]);
        let csv = out.join("letters.csv");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&csv).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "letters.csv carries activation codes");
        assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 3);
        // Nobody left to write to: the files still say what their columns are.
        let empty = d.path("none");
        d.ok(&[
            "letters",
            "--plan",
            "agency",
            "--out",
            &empty.display().to_string(),
        ]);
        let text = std::fs::read_to_string(empty.join("letters.csv")).unwrap();
        assert!(text.starts_with("file,page,sender,name"), "{text:?}");
        let assign = d.path("assign.csv");
        let a = assign.display().to_string();
        d.ok(&["assign", "--insurer", &kyokai(), "--out", &a]);
        d.ok(&["assign", "--insurer", &kyokai(), "--out", &a]);
        let text = std::fs::read_to_string(&assign).unwrap();
        assert_eq!(
            text.trim(),
            "insurer_number,card_symbol,card_number,branch,my_number,medical_id"
        );
    }
}

on_both_backends! {
    fn a_file_in_neither_encoding_is_refused_and_others_are_named(backend) {
        let d = Directory::on(backend);
        d.ok(&["init"]);
        let path = d.path("bad.csv");
        let mut bytes = format!("{HEADER}\n").into_bytes();
        bytes.extend_from_slice(b"kyokai,\x81\x20\xff,1\n");
        std::fs::write(&path, bytes).unwrap();
        let err = d.fails(&["enroll", &path.display().to_string()]);
        assert!(err.contains("neither UTF-8 nor Shift_JIS"), "{err}");
        let utf8 = file(&d, "a.csv", &[Row::person(1)]);
        let out = d.ok(&["enroll", &utf8]);
        assert!(out.contains("read as utf-8 (detected)"), "{out}");
    }
}

on_both_backends! {
    fn errors_are_said_once_and_every_file_is_checked_first(backend) {
        let d = Directory::on(backend);
        d.ok(&["init"]);
        let one = file(&d, "one.csv", &[Row::person(1)]);
        let two = file(&d, "two.csv", &[Row::person(2)]);
        let missing = d.path("missing.csv").display().to_string();
        let err = d.fails(&["enroll", &one, &missing, &two]);
        assert_eq!(err.matches("os error 2").count(), 1, "{err}");
        assert!(
            err.contains("missing.csv") && err.contains("nothing was enrolled"),
            "{err}"
        );
        assert_eq!(d.json(&["status"])["persons"], 0);
        // Logs to a pipe carry no terminal colours.
        let out = d
            .command(&["enroll", &one])
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        assert!(out.status.success());
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!log.is_empty() && !log.contains('\u{1b}'), "{log}");
    }
}

#[test]
fn a_database_in_use_names_its_holder() {
    let d = two_enrolled();
    iryo_directory::store::describe_holder("iryo-directory enroll (test)");
    let _held = iryo_directory::store::Store::open(&d.db(), 16).unwrap();
    let err = d.fails(&["status"]);
    assert!(
        err.contains(&format!(
            "in use by process {} (iryo-directory enroll (test))",
            std::process::id()
        )),
        "{err}"
    );
    assert!(!err.contains("is `iryo-directory serve` running"), "{err}");
}

on_both_backends! {
    fn consent_for_zero_days_is_refused_and_a_day_lasts_a_day(backend) {
        let d = two_enrolled_on(backend);
        let id = medical_id_of(&d, &my(1)).to_string();
        let err = d.fails(&["consent", "grant", "--medical-id", &id, "--days", "0"]);
        assert!(err.contains("--days"), "{err}");
        d.ok(&["consent", "grant", "--medical-id", &id, "--days", "1"]);
        let list = d.json(&["consent", "list", "--medical-id", &id, "--json"]);
        let v = &list[0];
        assert_eq!(
            v["expires_at"].as_i64().unwrap() - v["at"].as_i64().unwrap(),
            86_400
        );
    }
}

on_both_backends! {
    fn keys_are_never_silently_replaced(backend) {
        let d = Directory::on(backend);
        d.ok(&["init"]);
        let keys = d.data.join("keys");
        // init made the service's identity; none is left half-written.
        assert_eq!(
            std::fs::read(keys.join("directory-p2p.ed25519"))
                .unwrap()
                .len(),
            32
        );
        assert!(std::fs::read_dir(&keys).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp")));
        // A lost service key is an error naming it, not a new peer id.
        std::fs::remove_file(keys.join("directory-p2p.ed25519")).unwrap();
        let err = d.fails(&[
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--https",
            "127.0.0.1:0",
        ]);
        assert!(
            err.contains("directory-p2p.ed25519 is missing") && err.contains("keys new-p2p"),
            "{err}"
        );
        d.ok(&["keys", "new-p2p"]);
        let err = d.fails(&["keys", "new-p2p"]);
        assert!(err.contains("exists already"), "{err}");
        // Another root key than the one the log began with is refused at once.
        d.ok(&["enroll", &file(&d, "a.csv", &[Row::person(1)])]);
        let id = medical_id_of(&d, &my(1)).to_string();
        d.check_by_id(&id);
        let root = keys.join("agency-root.ed25519");
        std::fs::remove_file(&root).unwrap();
        iryo_directory::keys::write_secret(&root, &[9; 32]).unwrap();
        let err = d.fails(&["status"]);
        assert!(
            err.contains("not the key that signed this audit log"),
            "{err}"
        );
    }
}
