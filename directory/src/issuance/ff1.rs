//! NIST SP 800-38G FF1 over AES-256 for decimal strings of up to 30 digits, in
//! machine integers.
//!
//! A general FF1 (any radix, any length) does its arithmetic on big integers; with
//! radix 10 and at most 30 digits, each half is below 10^15 and each round's addend
//! below 2^96, so `u64` and `u128` hold everything exactly. A medical ID candidate
//! (15 digits) then costs eleven AES blocks and no allocation: this was most of the
//! enrollment reader's time with the big-integer implementation (`fpe`), about 3 µs
//! a row, which the tests here compare against on random inputs.

use aes::cipher::{BlockCipherEncrypt, KeyInit};
use aes::Aes256;

/// The longest decimal string this FF1 takes.
const MAX_DIGITS: usize = 30;
/// The shortest: FF1 asks radix^minlen ≥ 1,000,000.
const MIN_DIGITS: usize = 6;

/// FF1 with AES-256, radix 10.
#[derive(Clone)]
pub struct DecimalFf1 {
    aes: Aes256,
}

/// Why a string cannot be enciphered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ff1Error {
    #[error("FF1 takes {MIN_DIGITS} to {MAX_DIGITS} decimal digits, not {0}")]
    Length(usize),
    #[error("FF1 takes decimal digits only; {0} is not one")]
    Digit(u8),
}

impl DecimalFf1 {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            aes: Aes256::new(&(*key).into()),
        }
    }

    fn encipher_block(&self, block: &mut [u8; 16]) {
        let mut b = aes::Block::from(*block);
        self.aes.encrypt_block(&mut b);
        block.copy_from_slice(&b);
    }

    /// FF1.Encrypt (SP 800-38G, Algorithm 7) of `digits` (each 0–9, most significant
    /// first) under `tweak`.
    pub fn encrypt(&self, tweak: &[u8], digits: &[u8]) -> Result<Vec<u8>, Ff1Error> {
        let n = digits.len();
        if !(MIN_DIGITS..=MAX_DIGITS).contains(&n) {
            return Err(Ff1Error::Length(n));
        }
        if let Some(&d) = digits.iter().find(|&&d| d > 9) {
            return Err(Ff1Error::Digit(d));
        }
        let u = n / 2;
        let v = n - u;
        let mut a = number(&digits[..u]);
        let mut b = number(&digits[u..]);
        // Bytes of NUM(B): enough for 10^v − 1; d: bytes of each round's addend.
        let b_len = (bit_length(10u64.pow(v as u32) - 1)).div_ceil(8);
        let d_len = 4 * b_len.div_ceil(4) + 4;

        // P is the same for every round; its cipher block is the CBC-MAC's first state.
        let mut p = [0u8; 16];
        p[..3].copy_from_slice(&[1, 2, 1]);
        p[3..6].copy_from_slice(&10u32.to_be_bytes()[1..]);
        p[6] = 10;
        p[7] = (u % 256) as u8;
        p[8..12].copy_from_slice(&(n as u32).to_be_bytes());
        p[12..16].copy_from_slice(&(tweak.len() as u32).to_be_bytes());
        self.encipher_block(&mut p);

        // Q = T || 0^pad || [i] || [NUM(B)]^b, a whole number of blocks.
        let pad = (16 - (tweak.len() + b_len + 1) % 16) % 16;
        let mut q = Vec::with_capacity(tweak.len() + pad + 1 + b_len);
        for i in 0..10u8 {
            q.clear();
            q.extend_from_slice(tweak);
            q.resize(tweak.len() + pad, 0);
            q.push(i);
            q.extend_from_slice(&b.to_be_bytes()[8 - b_len..]);
            let mut r = p;
            for chunk in q.chunks_exact(16) {
                for (x, y) in r.iter_mut().zip(chunk) {
                    *x ^= y;
                }
                self.encipher_block(&mut r);
            }
            // S is R's first d bytes (d ≤ 12 here, within one block): y = NUM(S).
            let y = r[..d_len]
                .iter()
                .fold(0u128, |acc, &byte| (acc << 8) | u128::from(byte));
            let m = if i % 2 == 0 { u } else { v };
            let modulus = 10u128.pow(m as u32);
            let c = ((u128::from(a) + y % modulus) % modulus) as u64;
            a = b;
            b = c;
        }
        let mut out = digits_of(a, u);
        out.extend(digits_of(b, v));
        Ok(out)
    }
}

