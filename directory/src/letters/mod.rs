//! Letters that tell each person their medical ID (proposal §2-4): printable A4 PDFs in
//! Japanese with the ID as 4-4-4-4 and a one-time activation code for My Portal, and
//! the CSV a print vendor needs. The code is printed here and stored only as a hash.

pub mod pdf;

use crate::config::LettersConfig;
use crate::store::{LetterRow, Plan};
use pdf::{Font, Page, Text};
use serde::Serialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LetterError {
    #[error("{path}: {source} (install Debian's fonts-ipaexfont-gothic, or set letters.font)")]
    FontFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Pdf(#[from] pdf::PdfError),
    #[error("{path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
}

/// One letter: the person and the activation code printed for them.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Letter {
    pub pid: u64,
    pub row: LetterRow,
    pub code: String,
    /// Last day the code works, `YYYY-MM-DD`.
    pub expires: String,
    /// When the code stops working, seconds since the epoch.
    #[serde(default)]
    pub expires_at: i64,
}

/// A line of the print vendor's CSV.
#[derive(Serialize)]
struct VendorRow<'a> {
    file: String,
    page: usize,
    sender: &'a str,
    name: &'a str,
    kana_name: &'a str,
    address: &'a str,
    medical_id: &'a str,
    activation_code: &'a str,
    code_expires: &'a str,
}

fn text(x: f32, y: f32, size: f32, s: impl Into<String>) -> Text {
    Text {
        x,
        y,
        size,
        text: s.into(),
    }
}

fn page(l: &Letter, plan: Plan, portal: &str) -> Page {
    let r = &l.row;
    let sender = match plan {
        Plan::Agency => "医療等番号管理機関 / Medical ID Agency".to_string(),
        Plan::Insurer => format!("保険者番号 {} / Insurer {}", r.sender, r.sender),
    };
    let mut texts = vec![
        text(60.0, 780.0, 18.0, "医療等番号（医療ID）のお知らせ"),
        text(60.0, 760.0, 10.0, "Notice of your medical ID"),
        text(60.0, 715.0, 11.0, r.address.clone()),
        text(60.0, 692.0, 15.0, format!("{} 様", r.name)),
        text(60.0, 675.0, 10.0, r.kana_name.clone()),
        text(75.0, 612.0, 11.0, "あなたの医療ID / Your medical ID"),
        text(75.0, 572.0, 26.0, r.medical_id.clone()),
        text(
            60.0,
            500.0,
            13.0,
            format!("マイポータル初回登録コード：{}", l.code),
        ),
        text(
            60.0,
            482.0,
            10.0,
            format!(
                "有効期限 {}（一度だけ使えます） / First sign-in code, valid once until {}",
                l.expires, l.expires
            ),
        ),
        text(60.0, 440.0, 12.0, "マイポータルへの登録方法"),
        text(
            60.0,
            418.0,
            10.5,
            format!("1. {portal} を開き、「はじめての方」を選びます。"),
        ),
        text(
            60.0,
            400.0,
            10.5,
            "2. 上の医療IDと初回登録コードを入力し、10文字以上のパスワードを決めます。",
        ),
        text(
            60.0,
            382.0,
            10.5,
            "3. 受診履歴、あなたの記録を閲覧した医療機関、情報共有への同意を確認・変更できます。",
        ),
        text(
            60.0,
            356.0,
            10.0,
            "初回登録コードは他人に知らせないでください。医療IDは受付で保険証とともに使われます。",
        ),
        text(
            60.0,
            330.0,
            9.0,
            format!("Open {portal}, choose \"First time\", enter this medical ID and the code,"),
        ),
        text(
            60.0,
            318.0,
            9.0,
            "and choose a password of at least 10 characters. Keep the code to yourself.",
        ),
        text(60.0, 60.0, 9.0, sender),
    ];
    if !r.card.is_empty() {
        texts.push(text(60.0, 640.0, 9.0, format!("保険証 / Card: {}", r.card)));
    }
    Page {
        texts,
        boxes: vec![(60.0, 550.0, 475.0, 82.0)],
    }
}

