use thiserror::Error;

/// Why a value was refused. The message names the value kind so that an error report
/// for a whole row stays readable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdError {
    /// Nothing was given.
    #[error("{what}: empty")]
    Empty {
        /// The kind of value, e.g. "medical ID".
        what: &'static str,
    },
    /// Too many or too few digits.
    #[error("{what}: expected {expected} digits, got {got}")]
    Length {
        /// The kind of value.
        what: &'static str,
        /// The lengths accepted, e.g. "16" or "6 or 8".
        expected: &'static str,
        /// The number of digits given.
        got: usize,
    },
    /// A character that is neither a digit nor an accepted separator.
    #[error("{what}: character {ch:?} at position {pos} is not a digit")]
    NotDigit {
        /// The kind of value.
        what: &'static str,
        /// The character.
        ch: char,
        /// Its position among the characters given, from 0.
        pos: usize,
    },
    /// The check digit does not match the digits before it.
    #[error("{what}: check digit is {found}, expected {expected}")]
    CheckDigit {
        /// The kind of value.
        what: &'static str,
        /// The check digit given.
        found: u8,
        /// The check digit the other digits call for.
        expected: u8,
    },
    /// A character not allowed in this kind of text (names, kana, card symbols).
    #[error("{what}: character {ch:?} is not allowed")]
    BadChar {
        /// The kind of value.
        what: &'static str,
        /// The character.
        ch: char,
    },
    /// Well-formed but not a possible value (a date that does not exist, a
    /// prefecture number above 47).
    #[error("{what}: {reason}")]
    Invalid {
        /// The kind of value.
        what: &'static str,
        /// What is wrong, for a person.
        reason: String,
    },
}
