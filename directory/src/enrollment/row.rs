//! Validating one enrollment row into a registry row, collecting every field's error.

use super::Columns;
use crate::registry::{Card, EnrollmentRow, Identity};
use chrono::NaiveDate;
use iryo_proto::person::parse_date;
use iryo_proto::*;
use serde::Serialize;

/// One reason a row was rejected, as written to `FILE.errors.csv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowError {
    pub line: u64,
    pub field: String,
    pub value: String,
    pub reason: String,
}

/// Collects field errors so that one pass reports everything wrong with a row.
struct Check<'r> {
    cols: &'r Columns,
    record: &'r csv::StringRecord,
    line: u64,
    errors: Vec<RowError>,
}

impl Check<'_> {
    fn field<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, IdError>,
    ) -> Option<T> {
        let raw = self.cols.get(self.record, name);
        match parse(raw) {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(name, raw, e.to_string());
                None
            }
        }
    }

    fn fail(&mut self, name: &str, raw: &str, reason: String) {
        self.errors.push(RowError {
            line: self.line,
            field: name.into(),
            value: raw.chars().take(80).collect(),
            reason,
        });
    }
}

/// Validates a record. `today` bounds birth dates.
pub fn parse_row(
    cols: &Columns,
    record: &csv::StringRecord,
    line: u64,
    today: NaiveDate,
) -> Result<EnrollmentRow, Vec<RowError>> {
    if record.len() > cols.count() {
        return Err(vec![RowError {
            line,
            field: "(row)".into(),
            value: record
                .iter()
                .skip(cols.count())
                .collect::<Vec<_>>()
                .join(",")
                .chars()
                .take(80)
                .collect(),
            reason: format!(
                "too_many_fields: {} fields where the header has {}; a comma inside a value needs double quotes",
                record.len(),
                cols.count()
            ),
        }]);
    }
    let mut c = Check {
        cols,
        record,
        line,
        errors: Vec::new(),
    };
    let kind = c.field("insurer_kind", InsurerKind::parse);
    let insurer = c.field("insurer_number", InsurerNumber::parse);
    let symbol = c.field("card_symbol", CardSymbol::parse);
    let number = c.field("card_number", CardNumber::parse);
    let branch = c.field("branch", Branch::parse);
    let relation = c.field("relation", Relation::parse);
    let my_number = c.field("my_number", MyNumber::parse);
    let name = c.field("name", PersonName::parse);
    let kana = c.field("kana_name", KanaName::parse);
    let birth = c.field("birth_date", |s| BirthDate::parse(s, today));
    let sex = c.field("sex", Sex::parse);
    let from = c.field("coverage_from", |s| parse_date("coverage from", s));
    let until = c.field("coverage_until", |s| {
        if s.trim().is_empty() {
            Ok(None)
        } else {
            parse_date("coverage until", s).map(Some)
        }
    });
    let address = {
        let raw = cols.get(record, "address").trim();
        if raw.contains('\u{FFFD}') || raw.chars().any(char::is_control) {
            c.fail(
                "address",
                raw,
                "contains characters that are not text in the file's encoding".into(),
            );
        }
        let postal = cols.get(record, "postal_code").trim();
        let postal = if postal.is_empty() {
            None
        } else {
            let code = postal_code(postal);
            if code.is_none() {
                c.fail(
                    "postal_code",
                    postal,
                    "a postal code has 7 digits, as 100-0001 or 1000001".into(),
                );
            }
            code
        };
        // The postal code leads the address, as it is written on an envelope.
        (!raw.is_empty()).then(|| {
            let address = raw.split_whitespace().collect::<Vec<_>>().join(" ");
            match postal {
                Some(p) => format!("〒{p} {address}"),
                None => address,
            }
        })
    };
    if let (Some(k), Some(i)) = (kind, &insurer) {
        if !i.fits(k) {
            let raw = cols.get(record, "insurer_number").to_string();
            let reason = match i.law_number() {
                Some(l) => format!(
                    "law number {l:02} does not belong to insurer kind {}",
                    k.as_str()
                ),
                None => format!(
                    "a 6-digit number is National Health Insurance, not {}",
                    k.as_str()
                ),
            };
            c.fail("insurer_number", &raw, reason);
        }
    }
    if let (Some(f), Some(Some(u))) = (from, until) {
        if u < f {
            let raw = cols.get(record, "coverage_until").to_string();
            c.fail(
                "coverage_until",
                &raw,
                format!("ends before coverage_from {f}"),
            );
        }
    }
    if let (Some(b), Some(f)) = (birth, from) {
        if f < b.date() {
            let raw = cols.get(record, "coverage_from").to_string();
            c.fail("coverage_from", &raw, format!("is before birth date {b}"));
        }
    }
    match (
        kind, insurer, symbol, number, branch, relation, my_number, name, kana, birth, sex, from,
        until,
    ) {
        (
            Some(kind),
            Some(insurer),
            Some(symbol),
            Some(number),
            Some(branch),
            Some(relation),
            Some(my_number),
            Some(name),
            Some(kana),
            Some(birth),
            Some(sex),
            Some(from),
            Some(until),
        ) if c.errors.is_empty() => Ok(EnrollmentRow {
            line,
            kind,
            card: Card {
                insurer,
                symbol,
                number,
                branch,
            },
            relation,
            my_number,
            identity: Identity {
                name,
                kana,
                birth,
                sex,
            },
            address,
            from,
            until,
        }),
        _ => Err(c.errors),
    }
}