/// Writes `letters-NNNN.pdf` files of at most `per_file` letters and `letters.csv`
/// into `out`; returns the files written.
pub fn write_letters(
    out: &Path,
    letters: &[Letter],
    plan: Plan,
    cfg: &LettersConfig,
) -> Result<Vec<PathBuf>, LetterError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LetterError::Io { path, source }
    };
    let data = std::fs::read(&cfg.font).map_err(|source| LetterError::FontFile {
        path: cfg.font.clone(),
        source,
    })?;
    let font = Font::parse(&data)?;
    crate::files::create_private_dir(out).map_err(io(out))?;
    let csv_path = out.join("letters.csv");
    let csv_file = crate::files::create_private(&csv_path).map_err(io(&csv_path))?;
    let csv_error = |source| LetterError::Csv {
        path: csv_path.clone(),
        source,
    };
    // The header is written even for no letters: an empty run still tells the print
    // vendor what the columns are.
    let mut vendor = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(std::io::BufWriter::new(csv_file));
    vendor.write_record(VENDOR_HEADER).map_err(csv_error)?;
    let mut files = Vec::new();
    for (n, chunk) in letters.chunks(cfg.per_file.max(1)).enumerate() {
        let name = format!("letters-{:04}.pdf", n + 1);
        let pages: Vec<Page> = chunk
            .iter()
            .map(|l| page(l, plan, &cfg.portal_url))
            .collect();
        let path = out.join(&name);
        write_synced(&path, &pdf::render(&font, &pages)?).map_err(io(&path))?;
        for (i, l) in chunk.iter().enumerate() {
            vendor
                .serialize(VendorRow {
                    file: name.clone(),
                    page: i + 1,
                    sender: &l.row.sender,
                    name: &l.row.name,
                    kana_name: &l.row.kana_name,
                    address: &l.row.address,
                    medical_id: &l.row.medical_id,
                    activation_code: &l.code,
                    code_expires: &l.expires,
                })
                .map_err(csv_error)?;
        }
        files.push(path);
    }
    let csv_file = vendor
        .into_inner()
        .map_err(|e| io(&csv_path)(e.into_error()))?
        .into_inner()
        .map_err(|e| io(&csv_path)(e.into_error()))?;
    csv_file.sync_all().map_err(io(&csv_path))?;
    files.push(csv_path);
    Ok(files)
}

/// The print vendor's columns, in `VendorRow`'s order.
const VENDOR_HEADER: [&str; 9] = [
    "file",
    "page",
    "sender",
    "name",
    "kana_name",
    "address",
    "medical_id",
    "activation_code",
    "code_expires",
];

/// Writes a letters file readable by its owner alone (it carries activation codes)
/// and makes it durable before the codes in it are committed.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = crate::files::create_private(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_pdf_with_the_font_when_installed() {
        let cfg = LettersConfig::default();
        if !cfg.font.exists() {
            // The end-to-end test in tests/ requires the font; here it is optional.
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let letter = Letter {
            pid: 1,
            row: LetterRow {
                pid: 1,
                sender: String::new(),
                name: "山田 太郎".into(),
                kana_name: "ヤマダ タロウ".into(),
                medical_id: "1234-5678-9012-3456".into(),
                address: "東京都千代田区1-1".into(),
                card: String::new(),
            },
            code: "ABCD-EFGH-JKMN".into(),
            expires: "2027-02-25".into(),
            expires_at: 0,
        };
        let files = write_letters(tmp.path(), &[letter], Plan::Agency, &cfg).unwrap();
        let pdf = std::fs::read(&files[0]).unwrap();
        assert!(pdf.starts_with(b"%PDF-1.7"));
        assert!(pdf.ends_with(b"%%EOF\n"));
    }
}