/// NUM_10: the digits as a number, most significant first.
fn number(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |acc, &d| acc * 10 + u64::from(d))
}

/// STR^m_10: `x` as `m` digits, most significant first.
fn digits_of(mut x: u64, m: usize) -> Vec<u8> {
    let mut out = vec![0u8; m];
    for slot in out.iter_mut().rev() {
        *slot = (x % 10) as u8;
        x /= 10;
    }
    out
}

fn bit_length(x: u64) -> usize {
    (64 - x.leading_zeros()) as usize
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The key of NIST's FF1 AES-256 samples.
    pub(crate) fn nist_key() -> [u8; 32] {
        [
            0x2B, 0x7E, 0x15, 0x16, 0x28, 0xAE, 0xD2, 0xA6, 0xAB, 0xF7, 0x15, 0x88, 0x09, 0xCF,
            0x4F, 0x3C, 0xEF, 0x43, 0x59, 0xD8, 0xD5, 0x80, 0xAA, 0x4F, 0x7F, 0x03, 0x6D, 0x6F,
            0x04, 0xFC, 0x6A, 0x94,
        ]
    }

    /// NIST SP 800-38G FF1 samples 7 and 8 (AES-256, radix 10).
    #[test]
    fn nist_samples() {
        let ff1 = DecimalFf1::new(&nist_key());
        let pt = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(
            ff1.encrypt(&[], &pt).unwrap(),
            [6, 6, 5, 7, 6, 6, 7, 0, 0, 9]
        );
        let tweak = [0x39, 0x38, 0x37, 0x36, 0x35, 0x34, 0x33, 0x32, 0x31, 0x30];
        assert_eq!(
            ff1.encrypt(&tweak, &pt).unwrap(),
            [1, 0, 0, 1, 6, 2, 3, 4, 6, 3]
        );
    }

    #[test]
    fn refuses_what_it_cannot_encipher() {
        let ff1 = DecimalFf1::new(&nist_key());
        assert_eq!(ff1.encrypt(&[], &[1; 5]), Err(Ff1Error::Length(5)));
        assert_eq!(ff1.encrypt(&[], &[1; 31]), Err(Ff1Error::Length(31)));
        assert_eq!(
            ff1.encrypt(&[], &[1, 2, 3, 4, 5, 10]),
            Err(Ff1Error::Digit(10))
        );
    }

    proptest! {
        /// The same output as the general big-integer FF1 for any key, tweak and string.
        #[test]
        fn agrees_with_the_general_ff1(
            key in any::<[u8; 32]>(),
            tweak in proptest::collection::vec(any::<u8>(), 0..40),
            digits in proptest::collection::vec(0u8..10, MIN_DIGITS..=MAX_DIGITS),
        ) {
            use fpe::ff1::{FlexibleNumeralString, FF1};
            let general = FF1::<Aes256>::new(&key, 10).unwrap();
            let expected: Vec<u16> = general
                .encrypt(&tweak, &FlexibleNumeralString::from(digits.iter().map(|&d| u16::from(d)).collect::<Vec<_>>()))
                .unwrap()
                .into();
            let ours = DecimalFf1::new(&key).encrypt(&tweak, &digits).unwrap();
            prop_assert_eq!(ours.iter().map(|&d| u16::from(d)).collect::<Vec<_>>(), expected);
        }
    }
}
