//! The check-digit rules of the numbers iryo handles.

/// My Number (個人番号) check digit over the first 11 digits, per the 2014 ordinance:
/// Pn is the nth digit from the right, Qn = n+1 for n ≤ 6 and n−5 for 7 ≤ n ≤ 11.
pub fn my_number(body: &[u8; 11]) -> u8 {
    let sum: u32 = (1..=11)
        .map(|n| {
            let p = u32::from(body[11 - n]);
            let q = if n <= 6 { n + 1 } else { n - 5 } as u32;
            p * q
        })
        .sum();
    let r = sum % 11;
    if r <= 1 {
        0
    } else {
        (11 - r) as u8
    }
}

/// The modulus-10 weight-2-1 rule used for insurer numbers and institution codes:
/// weights 2,1,2,1… from the rightmost body digit, the digits of each product summed.
pub fn luhn(body: &[u8]) -> u8 {
    let sum: u32 = body
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let p = u32::from(d) * if i % 2 == 0 { 2 } else { 1 };
            p / 10 + p % 10
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// Damm's weakly totally anti-symmetric quasigroup of order 10: it catches every
/// single-digit error and every adjacent transposition.
const DAMM: [[u8; 10]; 10] = [
    [0, 3, 1, 7, 5, 9, 8, 6, 4, 2],
    [7, 0, 9, 2, 1, 5, 4, 8, 6, 3],
    [4, 2, 0, 6, 8, 7, 1, 3, 5, 9],
    [1, 7, 5, 0, 9, 8, 3, 4, 2, 6],
    [6, 1, 2, 3, 0, 4, 5, 9, 7, 8],
    [3, 6, 7, 4, 2, 0, 9, 5, 8, 1],
    [5, 8, 6, 9, 7, 2, 0, 1, 3, 4],
    [8, 9, 4, 5, 3, 6, 2, 0, 1, 7],
    [9, 4, 3, 8, 6, 1, 7, 2, 0, 5],
    [2, 5, 8, 1, 4, 3, 6, 7, 9, 0],
];

/// The Damm check digit of `digits`; appending it makes [`damm`] of the whole zero.
pub fn damm(digits: &[u8]) -> u8 {
    digits
        .iter()
        .fold(0u8, |acc, &d| DAMM[acc as usize][d as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn digits(s: &str) -> Vec<u8> {
        s.bytes().map(|b| b - b'0').collect()
    }

    #[test]
    fn my_number_known_answer() {
        let d = digits("98320567321");
        let body: [u8; 11] = d.try_into().unwrap();
        assert_eq!(my_number(&body), 4);
    }

    #[test]
    fn luhn_known_answers() {
        assert_eq!(luhn(&digits("3312001")), 5);
        assert_eq!(luhn(&digits("011011371")), 9);
    }

    #[test]
    fn damm_known_answer() {
        assert_eq!(damm(&digits("572")), 4);
        assert_eq!(damm(&digits("5724")), 0);
    }

    proptest! {
        #[test]
        fn damm_catches_single_digit_errors(body in proptest::collection::vec(0u8..10, 15), pos in 0usize..16, delta in 1u8..10) {
            let mut all = body.clone();
            all.push(damm(&body));
            all[pos] = (all[pos] + delta) % 10;
            prop_assert_ne!(damm(&all), 0);
        }

        #[test]
        fn damm_catches_adjacent_transpositions(body in proptest::collection::vec(0u8..10, 15), pos in 0usize..15) {
            let mut all = body.clone();
            all.push(damm(&body));
            prop_assume!(all[pos] != all[pos + 1]);
            all.swap(pos, pos + 1);
            prop_assert_ne!(damm(&all), 0);
        }
    }
}
