//! The person and card fields of an enrollment row, each normalised on construction.

use crate::IdError;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Implements Display, FromStr and string-based serde for a newtype over `String`
/// whose constructor is `parse(&str)`.
macro_rules! string_type {
    ($ty:ident) => {
        impl $ty {
            /// The text as stored.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl ::std::str::FromStr for $ty {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                $ty::parse(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $ty::parse(&s)
            }
        }
        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.0
            }
        }
    };
}

const FULL_WIDTH_SPACE: char = '\u{3000}';

fn refuse_replacement(what: &'static str, s: &str) -> Result<(), IdError> {
    if s.contains('\u{FFFD}') {
        return Err(IdError::Invalid {
            what,
            reason: "contains bytes that are not valid in the file's encoding (is it Shift_JIS? see --encoding)".into(),
        });
    }
    Ok(())
}

/// Full-width ASCII (Ａ, １, －) to its half-width form; everything else unchanged.
fn fold_full_width_ascii(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        _ => c,
    }
}

/// カナ氏名: full-width katakana, family and given name separated by one full-width space.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KanaName(String);

impl KanaName {
    /// Accepts half-width katakana and hiragana and any run of spaces; refuses anything
    /// that is not kana, naming the character.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "kana name";
        refuse_replacement(WHAT, s)?;
        let folded: String = s
            .nfkc()
            .map(|c| match c {
                '\u{3041}'..='\u{3096}' | '\u{309D}' | '\u{309E}' => {
                    char::from_u32(c as u32 + 0x60).unwrap_or(c)
                }
                _ => c,
            })
            .collect();
        let parts: Vec<&str> = folded.split_whitespace().collect();
        if parts.is_empty() {
            return Err(IdError::Empty { what: WHAT });
        }
        for ch in parts.iter().flat_map(|p| p.chars()) {
            let ok = matches!(
                ch,
                '\u{30A1}'..='\u{30FA}' | '\u{30FB}' | '\u{30FC}' | '\u{30FD}' | '\u{30FE}'
            );
            if !ok {
                return Err(IdError::BadChar { what: WHAT, ch });
            }
        }
        let joined = parts.join(&FULL_WIDTH_SPACE.to_string());
        if joined.chars().count() > 100 {
            return Err(IdError::Invalid {
                what: WHAT,
                reason: "longer than 100 characters".into(),
            });
        }
        Ok(Self(joined))
    }
}
string_type!(KanaName);

/// 氏名 as registered. Kanji are kept exactly as given (no NFKC, which would fold
/// variant ideographs that matter in names); only spacing is normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PersonName(String);

impl PersonName {
    /// Validates a name: no control characters, spaces folded to one full-width space
    /// between parts, at most 100 characters.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "name";
        refuse_replacement(WHAT, s)?;
        if let Some(ch) = s.chars().find(|c| c.is_control()) {
            return Err(IdError::BadChar { what: WHAT, ch });
        }
        let parts: Vec<&str> = s.split_whitespace().collect();
        if parts.is_empty() {
            return Err(IdError::Empty { what: WHAT });
        }
        let joined = parts.join(&FULL_WIDTH_SPACE.to_string());
        if joined.chars().count() > 100 {
            return Err(IdError::Invalid {
                what: WHAT,
                reason: "longer than 100 characters".into(),
            });
        }
        Ok(Self(joined))
    }
}
string_type!(PersonName);

/// 生年月日 in the Western calendar; never in the future.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BirthDate(NaiveDate);

impl BirthDate {
    /// Accepts YYYY-MM-DD, YYYY/MM/DD and YYYYMMDD, in half- or full-width digits.
    pub fn parse(s: &str, today: NaiveDate) -> Result<Self, IdError> {
        const WHAT: &str = "birth date";
        let d = parse_date(WHAT, s)?;
        if d > today {
            return Err(IdError::Invalid {
                what: WHAT,
                reason: format!("{d} is in the future"),
            });
        }
        if d < NaiveDate::from_ymd_opt(1880, 1, 1).unwrap_or(NaiveDate::MIN) {
            return Err(IdError::Invalid {
                what: WHAT,
                reason: format!("{d} is before 1880; is it a Japanese-era year?"),
            });
        }
        Ok(Self(d))
    }

