use thiserror::Error;

/// Why a value was refused. The message names the value kind so that an error report
/// for a whole row stays readable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("{what}: empty")]
    Empty { what: &'static str },
    #[error("{what}: expected {expected} digits, got {got}")]
    Length {
        what: &'static str,
        expected: &'static str,
        got: usize,
    },
    #[error("{what}: character {ch:?} at position {pos} is not a digit")]
    NotDigit {
        what: &'static str,
        ch: char,
        pos: usize,
    },
    #[error("{what}: check digit is {found}, expected {expected}")]
    CheckDigit {
        what: &'static str,
        found: u8,
        expected: u8,
    },
    #[error("{what}: character {ch:?} is not allowed")]
    BadChar { what: &'static str, ch: char },
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}
