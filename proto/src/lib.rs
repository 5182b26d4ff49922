//! Identifiers and value types shared by the directory and the nodes.
//!
//! Every type here validates on construction and prints canonically, so a value that
//! exists is a value that is right. Nothing here does I/O.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod check_digit;
pub mod checkpoint;
pub mod eligibility;
/// Why an identifier or value was refused.
pub mod error;
pub mod federation;
pub mod idempotency;
pub mod ids;
pub mod merkle;
pub mod note;
pub mod person;
pub mod roles;
pub mod signed;
pub mod wire;

pub use error::IdError;
pub use idempotency::IdempotencyKey;
pub use ids::{InstitutionCode, InsurerNumber, MedicalId, MyNumber, PointTableKind};
pub use person::{
    BirthDate, Branch, CardNumber, CardSymbol, InsurerKind, KanaName, PersonName, Relation, Sex,
};
