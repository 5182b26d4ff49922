use super::{check, digits_to_u64, fixed_width_id, read_digits, u64_to_digits};
use crate::{check_digit, IdError};
use serde::{Deserialize, Serialize};

/// 医療機関コード: prefecture (2), point-table kind (1), district (2), institution (4),
/// and a check digit over the nine before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstitutionCode(u64);

/// 点数表: which fee schedule the institution bills under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PointTableKind {
    /// 医科: medical (digit 1).
    Medical,
    /// 歯科: dental (digit 3).
    Dental,
    /// 調剤: pharmacy (digit 4).
    Pharmacy,
}

const WHAT: &str = "institution code";

impl InstitutionCode {
    /// Reads 10 digits (hyphens and spaces allowed) and checks the prefecture, kind and check digit.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let d = read_digits(WHAT, s, &['-', ' '])?;
        Self::from_digits(&d)
    }

    fn from_digits(d: &[u8]) -> Result<Self, IdError> {
        if d.len() != 10 {
            return Err(IdError::Length {
                what: WHAT,
                expected: "10",
                got: d.len(),
            });
        }
        let pref = d[0] * 10 + d[1];
        if !(1..=47).contains(&pref) {
            return Err(IdError::Invalid {
                what: WHAT,
                reason: format!("prefecture {pref:02} is not 01 to 47"),
            });
        }
        if !matches!(d[2], 1 | 3 | 4) {
            return Err(IdError::Invalid {
                what: WHAT,
                reason: format!(
                    "point-table kind {} is not 1 (medical), 3 (dental) or 4 (pharmacy)",
                    d[2]
                ),
            });
        }
        check(WHAT, d[9], check_digit::luhn(&d[..9]))?;
        Ok(Self(digits_to_u64(d)))
    }

    /// The code held as a number, checked as `parse` checks text.
    pub fn from_u64(v: u64) -> Result<Self, IdError> {
        Self::from_digits(&u64_to_digits(v % 10_000_000_000, 10)).and_then(|c| {
            if v >= 10_000_000_000 {
                Err(IdError::Length {
                    what: WHAT,
                    expected: "10",
                    got: v.to_string().len(),
                })
            } else {
                Ok(c)
            }
        })
    }

    /// Builds a valid code from its parts; used by sample data and tests.
    pub fn from_parts(prefecture: u8, kind: PointTableKind, number: u32) -> Result<Self, IdError> {
        let k = match kind {
            PointTableKind::Medical => 1,
            PointTableKind::Dental => 3,
            PointTableKind::Pharmacy => 4,
        };
        let body =
            u64::from(prefecture) * 10_000_000 + k * 1_000_000 + u64::from(number % 1_000_000);
        let d = u64_to_digits(body, 9);
        Self::from_u64(body * 10 + u64::from(check_digit::luhn(&d)))
    }

    /// The prefecture, 1 to 47.
    pub fn prefecture(self) -> u8 {
        (self.0 / 100_000_000) as u8
    }

    /// The fee schedule the institution bills under.
    pub fn kind(self) -> PointTableKind {
        match (self.0 / 10_000_000) % 10 {
            3 => PointTableKind::Dental,
            4 => PointTableKind::Pharmacy,
            _ => PointTableKind::Medical,
        }
    }

    /// The code as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

fixed_width_id!(InstitutionCode, 10);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_valid_code() {
        let c = InstitutionCode::parse("0110113719").unwrap();
        assert_eq!(c.prefecture(), 1);
        assert_eq!(c.kind(), PointTableKind::Medical);
        assert_eq!(c.to_string(), "0110113719");
        assert!(InstitutionCode::parse("0110113718").is_err());
        assert!(InstitutionCode::parse("0120113716").is_err());
        assert!(InstitutionCode::parse("4810113712").is_err());
    }

    proptest! {
        #[test]
        fn round_trips(pref in 1u8..=47, k in 0usize..3, n in 0u32..1_000_000) {
            let kind = [PointTableKind::Medical, PointTableKind::Dental, PointTableKind::Pharmacy][k];
            let c = InstitutionCode::from_parts(pref, kind, n).unwrap();
            prop_assert_eq!(c.kind(), kind);
            prop_assert_eq!(c.prefecture(), pref);
            prop_assert_eq!(InstitutionCode::parse(&c.to_string()).unwrap(), c);
        }
    }
}
