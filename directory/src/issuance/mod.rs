//! Issuing medical IDs (proposal §2-2): a keyed function of the My Number (NIST SP 800-38G
//! FF1 over AES-256) or a draw from the OS CSPRNG. Either way the store checks every
//! candidate against the table of all IDs ever issued.

mod ff1;

pub use ff1::{DecimalFf1, Ff1Error};
use iryo_proto::{MedicalId, MyNumber};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Fpe,
    Random,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Fpe => "fpe",
            Method::Random => "random",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fpe" => Some(Method::Fpe),
            "random" => Some(Method::Random),
            _ => None,
        }
    }
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IssueError {
    #[error("FF1 failed: {0}")]
    Fpe(String),
    #[error("the OS random source failed: {0}")]
    Random(String),
}

pub enum Issuer {
    Fpe(Box<DecimalFf1>),
    Random,
}

impl Issuer {
    pub fn fpe(key: &[u8; 32]) -> Self {
        Issuer::Fpe(Box::new(DecimalFf1::new(key)))
    }

    pub fn method(&self) -> Method {
        match self {
            Issuer::Fpe(_) => Method::Fpe,
            Issuer::Random => Method::Random,
        }
    }

    /// The candidate ID for `my_number` at `generation`. FF1 is a permutation of the
    /// 15-digit strings for each tweak, so within one generation two My Numbers never
    /// share a candidate; across generations the store's issued table decides.
    pub fn candidate(&self, my_number: MyNumber, generation: u32) -> Result<MedicalId, IssueError> {
        match self {
            Issuer::Fpe(ff1) => {
                let mut digits = [0u8; 15];
                let mut v = my_number.as_u64();
                for slot in digits.iter_mut().rev() {
                    *slot = (v % 10) as u8;
                    v /= 10;
                }
                let out = ff1
                    .encrypt(&generation.to_be_bytes(), &digits)
                    .map_err(|e| IssueError::Fpe(e.to_string()))?;
                let body = out.iter().fold(0u64, |acc, &d| acc * 10 + u64::from(d));
                Ok(MedicalId::from_body(body))
            }
            Issuer::Random => {
                let mut b = [0u8; 8];
                getrandom::fill(&mut b).map_err(|e| IssueError::Random(e.to_string()))?;
                Ok(MedicalId::from_body(
                    u64::from_le_bytes(b) % iryo_proto::ids::MEDICAL_ID_BODY_SPACE,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ff1::tests::nist_key;
    use super::*;

    #[test]
    fn fpe_is_deterministic_and_generation_dependent() {
        let issuer = Issuer::fpe(&nist_key());
        let n = MyNumber::parse("983205673214").unwrap();
        let a = issuer.candidate(n, 0).unwrap();
        assert_eq!(a, issuer.candidate(n, 0).unwrap());
        assert_ne!(a, issuer.candidate(n, 1).unwrap());
        let other = MyNumber::from_body(98320567322);
        assert_ne!(a, issuer.candidate(other, 0).unwrap());
    }

    #[test]
    fn random_draws_differ() {
        let n = MyNumber::parse("983205673214").unwrap();
        let a = Issuer::Random.candidate(n, 0).unwrap();
        let b = Issuer::Random.candidate(n, 0).unwrap();
        assert_ne!(a, b);
    }
}
