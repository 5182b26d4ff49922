use super::{check, digits_to_u64, fixed_width_id, read_digits, u64_to_digits};
use crate::{check_digit, IdError};

/// マイナンバー: 12 digits, the last a check digit over the first 11.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MyNumber(u64);

const WHAT: &str = "My Number";

impl MyNumber {
    /// Reads 12 digits (separators allowed) and checks the official check digit.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let d = read_digits(WHAT, s, &[' ', '-'])?;
        Self::from_digits(&d)
    }

    fn from_digits(d: &[u8]) -> Result<Self, IdError> {
        if d.len() != 12 {
            return Err(IdError::Length {
                what: WHAT,
                expected: "12",
                got: d.len(),
            });
        }
        let mut body = [0u8; 11];
        body.copy_from_slice(&d[..11]);
        check(WHAT, d[11], check_digit::my_number(&body))?;
        Ok(Self(digits_to_u64(d)))
    }

    /// The number held as `u64`, checked as `parse` checks text.
    pub fn from_u64(v: u64) -> Result<Self, IdError> {
        if v >= 1_000_000_000_000 {
            return Err(IdError::Length {
                what: WHAT,
                expected: "12",
                got: v.to_string().len(),
            });
        }
        Self::from_digits(&u64_to_digits(v, 12))
    }

    /// Completes an 11-digit body (below 10^11) with its check digit.
    pub fn from_body(body: u64) -> Self {
        let d = u64_to_digits(body % 100_000_000_000, 11);
        let mut b = [0u8; 11];
        b.copy_from_slice(&d);
        Self((body % 100_000_000_000) * 10 + u64::from(check_digit::my_number(&b)))
    }

    /// The 12 digits as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

fixed_width_id!(MyNumber, 12);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_valid_number() {
        let n = MyNumber::parse("983205673214").unwrap();
        assert_eq!(n.to_string(), "983205673214");
        assert!(MyNumber::parse("９８３２０５６７３２１４").is_ok());
        assert!(matches!(
            MyNumber::parse("983205673215"),
            Err(IdError::CheckDigit { expected: 4, .. })
        ));
        assert!(matches!(
            MyNumber::parse("98320567321"),
            Err(IdError::Length { got: 11, .. })
        ));
        assert!(matches!(
            MyNumber::parse("98320567321x"),
            Err(IdError::NotDigit { ch: 'x', .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trips(body in 0u64..100_000_000_000) {
            let n = MyNumber::from_body(body);
            prop_assert_eq!(MyNumber::parse(&n.to_string()).unwrap(), n);
            prop_assert_eq!(MyNumber::from_u64(n.as_u64()).unwrap(), n);
        }

        #[test]
        fn any_other_last_digit_is_refused(body in 0u64..100_000_000_000, delta in 1u64..10) {
            let n = MyNumber::from_body(body).as_u64();
            let wrong = n - n % 10 + (n % 10 + delta) % 10;
            prop_assert!(MyNumber::from_u64(wrong).is_err());
        }
    }
}