    /// The date.
    pub fn date(self) -> NaiveDate {
        self.0
    }
}

impl std::fmt::Display for BirthDate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Parses a Western-calendar date in the forms insurers send.
pub fn parse_date(what: &'static str, s: &str) -> Result<NaiveDate, IdError> {
    let t: String = s.trim().chars().map(fold_full_width_ascii).collect();
    if t.is_empty() {
        return Err(IdError::Empty { what });
    }
    let bad = || IdError::Invalid {
        what,
        reason: format!("{t:?} is not a date (YYYY-MM-DD)"),
    };
    let fmt = if t.contains('-') {
        "%Y-%m-%d"
    } else if t.contains('/') {
        "%Y/%m/%d"
    } else if t.len() == 8 && t.bytes().all(|b| b.is_ascii_digit()) {
        "%Y%m%d"
    } else {
        return Err(bad());
    };
    NaiveDate::parse_from_str(&t, fmt).map_err(|_| bad())
}

/// Sex as ISO/IEC 5218 codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    /// 0: not known.
    NotKnown,
    /// 1: male.
    Male,
    /// 2: female.
    Female,
    /// 9: not applicable.
    NotApplicable,
}

impl Sex {
    /// Reads an ISO/IEC 5218 code: 0, 1, 2 or 9.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let t: String = s.trim().chars().map(fold_full_width_ascii).collect();
        match t.to_ascii_lowercase().as_str() {
            "0" => Ok(Sex::NotKnown),
            "1" | "m" | "male" | "男" => Ok(Sex::Male),
            "2" | "f" | "female" | "女" => Ok(Sex::Female),
            "9" => Ok(Sex::NotApplicable),
            "" => Err(IdError::Empty { what: "sex" }),
            _ => Err(IdError::Invalid {
                what: "sex",
                reason: format!("{t:?} is not an ISO 5218 code (0, 1, 2, 9)"),
            }),
        }
    }

    /// The ISO/IEC 5218 code.
    pub fn code(self) -> u8 {
        match self {
            Sex::NotKnown => 0,
            Sex::Male => 1,
            Sex::Female => 2,
            Sex::NotApplicable => 9,
        }
    }
}

/// The four kinds of insurer that send enrollment files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InsurerKind {
    /// 国民健康保険 (municipalities)
    Nhi,
    /// 協会けんぽ (files via the pension service)
    Kyokai,
    /// 健康保険組合
    Society,
    /// 共済組合
    MutualAid,
}

impl InsurerKind {
    /// Every kind, in order.
    pub const ALL: [InsurerKind; 4] = [
        InsurerKind::Nhi,
        InsurerKind::Kyokai,
        InsurerKind::Society,
        InsurerKind::MutualAid,
    ];

    /// Reads `nhi`, `kyokai`, `society` or `mutual_aid`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        match s.trim() {
            "nhi" | "国保" | "国民健康保険" => Ok(InsurerKind::Nhi),
            "kyokai" | "協会けんぽ" => Ok(InsurerKind::Kyokai),
            "society" | "組合健保" | "健康保険組合" => Ok(InsurerKind::Society),
            "mutual_aid" | "共済" | "共済組合" => Ok(InsurerKind::MutualAid),
            "" => Err(IdError::Empty {
                what: "insurer kind",
            }),
            t => Err(IdError::Invalid {
                what: "insurer kind",
                reason: format!("{t:?} is not one of nhi, kyokai, society, mutual_aid"),
            }),
        }
    }

    /// The name used in enrollment files.
    pub fn as_str(self) -> &'static str {
        match self {
            InsurerKind::Nhi => "nhi",
            InsurerKind::Kyokai => "kyokai",
            InsurerKind::Society => "society",
            InsurerKind::MutualAid => "mutual_aid",
        }
    }
}

