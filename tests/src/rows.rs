//! Enrollment rows and files for the registry's end-to-end tests: one person per
//! row, fields by position in the header, changed one at a time.

use crate::{write_enrollment, Backend, Directory};
use iryo_proto::{InsurerNumber, MedicalId, MyNumber};

pub fn kyokai() -> String {
    InsurerNumber::from_body("0113001").unwrap().to_string()
}

pub fn society() -> String {
    InsurerNumber::from_body("0627014").unwrap().to_string()
}

pub fn my(i: u64) -> String {
    MyNumber::from_body(12_345_000_000 + i).to_string()
}

/// One row; fields by position in the header.
#[derive(Clone)]
pub struct Row(pub Vec<String>);

impl Row {
    pub fn person(i: u64) -> Self {
        Row(vec![
            "kyokai".into(),
            kyokai(),
            "10000001".into(),
            format!("{}", 100 + i),
            "00".into(),
            "insured".into(),
            my(i),
            format!("山田 太郎{i}").replace(char::is_numeric, ""),
            "ヤマダ タロウ".into(),
            "1980-04-01".into(),
            "1".into(),
            "東京都千代田区千代田1-1".into(),
            "2020-04-01".into(),
            String::new(),
        ])
    }
    pub fn set(mut self, field: usize, v: &str) -> Self {
        self.0[field] = v.into();
        self
    }
    pub fn line(&self) -> String {
        self.0.join(",")
    }
}

pub const INSURER: usize = 1;
pub const NUMBER: usize = 3;
pub const KIND: usize = 0;
pub const MY: usize = 6;
pub const KANA: usize = 8;
pub const BIRTH: usize = 9;
pub const NAME: usize = 7;
pub const ADDRESS: usize = 11;
pub const FROM: usize = 12;
pub const UNTIL: usize = 13;

pub fn file(d: &Directory, name: &str, rows: &[Row]) -> String {
    let path = d.path(name);
    let lines: Vec<String> = rows.iter().map(Row::line).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    write_enrollment(&path, &refs);
    path.display().to_string()
}

/// A directory with persons 1 and 2 enrolled from one file.
pub fn two_enrolled() -> Directory {
    two_enrolled_on(Backend::Redb)
}

/// `two_enrolled` on `backend`.
pub fn two_enrolled_on(backend: Backend) -> Directory {
    let d = Directory::on(backend);
    d.ok(&["init"]);
    d.ok(&[
        "enroll",
        &file(&d, "a.csv", &[Row::person(1), Row::person(2)]),
    ]);
    d
}

pub fn medical_id_of(d: &Directory, my_number: &str) -> MedicalId {
    let v = d.json(&["show", "--my-number", my_number, "--json"]);
    v["person"]["medical_id"].as_str().unwrap().parse().unwrap()
}
