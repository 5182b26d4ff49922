//! Numbers with check digits. Each is a fixed-width digit string held as an integer,
//! printed zero-padded, and serialised as its canonical string in human-readable formats
//! (JSON, TOML, CSV) and as the integer in compact ones (postcard, CBOR keys).

mod institution;
mod insurer;
mod medical_id;
mod my_number;

pub use institution::{InstitutionCode, PointTableKind};
pub use insurer::InsurerNumber;
pub use medical_id::{MedicalId, BODY_SPACE as MEDICAL_ID_BODY_SPACE};
pub use my_number::MyNumber;

use crate::IdError;

/// Reads the digits of `s`, accepting full-width digits (as typed on Japanese systems)
/// and skipping the separators given.
pub(crate) fn read_digits(
    what: &'static str,
    s: &str,
    separators: &[char],
) -> Result<Vec<u8>, IdError> {
    let mut out = Vec::with_capacity(s.len());
    for (pos, ch) in s.trim().chars().enumerate() {
        match ch {
            '0'..='9' => out.push(ch as u8 - b'0'),
            '０'..='９' => out.push((ch as u32 - '０' as u32) as u8),
            c if separators.contains(&c) => {}
            c => return Err(IdError::NotDigit { what, ch: c, pos }),
        }
    }
    if out.is_empty() {
        return Err(IdError::Empty { what });
    }
    Ok(out)
}

pub(crate) fn digits_to_u64(d: &[u8]) -> u64 {
    d.iter().fold(0u64, |acc, &x| acc * 10 + u64::from(x))
}

pub(crate) fn u64_to_digits(mut v: u64, width: usize) -> Vec<u8> {
    let mut out = vec![0u8; width];
    for slot in out.iter_mut().rev() {
        *slot = (v % 10) as u8;
        v /= 10;
    }
    out
}

pub(crate) fn check(what: &'static str, found: u8, expected: u8) -> Result<(), IdError> {
    if found == expected {
        Ok(())
    } else {
        Err(IdError::CheckDigit {
            what,
            found,
            expected,
        })
    }
}

/// Implements Display, FromStr and serde for a fixed-width id held as `u64`.
macro_rules! fixed_width_id {
    ($ty:ident, $width:expr) => {
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, "{:0width$}", self.0, width = $width)
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::parse(s)
            }
        }

        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    s.serialize_u64(self.0)
                }
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                use ::serde::de::Error;
                if d.is_human_readable() {
                    let s = <::std::borrow::Cow<'de, str>>::deserialize(d)?;
                    $ty::parse(&s).map_err(D::Error::custom)
                } else {
                    let v = u64::deserialize(d)?;
                    $ty::from_u64(v).map_err(D::Error::custom)
                }
            }
        }
    };
}
pub(crate) use fixed_width_id;
