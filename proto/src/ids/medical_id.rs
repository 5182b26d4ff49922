use super::{check, digits_to_u64, fixed_width_id, read_digits, u64_to_digits};
use crate::{check_digit, IdError};

/// 医療等番号: a 15-digit body and a Damm check digit, shown as 4-4-4-4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MedicalId(u64);

const WHAT: &str = "medical ID";

/// The number of distinct bodies: 10^15.
pub const BODY_SPACE: u64 = 1_000_000_000_000_000;

impl MedicalId {
    /// Accepts the 16 digits with or without the usual separators.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let d = read_digits(WHAT, s, &['-', ' ', '　', 'ー', '－'])?;
        Self::from_digits(&d)
    }

    fn from_digits(d: &[u8]) -> Result<Self, IdError> {
        if d.len() != 16 {
            return Err(IdError::Length {
                what: WHAT,
                expected: "16",
                got: d.len(),
            });
        }
        check(WHAT, d[15], check_digit::damm(&d[..15]))?;
        Ok(Self(digits_to_u64(d)))
    }

    /// The ID held as a number, check digit included, checked as `parse` checks text.
    pub fn from_u64(v: u64) -> Result<Self, IdError> {
        if v >= BODY_SPACE * 10 {
            return Err(IdError::Length {
                what: WHAT,
                expected: "16",
                got: v.to_string().len(),
            });
        }
        Self::from_digits(&u64_to_digits(v, 16))
    }

    /// Completes a 15-digit body (below 10^15) with its check digit.
    pub fn from_body(body: u64) -> Self {
        let body = body % BODY_SPACE;
        let check = check_digit::damm(&u64_to_digits(body, 15));
        Self(body * 10 + u64::from(check))
    }

    /// The 15-digit body, without the check digit.
    pub fn body(self) -> u64 {
        self.0 / 10
    }

    /// The 16 digits as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The 16 digits without separators, for files and keys.
    pub fn plain(self) -> String {
        format!("{:016}", self.0)
    }

    /// The 16 digits as 4-4-4-4, as printed on letters and cards.
    pub fn grouped(self) -> String {
        let p = self.plain();
        format!("{}-{}-{}-{}", &p[0..4], &p[4..8], &p[8..12], &p[12..16])
    }
}

fixed_width_id!(MedicalId, 16);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_separators_and_refuses_typos() {
        let id = MedicalId::from_body(123_456_789_012_345);
        let grouped = id.grouped();
        assert_eq!(grouped.len(), 19);
        assert_eq!(MedicalId::parse(&grouped).unwrap(), id);
        assert_eq!(MedicalId::parse(&id.plain()).unwrap(), id);
        let mut typo = id.plain().into_bytes();
        typo[3] = if typo[3] == b'9' { b'0' } else { typo[3] + 1 };
        assert!(MedicalId::parse(std::str::from_utf8(&typo).unwrap()).is_err());
        assert!(MedicalId::parse("1234").is_err());
    }

    proptest! {
        #[test]
        fn round_trips(body in 0u64..BODY_SPACE) {
            let id = MedicalId::from_body(body);
            prop_assert_eq!(id.body(), body);
            prop_assert_eq!(MedicalId::parse(&id.grouped()).unwrap(), id);
            prop_assert_eq!(MedicalId::parse(&id.to_string()).unwrap(), id);
            prop_assert_eq!(MedicalId::from_u64(id.as_u64()).unwrap(), id);
        }

        #[test]
        fn adjacent_transposition_is_refused(body in 0u64..BODY_SPACE, pos in 0usize..15) {
            let mut d = MedicalId::from_body(body).plain().into_bytes();
            prop_assume!(d[pos] != d[pos + 1]);
            d.swap(pos, pos + 1);
            prop_assert!(MedicalId::parse(std::str::from_utf8(&d).unwrap()).is_err());
        }
    }
}
