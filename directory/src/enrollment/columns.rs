//! The header of an enrollment file: which column holds which field.

/// The columns, in the order `sample` writes them. `address`, `coverage_until` and
/// `postal_code` may be absent or empty; every other column is required.
pub const HEADER: [&str; 15] = [
    "insurer_kind",
    "insurer_number",
    "card_symbol",
    "card_number",
    "branch",
    "relation",
    "my_number",
    "name",
    "kana_name",
    "birth_date",
    "sex",
    "address",
    "coverage_from",
    "coverage_until",
    "postal_code",
];

const OPTIONAL: [&str; 3] = ["address", "coverage_until", "postal_code"];

/// Column positions by field, in `HEADER` order; `None` for an absent optional column.
#[derive(Debug, Clone)]
pub struct Columns {
    pos: [Option<usize>; HEADER.len()],
    /// How many columns the header names, known or not.
    len: usize,
}

impl Columns {
    /// Reads a header row; names may come in any order. Unknown columns are ignored.
    pub fn from_header<'a>(names: impl Iterator<Item = &'a str>) -> Result<Self, String> {
        let mut pos = [None; HEADER.len()];
        let mut len = 0;
        for (i, name) in names.enumerate() {
            len = i + 1;
            let name = name.trim().trim_start_matches('\u{FEFF}');
            if let Some(f) = HEADER.iter().position(|h| *h == name) {
                pos[f] = Some(i);
            }
        }
        let missing: Vec<&str> = HEADER
            .iter()
            .zip(pos.iter())
            .filter(|(h, p)| p.is_none() && !OPTIONAL.contains(h))
            .map(|(h, _)| *h)
            .collect();
        if missing.is_empty() {
            Ok(Self { pos, len })
        } else {
            Err(format!(
                "header lacks column(s) {}; expected {}",
                missing.join(", "),
                HEADER.join(",")
            ))
        }
    }

    /// How many columns the header has.
    pub fn count(&self) -> usize {
        self.len
    }

    /// The value of `field` in `record`, empty when the column is absent.
    pub fn get<'r>(&self, record: &'r csv::StringRecord, field: &str) -> &'r str {
        HEADER
            .iter()
            .position(|h| *h == field)
            .and_then(|f| self.pos[f])
            .and_then(|i| record.get(i))
            .unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_in_any_order_and_missing_columns_named() {
        let mut names: Vec<&str> = HEADER.to_vec();
        names.reverse();
        assert!(Columns::from_header(names.into_iter()).is_ok());
        let err = Columns::from_header(["insurer_kind", "name"].into_iter()).unwrap_err();
        assert!(err.contains("my_number"), "{err}");
        assert!(!err.contains("lacks column(s) address"), "{err}");
    }
}