/// 被保険者 (insured) or 被扶養者 (dependent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// 本人: the insured person.
    Insured,
    /// 家族: a dependent on the insured person's card.
    Dependent,
}

impl Relation {
    /// Reads `insured`/`本人` or `dependent`/`家族`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        match s.trim() {
            "insured" | "本人" | "被保険者" => Ok(Relation::Insured),
            "dependent" | "家族" | "被扶養者" => Ok(Relation::Dependent),
            "" => Err(IdError::Empty { what: "relation" }),
            t => Err(IdError::Invalid {
                what: "relation",
                reason: format!("{t:?} is not insured or dependent"),
            }),
        }
    }

    /// The name used in enrollment files.
    pub fn as_str(self) -> &'static str {
        match self {
            Relation::Insured => "insured",
            Relation::Dependent => "dependent",
        }
    }
}

fn is_japanese_letter(c: char) -> bool {
    matches!(c,
        '\u{3041}'..='\u{309F}' | '\u{30A0}'..='\u{30FF}' |
        '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{F900}'..='\u{FAFF}' | '々')
}

/// Folds full-width ASCII, drops spaces, and checks every character.
fn card_field(
    what: &'static str,
    s: &str,
    allow: fn(char) -> bool,
    max: usize,
) -> Result<String, IdError> {
    refuse_replacement(what, s)?;
    let mut out = String::with_capacity(s.len());
    for c in s.chars().map(fold_full_width_ascii) {
        if c.is_whitespace() {
            continue;
        }
        if !allow(c) {
            return Err(IdError::BadChar { what, ch: c });
        }
        out.push(c);
    }
    if out.chars().count() > max {
        return Err(IdError::Invalid {
            what,
            reason: format!("longer than {max} characters"),
        });
    }
    Ok(out)
}

/// 記号 on the insurance card: digits, Latin letters, kana and kanji; may be empty
/// (some cards carry none).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CardSymbol(String);

impl CardSymbol {
    /// Reads a card symbol; full-width digits and letters become half-width.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        card_field(
            "card symbol",
            s,
            |c| c.is_ascii_alphanumeric() || c == '-' || c == '・' || is_japanese_letter(c),
            20,
        )
        .map(Self)
    }
}
string_type!(CardSymbol);

/// 番号 on the insurance card.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CardNumber(String);

impl CardNumber {
    /// Reads a card number; full-width digits become half-width.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let v = card_field(
            "card number",
            s,
            |c| c.is_ascii_alphanumeric() || c == '-',
            20,
        )?;
        if v.is_empty() {
            return Err(IdError::Empty {
                what: "card number",
            });
        }
        Ok(Self(v))
    }
}
string_type!(CardNumber);

/// 枝番: two digits that tell apart the people on one card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Branch(u8);

impl Branch {
    /// Reads a branch number of 1 or 2 digits.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "branch number";
        let t: String = s.trim().chars().map(fold_full_width_ascii).collect();
        if t.is_empty() {
            return Err(IdError::Empty { what: WHAT });
        }
        if t.len() > 2 {
            return Err(IdError::Length {
                what: WHAT,
                expected: "2",
                got: t.chars().count(),
            });
        }
        if let Some((pos, ch)) = t.chars().enumerate().find(|(_, c)| !c.is_ascii_digit()) {
            return Err(IdError::NotDigit {
                what: WHAT,
                ch,
                pos,
            });
        }
        t.parse()
            .map(Self)
            .map_err(|_| IdError::Empty { what: WHAT })
    }

    /// A branch number from 0 to 99.
    pub fn new(v: u8) -> Option<Self> {
        (v < 100).then_some(Self(v))
    }

    /// The number.
    pub fn value(self) -> u8 {
        self.0
    }
}

