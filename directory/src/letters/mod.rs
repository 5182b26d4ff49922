//! Letters that tell each person their medical ID (proposal §2-4): printable A4 PDFs in
//! Japanese with the ID as 4-4-4-4 and a one-time activation code for My Portal, and
//! the CSV a print vendor needs. The code is printed here and stored only as a hash.

pub mod pdf;

use crate::config::LettersConfig;
use crate::store::{LetterRow, Plan};
use chrono::NaiveDate;
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

/// The postal code an address starts with (`〒100-0001 東京都…`), and the rest.
fn split_postal(address: &str) -> (Option<&str>, &str) {
    match address.strip_prefix('〒').and_then(|r| r.split_once(' ')) {
        Some((code, rest)) => (Some(code), rest),
        None => (None, address),
    }
}

/// Lines set from the top of a page down, wrapped to the text width.
struct Column<'f> {
    font: &'f Font<'f>,
    texts: Vec<Text>,
    y: f32,
}

/// The left margin and the width text is wrapped to, in points.
const LEFT: f32 = 60.0;
const WIDTH: f32 = 475.0;

impl Column<'_> {
    /// `s` in `size` points, wrapped to `width`, then `after` points of space.
    fn para(&mut self, size: f32, width: f32, s: &str, after: f32) {
        for line in self.font.wrap(s, size, width) {
            self.y -= size * 1.45;
            self.texts.push(text(LEFT, self.y, size, line));
        }
        self.y -= after;
    }
}

fn page(l: &Letter, plan: Plan, cfg: &LettersConfig, font: &Font<'_>, issued: NaiveDate) -> Page {
    let r = &l.row;
    let sender = match plan {
        Plan::Agency => "医療ID管理機関 / Medical ID Agency".to_string(),
        Plan::Insurer => format!("保険者番号 {} / Insurer {}", r.sender, r.sender),
    };
    let expires = crate::dates::local_day(l.expires_at)
        .map_or_else(|| l.expires.clone(), crate::dates::ja_date);
    let mut c = Column {
        font,
        texts: Vec::new(),
        y: 800.0,
    };
    let issued_on = format!("発行日 {}", crate::dates::ja_date(issued));
    let right = LEFT + WIDTH - font.width(&issued_on, 10.0);
    c.texts.push(text(right, 800.0, 10.0, issued_on));
    // The addressee, where a window envelope shows it.
    let (postal, address) = split_postal(&r.address);
    c.y = 770.0;
    if let Some(p) = postal {
        c.para(11.0, 260.0, &format!("〒{p}"), 0.0);
    }
    c.para(11.0, 260.0, address, 4.0);
    c.para(15.0, 260.0, &format!("{} 様", r.name), 0.0);
    c.para(10.0, 260.0, &r.kana_name, 14.0);
    c.para(18.0, WIDTH, "医療ID（医療等番号）のお知らせ", 0.0);
    c.para(10.0, WIDTH, "Notice of your medical ID", 8.0);
    if !r.card.is_empty() {
        c.para(9.0, WIDTH, &format!("保険証 / Card: {}", r.card), 6.0);
    }
    // The ID in a box.
    c.para(11.0, WIDTH, "あなたの医療ID / Your medical ID", 0.0);
    let top = c.y + 18.0;
    c.y -= 10.0;
    c.para(26.0, WIDTH, &r.medical_id, 12.0);
    let boxed = (LEFT - 6.0, c.y, WIDTH + 12.0, top - c.y);
    c.y -= 10.0;
    c.para(
        13.0,
        WIDTH,
        &format!("マイポータル初回登録コード：{}", l.code),
        0.0,
    );
    c.para(
        10.0,
        WIDTH,
        &format!(
            "有効期限 {expires}まで（一度だけ使えます） / First sign-in code, valid once until {}",
            l.expires
        ),
        10.0,
    );
    c.para(12.0, WIDTH, "医療IDとは", 0.0);
    c.para(
        10.5,
        WIDTH,
        "医療IDは、病院・診療所・薬局があなたの保険の資格を確かめ、あなたが同意した医療機関どうしで診療の記録をやりとりするための番号です。マイナンバーとは別の番号で、医療の場面でだけ使います。受付で保険証と一緒に伝えることがあります。このお知らせは大切に保管してください。",
        8.0,
    );
    c.para(12.0, WIDTH, "マイポータルへの登録方法", 0.0);
    for step in [
        format!("1. {} を開き、「はじめての方」を選びます。", cfg.portal_url),
        "2. 上の医療IDと初回登録コードを入力し、10文字以上のパスワードを決めます。".into(),
        "3. 受診の記録、あなたの記録を見た医療機関、記録を見せてよい相手（同意）を確かめ、変えられます。".into(),
    ] {
        c.para(10.5, WIDTH, &step, 0.0);
    }
    c.y -= 8.0;
    c.para(12.0, WIDTH, "コードをなくしたとき・期限が切れたとき", 0.0);
    c.para(
        10.5,
        WIDTH,
        &format!(
            "下の連絡先にご連絡ください。本人であることを確かめたうえで、新しいコードを書いたお知らせを郵送します。それまでのコードは使えなくなります。初回登録コードは、ほかの人に教えないでください。連絡先：{}",
            cfg.contact
        ),
        8.0,
    );
    c.para(
        9.0,
        WIDTH,
        &format!(
            "In English: this is your medical ID. Open {}, choose \"First time\", enter the ID and the code above, and choose a password of at least 10 characters. The code works once; keep it to yourself. If it is lost or expired, contact us for a new letter: {}",
            cfg.portal_url, cfg.contact
        ),
        0.0,
    );
    c.texts.push(text(LEFT, 60.0, 9.0, sender));
    c.texts.push(text(
        LEFT,
        48.0,
        9.0,
        format!("お問い合わせ / Contact: {}", cfg.contact),
    ));
    Page {
        texts: c.texts,
        boxes: vec![boxed],
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
        let issued = crate::registry::today();
        let pages: Vec<Page> = chunk
            .iter()
            .map(|l| page(l, plan, cfg, &font, issued))
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