/// A postal code as `NNN-NNNN` from 7 digits, half- or full-width, with or without
/// the hyphen or a leading 〒.
fn postal_code(s: &str) -> Option<String> {
    let digits: String = s
        .trim_start_matches('〒')
        .chars()
        .filter(|c| !matches!(c, '-' | '－' | 'ー' | ' ' | '　'))
        .map(|c| match c {
            '０'..='９' => char::from_u32(c as u32 - '０' as u32 + '0' as u32).unwrap_or(c),
            c => c,
        })
        .collect();
    (digits.len() == 7 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("{}-{}", &digits[..3], &digits[3..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postal_codes_are_read_in_any_common_spelling() {
        for ok in [
            "100-0001",
            "1000001",
            "〒100-0001",
            "１００－０００１",
            "100 0001",
        ] {
            assert_eq!(postal_code(ok).as_deref(), Some("100-0001"), "{ok}");
        }
        for bad in ["100-001", "abc-defg", "100-00011", ""] {
            assert_eq!(postal_code(bad), None, "{bad}");
        }
    }
    use crate::enrollment::HEADER;

    fn record(fields: &[&str]) -> csv::StringRecord {
        csv::StringRecord::from(fields.to_vec())
    }

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 27).unwrap()
    }

    const GOOD: [&str; 14] = [
        "kyokai",
        "01130012",
        "１２３４",
        "56",
        "0",
        "insured",
        "983205673214",
        "山田 太郎",
        "ﾔﾏﾀﾞ ﾀﾛｳ",
        "1980-04-01",
        "1",
        "東京都千代田区",
        "2020-04-01",
        "",
    ];

    #[test]
    fn good_row_is_normalised() {
        let cols = Columns::from_header(HEADER.into_iter()).unwrap();
        let row = parse_row(&cols, &record(&GOOD), 2, today()).unwrap();
        assert_eq!(row.card.symbol.as_str(), "1234");
        assert_eq!(row.card.branch.to_string(), "00");
        assert_eq!(row.identity.kana.as_str(), "ヤマダ　タロウ");
        assert_eq!(row.until, None);
    }

    #[test]
    fn every_bad_field_is_reported_with_line() {
        let cols = Columns::from_header(HEADER.into_iter()).unwrap();
        let mut bad = GOOD;
        bad[1] = "06130012";
        bad[6] = "983205673215";
        bad[8] = "山田";
        bad[9] = "2031-01-01";
        let errs = parse_row(&cols, &record(&bad), 17, today()).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(errs.iter().all(|e| e.line == 17));
        for f in ["insurer_number", "my_number", "kana_name", "birth_date"] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn a_row_longer_than_the_header_is_refused() {
        let cols = Columns::from_header(HEADER.into_iter()).unwrap();
        let mut long = GOOD.to_vec();
        // The header's last column, the optional postal code, then one too many.
        long.push("100-0001");
        long.push("extra");
        let errs = parse_row(&cols, &record(&long), 9, today()).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].reason.starts_with("too_many_fields"), "{errs:?}");
        assert_eq!(errs[0].value, "extra");
        assert_eq!(errs[0].line, 9);
    }

    proptest::proptest! {
        /// Any row of any fields is enrolled or rejected with reasons, never a panic,
        /// and every reason names its line.
        #[test]
        fn arbitrary_rows_never_panic(fields in proptest::collection::vec(".{0,20}", 14)) {
            let cols = Columns::from_header(HEADER.into_iter()).unwrap();
            let refs: Vec<&str> = fields.iter().map(String::as_str).collect();
            if let Err(errors) = parse_row(&cols, &record(&refs), 7, today()) {
                proptest::prop_assert!(!errors.is_empty());
                proptest::prop_assert!(errors.iter().all(|e| e.line == 7));
            }
        }
    }
}
