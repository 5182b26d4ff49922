//! Insurer enrollment files (proposal §2-1): the CSV format, its decoding from UTF-8 or
//! Shift_JIS, row validation, and streaming ingestion in durable batches.

mod columns;
mod ingest;
mod initial_load;
mod reader;
mod row;
pub mod text;

pub use columns::{Columns, HEADER};
pub use ingest::{ingest_all, ingest_file, IngestError, IngestOptions, Progress, Summary};
#[cfg(test)]
pub(crate) use initial_load::initial_load_sorting_in;
pub use initial_load::{initial_load, load_files, wants_initial_load, InitialLoadChoice};
pub use row::{parse_row, RowError};

use serde::{Deserialize, Serialize};

/// The encoding of a file that carries no byte-order mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    #[serde(rename = "utf-8", alias = "utf8")]
    Utf8,
    /// Shift_JIS as Windows writes it (CP932), what most insurer systems export.
    #[serde(rename = "shift_jis", alias = "sjis", alias = "cp932")]
    ShiftJis,
}

impl Encoding {
    /// A configuration value: `auto` (detect; `None`) or an encoding's name.
    pub fn from_setting(s: &str) -> Result<Option<Self>, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(None);
        }
        Self::parse(s).map(Some).ok_or_else(|| {
            format!("unknown encoding {s:?}; use \"auto\", \"utf-8\" or \"shift_jis\"")
        })
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => Some(Encoding::Utf8),
            "shift_jis" | "sjis" | "cp932" | "windows-31j" => Some(Encoding::ShiftJis),
            _ => None,
        }
    }

    /// The name `--encoding` and the configuration take.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Utf8 => "utf-8",
            Encoding::ShiftJis => "shift_jis",
        }
    }

    pub fn codec(self) -> &'static encoding_rs::Encoding {
        match self {
            Encoding::Utf8 => encoding_rs::UTF_8,
            Encoding::ShiftJis => encoding_rs::SHIFT_JIS,
        }
    }
}