impl std::fmt::Display for Branch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 27).unwrap()
    }

    #[test]
    fn kana_is_normalised() {
        let want = "ヤマダ　タロウ";
        for input in [
            "ヤマダ タロウ",
            "やまだ　たろう",
            "ﾔﾏﾀﾞ  ﾀﾛｳ",
            " ヤマダ　　タロウ ",
        ] {
            assert_eq!(KanaName::parse(input).unwrap().as_str(), want, "{input}");
        }
        assert_eq!(
            KanaName::parse("ｻﾄｳ ﾕｳｷ").unwrap().as_str(),
            "サトウ　ユウキ"
        );
        assert_eq!(
            KanaName::parse("山田 タロウ"),
            Err(IdError::BadChar {
                what: "kana name",
                ch: '山'
            })
        );
        assert!(KanaName::parse("  ").is_err());
        assert!(KanaName::parse("Yamada").is_err());
    }

    #[test]
    fn names_keep_their_kanji() {
        assert_eq!(
            PersonName::parse(" 髙橋  﨑子 ").unwrap().as_str(),
            "髙橋　﨑子"
        );
        assert!(PersonName::parse("山田\u{FFFD}").is_err());
        assert!(PersonName::parse("").is_err());
    }

    #[test]
    fn dates() {
        let t = today();
        assert_eq!(
            BirthDate::parse("1980-04-01", t).unwrap().to_string(),
            "1980-04-01"
        );
        assert_eq!(
            BirthDate::parse("19800401", t).unwrap().to_string(),
            "1980-04-01"
        );
        assert_eq!(
            BirthDate::parse("１９８０／０４／０１", t)
                .unwrap()
                .to_string(),
            "1980-04-01"
        );
        assert!(BirthDate::parse("2030-01-01", t).is_err());
        assert!(BirthDate::parse("1980-02-30", t).is_err());
        assert!(BirthDate::parse("S55.4.1", t).is_err());
        assert!(BirthDate::parse("0055-04-01", t).is_err());
    }

    #[test]
    fn card_fields() {
        assert_eq!(CardSymbol::parse("１２３４").unwrap().as_str(), "1234");
        assert_eq!(CardSymbol::parse("千代 あ").unwrap().as_str(), "千代あ");
        assert_eq!(CardSymbol::parse("").unwrap().as_str(), "");
        assert!(CardSymbol::parse("12;34").is_err());
        assert_eq!(CardNumber::parse("００５６").unwrap().as_str(), "0056");
        assert!(CardNumber::parse("").is_err());
        assert_eq!(Branch::parse("1").unwrap().to_string(), "01");
        assert_eq!(Branch::parse("０２").unwrap().to_string(), "02");
        assert!(Branch::parse("123").is_err());
        assert!(Branch::parse("a1").is_err());
    }

    #[test]
    fn codes() {
        assert_eq!(Sex::parse("2").unwrap(), Sex::Female);
        assert_eq!(Sex::parse("男").unwrap(), Sex::Male);
        assert!(Sex::parse("3").is_err());
        assert_eq!(
            InsurerKind::parse("mutual_aid").unwrap(),
            InsurerKind::MutualAid
        );
        assert!(InsurerKind::parse("private").is_err());
        assert_eq!(Relation::parse("被扶養者").unwrap(), Relation::Dependent);
    }

    proptest! {
        #[test]
        fn kana_normalisation_is_idempotent(s in "[\u{30A1}-\u{30F6}ー]{1,8}( [\u{3041}-\u{3093}]{1,8})?") {
            let once = KanaName::parse(&s).unwrap();
            let twice = KanaName::parse(once.as_str()).unwrap();
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn branch_round_trips(v in 0u8..100) {
            let b = Branch::new(v).unwrap();
            prop_assert_eq!(Branch::parse(&b.to_string()).unwrap(), b);
        }
    }
}
