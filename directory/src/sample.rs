//! Realistic enrollment files for the four insurer kinds: valid numbers, kana names in
//! the forms insurers really send, households with dependents, people who changed
//! insurer, and on request a share of broken rows like those registration desks make.

use crate::enrollment::{Encoding, HEADER};
use chrono::{Days, NaiveDate};
use iryo_proto::{InsurerKind, InsurerNumber, MyNumber};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SampleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone)]
pub struct SampleOptions {
    pub persons: u64,
    pub seed: u64,
    /// Percentage of rows to break on purpose, 0 to 100.
    pub bad_rows_percent: f64,
    pub encoding: Encoding,
}

impl SampleOptions {
    /// Clean UTF-8 files for `persons` people.
    pub fn clean(persons: u64, seed: u64) -> Self {
        Self {
            persons,
            seed,
            bad_rows_percent: 0.0,
            encoding: Encoding::Utf8,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SampleReport {
    pub files: Vec<PathBuf>,
    pub rows: u64,
    pub bad_rows: u64,
    pub movers: u64,
}

const FAMILY: [(&str, &str); 24] = [
    ("佐藤", "サトウ"),
    ("鈴木", "スズキ"),
    ("高橋", "タカハシ"),
    ("田中", "タナカ"),
    ("伊藤", "イトウ"),
    ("渡辺", "ワタナベ"),
    ("山本", "ヤマモト"),
    ("中村", "ナカムラ"),
    ("小林", "コバヤシ"),
    ("加藤", "カトウ"),
    ("吉田", "ヨシダ"),
    ("山田", "ヤマダ"),
    ("佐々木", "ササキ"),
    ("山口", "ヤマグチ"),
    ("松本", "マツモト"),
    ("井上", "イノウエ"),
    ("木村", "キムラ"),
    ("林", "ハヤシ"),
    ("斎藤", "サイトウ"),
    ("清水", "シミズ"),
    ("山崎", "ヤマザキ"),
    ("森", "モリ"),
    ("池田", "イケダ"),
    ("橋本", "ハシモト"),
];
const MALE: [(&str, &str); 12] = [
    ("太郎", "タロウ"),
    ("翔", "ショウ"),
    ("大輔", "ダイスケ"),
    ("健太", "ケンタ"),
    ("誠", "マコト"),
    ("蓮", "レン"),
    ("悠真", "ユウマ"),
    ("陽翔", "ハルト"),
    ("浩二", "コウジ"),
    ("拓也", "タクヤ"),
    ("湊", "ミナト"),
    ("一郎", "イチロウ"),
];
const FEMALE: [(&str, &str); 12] = [
    ("花子", "ハナコ"),
    ("陽菜", "ヒナ"),
    ("美咲", "ミサキ"),
    ("結衣", "ユイ"),
    ("さくら", "サクラ"),
    ("葵", "アオイ"),
    ("由美子", "ユミコ"),
    ("恵子", "ケイコ"),
    ("凛", "リン"),
    ("芽依", "メイ"),
    ("愛", "アイ"),
    ("智子", "トモコ"),
];
/// Prefecture, town and the town's postal code.
const CITIES: [(&str, &str, &str); 8] = [
    ("東京都", "千代田区千代田", "100-0001"),
    ("東京都", "世田谷区太子堂", "154-0004"),
    ("大阪府", "大阪市北区梅田", "530-0001"),
    ("北海道", "札幌市中央区北一条西", "060-0001"),
    ("愛知県", "名古屋市中区栄", "460-0008"),
    ("福岡県", "福岡市博多区博多駅前", "812-0011"),
    ("神奈川県", "横浜市西区みなとみらい", "220-0012"),
    ("宮城県", "仙台市青葉区一番町", "980-0811"),
];

struct Insurer {
    kind: InsurerKind,
    number: InsurerNumber,
    share: u32,
}

fn insurers() -> Result<Vec<Insurer>, SampleError> {
    let spec = [
        (InsurerKind::Nhi, "13101", 13),
        (InsurerKind::Nhi, "27127", 12),
        (InsurerKind::Kyokai, "0113001", 25),
        (InsurerKind::Kyokai, "0127001", 15),
        (InsurerKind::Society, "0613052", 13),
        (InsurerKind::Society, "0627014", 12),
        (InsurerKind::MutualAid, "3113011", 5),
        (InsurerKind::MutualAid, "3213001", 5),
    ];
    spec.iter()
        .map(|(kind, body, share)| {
            Ok(Insurer {
                kind: *kind,
                number: InsurerNumber::from_body(body)
                    .map_err(|e| SampleError::Invalid(e.to_string()))?,
                share: *share,
            })
        })
        .collect()
}

/// A bijection on 11-digit bodies, so every generated person has a distinct My Number.
fn my_number(i: u64, seed: u64) -> MyNumber {
    const SPACE: u64 = 100_000_000_000;
    let offset = seed.wrapping_mul(0x9E37_79B9) % SPACE;
    MyNumber::from_body(((i as u128 * 7_919_432_051u128 + offset as u128) % SPACE as u128) as u64)
}

fn to_hiragana(kana: &str) -> String {
    kana.chars()
        .map(|c| match c {
            '\u{30A1}'..='\u{30F6}' => char::from_u32(c as u32 - 0x60).unwrap_or(c),
            _ => c,
        })
        .collect()
}

fn date(rng: &mut StdRng, from_year: i32, to_year: i32) -> NaiveDate {
    let start = NaiveDate::from_ymd_opt(from_year, 1, 1).unwrap_or(NaiveDate::MIN);
    let span = (to_year - from_year).max(1) as u64 * 365;
    start + Days::new(rng.random_range(0..span))
}

/// Persons generated together, from a random stream of their own: chunks are written
/// in parallel and appended in order, so a seed gives the same files on any machine.
/// Up to one chunk, the files are those of one sequential stream.
const CHUNK_PERSONS: u64 = 250_000;
/// Card numbers each chunk may give out per insurer (households and movers of at most
/// `CHUNK_PERSONS` persons), so no two chunks share a card.
const CHUNK_CARDS: u64 = 2 * CHUNK_PERSONS;

/// One chunk's rows, per insurer, encoded as the files are.
struct Rows {
    per_insurer: Vec<Vec<u8>>,
    encoding: Encoding,
    report: SampleReport,
}

impl Rows {
    fn row(&mut self, insurer: usize, fields: &[String]) {
        let mut line = String::with_capacity(160);
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            if f.contains(',') || f.contains('"') {
                line.push('"');
                line.push_str(&f.replace('"', "\"\""));
                line.push('"');
            } else {
                line.push_str(f);
            }
        }
        line.push_str("\r\n");
        let out = &mut self.per_insurer[insurer];
        match self.encoding {
            Encoding::Utf8 => out.extend_from_slice(line.as_bytes()),
            Encoding::ShiftJis => out.extend_from_slice(&encoding_rs::SHIFT_JIS.encode(&line).0),
        }
    }
}

/// Writes one file per insurer into `dir` and returns what it wrote. Chunks of
/// persons are generated on every core, a few at a time, so memory stays bounded
/// however many persons are asked for.
pub fn write_sample(dir: &Path, opts: &SampleOptions) -> Result<SampleReport, SampleError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SampleError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ins = insurers()?;
    let mut files = Vec::new();
    let mut header = Rows {
        per_insurer: vec![Vec::new(); ins.len()],
        encoding: opts.encoding,
        report: SampleReport::default(),
    };
    for (n, i) in ins.iter().enumerate() {
        let path = dir.join(format!("{}_{}.csv", i.kind.as_str(), i.number));
        // Made-up people, but files of the shape of personal data: 0600 all the same.
        let file = crate::files::create_private(&path).map_err(io(&path))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        // Spreadsheet exports from Kyokai Kenpo arrive with a UTF-8 byte-order mark.
        if opts.encoding == Encoding::Utf8 && i.kind == InsurerKind::Kyokai {
            w.write_all(b"\xEF\xBB\xBF").map_err(io(&path))?;
        }
        let names: Vec<String> = HEADER
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        header.row(n, &names);
        w.write_all(&header.per_insurer[n]).map_err(io(&path))?;
        files.push((path, w));
    }
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as u64;
    let chunks = opts.persons.div_ceil(CHUNK_PERSONS);
    let mut report = SampleReport::default();
    let mut first = 0;
    while first < chunks {
        let wave: Vec<Rows> = std::thread::scope(|s| {
            let handles: Vec<_> = (first..chunks.min(first + threads))
                .map(|c| {
                    let ins = &ins;
                    s.spawn(move || chunk(ins, opts, c))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        for rows in wave {
            for ((path, w), bytes) in files.iter_mut().zip(&rows.per_insurer) {
                w.write_all(bytes).map_err(io(path))?;
            }
            report.rows += rows.report.rows;
            report.movers += rows.report.movers;
            report.bad_rows += rows.report.bad_rows;
        }
        first += threads;
    }
    for (path, mut w) in files {
        w.flush().map_err(io(&path))?;
        report.files.push(path);
    }
    Ok(report)
}

/// The rows of chunk `c`: persons `c * CHUNK_PERSONS` onwards, from a random stream
/// seeded by the seed and the chunk (chunk 0 by the seed alone).
fn chunk(ins: &[Insurer], opts: &SampleOptions, c: u64) -> Rows {
    let mut rows = Rows {
        per_insurer: vec![Vec::new(); ins.len()],
        encoding: opts.encoding,
        report: SampleReport::default(),
    };
    let total_share: u32 = ins.iter().map(|i| i.share).sum();
    let mut rng = StdRng::seed_from_u64(opts.seed ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut next_card = vec![1 + c * CHUNK_CARDS; ins.len()];
    let mut person = c * CHUNK_PERSONS;
    let end = opts.persons.min(person + CHUNK_PERSONS);
    while person < end {
        let mut pick = rng.random_range(0..total_share);
        let home = ins
            .iter()
            .position(|i| {
                if pick < i.share {
                    true
                } else {
                    pick -= i.share;
                    false
                }
            })
            .unwrap_or(0);
        let size = (rng.random_range(1..=4u64)).min(end - person);
        let (family, family_kana) = FAMILY[rng.random_range(0..FAMILY.len())];
        let (pref, town, postal_code) = CITIES[rng.random_range(0..CITIES.len())];
        let address = format!(
            "{pref}{town}{}-{}-{}",
            rng.random_range(1..=9),
            rng.random_range(1..=30),
            rng.random_range(1..=20)
        );
        let card_no = next_card[home];
        next_card[home] += 1;
        let symbol = match ins[home].kind {
            InsurerKind::Kyokai => format!("{:08}", 10_000_000 + card_no / 500),
            InsurerKind::Nhi => format!(
                "{}{}",
                ["千代", "あ", "北"][card_no as usize % 3],
                card_no % 90 + 10
            ),
            InsurerKind::Society => format!("{}", card_no % 40 + 1),
            InsurerKind::MutualAid => format!("{:04}", card_no % 3000),
        };
        let from = date(&mut rng, 2015, 2025);
        for member in 0..size {
            let i = person + member;
            let male = if member == 0 {
                rng.random_bool(0.6)
            } else {
                rng.random_bool(0.5)
            };
            let (given, given_kana) = if male {
                MALE[rng.random_range(0..MALE.len())]
            } else {
                FEMALE[rng.random_range(0..FEMALE.len())]
            };
            let birth = if member <= 1 {
                date(&mut rng, 1940, 2000)
            } else {
                date(&mut rng, 2001, 2024)
            };
            let kana = format!("{family_kana} {given_kana}");
            let kana = match rng.random_range(0..10) {
                0 => to_hiragana(&kana),
                1 => kana.replace(' ', "　　"),
                _ => kana,
            };
            let relation = if member == 0 || ins[home].kind == InsurerKind::Nhi {
                "insured"
            } else {
                "dependent"
            };
            let start = from.max(birth);
            let mut fields: Vec<String> = vec![
                ins[home].kind.as_str().into(),
                ins[home].number.to_string(),
                symbol.clone(),
                card_no.to_string(),
                format!("{member:02}"),
                relation.into(),
                my_number(i, opts.seed).to_string(),
                format!("{family} {given}"),
                kana,
                birth.to_string(),
                if male { "1" } else { "2" }.into(),
                address.clone(),
                start.to_string(),
                String::new(),
                postal_code.to_string(),
            ];
            // A head of household who changed job: an ended coverage at another insurer.
            if member == 0 && rng.random_bool(0.03) {
                let other = (home + 1 + rng.random_range(0..ins.len() - 1)) % ins.len();
                let old_card = next_card[other];
                next_card[other] += 1;
                let old_from = date(&mut rng, 2005, 2014).max(birth);
                let old_until = start - Days::new(1);
                let mut old = fields.clone();
                old[0] = ins[other].kind.as_str().into();
                old[1] = ins[other].number.to_string();
                old[2] = match ins[other].kind {
                    InsurerKind::Kyokai => format!("{:08}", 20_000_000 + old_card / 500),
                    _ => format!("{}", old_card % 50 + 1),
                };
                old[3] = old_card.to_string();
                old[4] = "00".into();
                old[5] = "insured".into();
                old[12] = old_from.to_string();
                old[13] = old_until.to_string();
                // The old insurer misspelt the kana: the directory must hold it as a conflict.
                if opts.bad_rows_percent > 0.0 && rng.random_bool(0.3) {
                    old[8] = format!(
                        "{family_kana} {}",
                        FEMALE[rng.random_range(0..FEMALE.len())].1
                    );
                }
                if old_from <= old_until {
                    rows.row(other, &old);
                    rows.report.rows += 1;
                    rows.report.movers += 1;
                }
            }
            if opts.bad_rows_percent > 0.0
                && rng.random_bool((opts.bad_rows_percent / 100.0).clamp(0.0, 1.0))
            {
                break_row(&mut rng, &mut fields);
                rows.report.bad_rows += 1;
            }
            rows.row(home, &fields);
            rows.report.rows += 1;
        }
        person += size;
    }
    rows
}

/// The mistakes seen on real registration forms.
fn break_row(rng: &mut StdRng, f: &mut [String]) {
    match rng.random_range(0..8) {
        0 => {
            // A mistyped last digit of the My Number.
            let mut d: Vec<char> = f[6].chars().collect();
            if let Some(last) = d.last_mut() {
                *last = char::from(b'0' + ((*last as u8 - b'0' + 1) % 10));
            }
            f[6] = d.into_iter().collect();
        }
        1 => f[9] = "1985-02-30".into(),
        2 => f[9] = "2099-04-01".into(),
        3 => f[8] = f[7].clone(),
        4 => f[10] = "M?".into(),
        5 => f[7] = String::new(),
        6 => {
            let mut d: Vec<char> = f[1].chars().collect();
            d.swap(2, 3);
            f[1] = d.into_iter().collect();
            if f[1].chars().nth(2) == f[1].chars().nth(3) {
                f[1].push('9');
            }
        }
        _ => f[4] = "A1".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_files() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let opts = SampleOptions {
            persons: 300,
            seed: 7,
            bad_rows_percent: 5.0,
            encoding: Encoding::Utf8,
        };
        let ra = write_sample(a.path(), &opts).unwrap();
        write_sample(b.path(), &opts).unwrap();
        assert_eq!(ra.files.len(), 8);
        for f in &ra.files {
            let name = f.file_name().unwrap();
            assert_eq!(
                std::fs::read(f).unwrap(),
                std::fs::read(b.path().join(name)).unwrap()
            );
        }
        assert!(ra.rows >= 300);
    }

    #[test]
    fn chunks_written_in_parallel_share_no_person_and_no_card() {
        let dir = tempfile::tempdir().unwrap();
        let persons = CHUNK_PERSONS + 20_000;
        let report = write_sample(dir.path(), &SampleOptions::clean(persons, 5)).unwrap();
        let mut people = std::collections::HashSet::new();
        let mut cards = std::collections::HashSet::new();
        let mut rows = 0;
        for f in &report.files {
            let mut r = csv::Reader::from_path(f).unwrap();
            for row in r.records() {
                let row = row.unwrap();
                rows += 1;
                // A mover is in two files, with a card at each insurer.
                people.insert(row[6].to_string());
                assert!(
                    cards.insert((
                        row[1].to_string(),
                        row[2].to_string(),
                        row[3].to_string(),
                        row[4].to_string()
                    )),
                    "a card given out twice: {row:?}"
                );
            }
        }
        assert_eq!(people.len() as u64, persons);
        assert_eq!(rows, report.rows);
        assert_eq!(report.rows, persons + report.movers);
    }

    #[test]
    fn my_numbers_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000 {
            assert!(seen.insert(my_number(i, 3)));
        }
    }
}
