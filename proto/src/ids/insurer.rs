use super::{check, read_digits};
use crate::{check_digit, IdError, InsurerKind};
use serde::{Deserialize, Serialize};

/// 保険者番号: 8 digits (law number 2, prefecture 2, insurer 3, check digit 1), or
/// 6 digits for National Health Insurance, which has no law number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InsurerNumber(String);

const WHAT: &str = "insurer number";

impl InsurerNumber {
    /// Reads 6 or 8 digits (spaces and hyphens allowed) and checks the check digit.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let d = read_digits(WHAT, s, &[' ', '-'])?;
        if d.len() != 6 && d.len() != 8 {
            return Err(IdError::Length {
                what: WHAT,
                expected: "6 or 8",
                got: d.len(),
            });
        }
        let (body, last) = d.split_at(d.len() - 1);
        check(WHAT, last[0], check_digit::luhn(body))?;
        Ok(Self(d.iter().map(|x| char::from(b'0' + x)).collect()))
    }

    /// Builds a valid number from a body of 5 (NHI) or 7 digits; used by sample data.
    pub fn from_body(body: &str) -> Result<Self, IdError> {
        let d = read_digits(WHAT, body, &[])?;
        let c = check_digit::luhn(&d);
        Self::parse(&format!("{body}{c}"))
    }

    /// 法別番号, absent for National Health Insurance.
    pub fn law_number(&self) -> Option<u8> {
        if self.0.len() == 8 {
            self.0[..2].parse().ok()
        } else {
            None
        }
    }

    /// Whether this number can belong to an insurer of `kind`, judged by its law number.
    pub fn fits(&self, kind: InsurerKind) -> bool {
        matches!(
            (kind, self.law_number()),
            (InsurerKind::Nhi, None)
                | (InsurerKind::Kyokai, Some(1))
                | (InsurerKind::Society, Some(6))
                | (InsurerKind::MutualAid, Some(31..=34))
        )
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for InsurerNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for InsurerNumber {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for InsurerNumber {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<InsurerNumber> for String {
    fn from(n: InsurerNumber) -> String {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_valid_numbers() {
        let n = InsurerNumber::parse("33120015").unwrap();
        assert_eq!(n.law_number(), Some(33));
        assert!(n.fits(InsurerKind::MutualAid));
        assert!(!n.fits(InsurerKind::Kyokai));
        assert!(InsurerNumber::parse("33120016").is_err());
        let nhi = InsurerNumber::from_body("13101").unwrap();
        assert_eq!(nhi.as_str().len(), 6);
        assert!(nhi.fits(InsurerKind::Nhi));
        assert!(InsurerNumber::parse("1234567").is_err());
    }

    proptest! {
        #[test]
        fn round_trips(body in 0u32..10_000_000, nhi in any::<bool>()) {
            let body = if nhi { format!("{:05}", body % 100_000) } else { format!("{body:07}") };
            let n = InsurerNumber::from_body(&body).unwrap();
            prop_assert_eq!(InsurerNumber::parse(n.as_str()).unwrap(), n.clone());
            let back = InsurerNumber::try_from(String::from(n.clone())).unwrap();
            prop_assert_eq!(back, n);
        }
    }
}
