//! A small PDF writer for letters: pages of positioned text in one embedded TrueType
//! font (Type0 / CIDFontType2, Identity-H, glyph ids as character ids) with a ToUnicode
//! map, so that the text can be searched and copied out of the PDF again. Only the
//! glyphs the pages use are embedded (a subset made by `subsetter`), renumbered from 1.

use flate2::write::ZlibEncoder;
use flate2::Compression;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PdfError {
    #[error("the font does not parse as TrueType: {0}")]
    Font(String),
    #[error("the font has no glyph for {0:?}")]
    NoGlyph(char),
    #[error("compression: {0}")]
    Io(#[from] std::io::Error),
    #[error("the font cannot be subset: {0}")]
    Subset(String),
}

/// One line of text at (x, y) points from the bottom left, in `size` points.
pub struct Text {
    pub x: f32,
    pub y: f32,
    pub size: f32,
    pub text: String,
}

pub struct Page {
    pub texts: Vec<Text>,
    /// Rectangles (x, y, w, h) stroked in thin lines.
    pub boxes: Vec<(f32, f32, f32, f32)>,
}

pub struct Font<'a> {
    data: &'a [u8],
    face: ttf_parser::Face<'a>,
    name: String,
}

impl<'a> Font<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, PdfError> {
        let face = ttf_parser::Face::parse(data, 0).map_err(|e| PdfError::Font(e.to_string()))?;
        let name = face
            .names()
            .into_iter()
            .find(|n| n.name_id == ttf_parser::name_id::POST_SCRIPT_NAME)
            .and_then(|n| n.to_string())
            .unwrap_or_else(|| "EmbeddedFont".into())
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        Ok(Self { data, face, name })
    }

    fn scale(&self, v: i32) -> i32 {
        v * 1000 / i32::from(self.face.units_per_em())
    }
}

/// A4 portrait, in points.
pub const A4: (f32, f32) = (595.0, 842.0);

impl Font<'_> {
    /// The glyph of `ch` and its advance in thousandths of an em.
    fn glyph(&self, ch: char) -> Result<(u16, i32), PdfError> {
        let gid = self.face.glyph_index(ch).ok_or(PdfError::NoGlyph(ch))?;
        let adv = self
            .face
            .glyph_hor_advance(gid)
            .map_or(1000, |a| self.scale(i32::from(a)));
        Ok((gid.0, adv))
    }

    /// How wide `text` is set in `size` points; characters the font lacks count as
    /// one em.
    pub fn width(&self, text: &str, size: f32) -> f32 {
        let ems: i32 = text
            .chars()
            .map(|c| self.glyph(c).map_or(1000, |(_, a)| a))
            .sum();
        ems as f32 * size / 1000.0
    }

    /// `text` broken into lines no wider than `max` points in `size` points: inside a
    /// Latin word at the space before it, elsewhere between any two characters
    /// (Japanese has no spaces), except that closing punctuation (。、）」) never starts a
    /// line: it hangs at the end of the one before.
    pub fn wrap(&self, text: &str, size: f32, max: f32) -> Vec<String> {
        const CLOSING: &str = "。、，．）」』】〕・ー！？,.)";
        let advance = |c: char| self.glyph(c).map_or(1000, |(_, a)| a) as f32 * size / 1000.0;
        let mut lines = Vec::new();
        let mut line = String::new();
        // The width of `line`, kept as it grows rather than measured again.
        let mut width = 0.0;
        for ch in text.chars() {
            let w = advance(ch);
            if width + w <= max || line.is_empty() {
                line.push(ch);
                width += w;
                continue;
            }
            if CLOSING.contains(ch) {
                line.push(ch);
                lines.push(std::mem::take(&mut line));
                width = 0.0;
                continue;
            }
            let word_at = line.rfind(' ').filter(|_| {
                ch.is_ascii_alphanumeric() && line.ends_with(|c: char| c.is_ascii_alphanumeric())
            });
            match word_at {
                Some(at) if at > 0 => {
                    let carry = line[at + 1..].to_string();
                    line.truncate(at);
                    width = self.width(&carry, size);
                    lines.push(std::mem::replace(&mut line, carry));
                }
                _ => {
                    lines.push(std::mem::take(&mut line));
                    width = 0.0;
                }
            }
            line.push(ch);
            width += w;
        }
        if !line.is_empty() {
            lines.push(line);
        }
        lines
    }
}

/// Renders `pages` into one PDF file.
pub fn render(font: &Font<'_>, pages: &[Page]) -> Result<Vec<u8>, PdfError> {
    // The glyphs used, renumbered densely for the subset.
    let mut remapper = subsetter::GlyphRemapper::new();
    // New glyph id -> character (for ToUnicode) and advance width.
    let mut used: BTreeMap<u16, (char, i32)> = BTreeMap::new();
    let mut contents = Vec::with_capacity(pages.len());
    for page in pages {
        let mut c = String::new();
        for (x, y, w, h) in &page.boxes {
            let _ = writeln!(c, "0.5 w {x:.1} {y:.1} {w:.1} {h:.1} re S");
        }
        for t in &page.texts {
            let mut hex = String::with_capacity(t.text.len() * 4);
            for ch in t.text.chars() {
                let (gid, adv) = font.glyph(ch)?;
                let new = remapper.remap(gid);
                used.insert(new, (ch, adv));
                let _ = write!(hex, "{new:04X}");
            }
            let _ = writeln!(
                c,
                "BT /F1 {:.1} Tf {:.1} {:.1} Td <{hex}> Tj ET",
                t.size, t.x, t.y
            );
        }
        contents.push(deflate(c.as_bytes())?);
    }
    let subset = subsetter::subset(font.data, 0, &remapper)
        .map_err(|e| PdfError::Subset(format!("{e:?}")))?;
    // A subset's name carries a tag of six capitals (PDF 32000, 9.6.4).
    let name = format!("IRYOSB+{}", font.name);

    let mut out = Pdf::default();
    out.raw(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n");
    // Fixed numbers: 1 catalog, 2 pages, 3 Type0, 4 CIDFont, 5 descriptor, 6 font file,
    // 7 ToUnicode; then a page object and its content per page.
    let kids: Vec<String> = (0..pages.len())
        .map(|i| format!("{} 0 R", 8 + 2 * i))
        .collect();
    out.object(1, b"<< /Type /Catalog /Pages 2 0 R >>");
    out.object(
        2,
        format!(
            "<< /Type /Pages /Kids [{}] /Count {} >>",
            kids.join(" "),
            pages.len()
        )
        .as_bytes(),
    );
    out.object(
        3,
        format!(
            "<< /Type /Font /Subtype /Type0 /BaseFont /{name} /Encoding /Identity-H /DescendantFonts [4 0 R] /ToUnicode 7 0 R >>"
        )
        .as_bytes(),
    );
    let widths: String = used
        .iter()
        .map(|(gid, (_, w))| format!("{gid} [{w}]"))
        .collect::<Vec<_>>()
        .join(" ");
    out.object(
        4,
        format!(
            "<< /Type /Font /Subtype /CIDFontType2 /BaseFont /{name} /CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> /FontDescriptor 5 0 R /CIDToGIDMap /Identity /DW 1000 /W [{widths}] >>"
        )
        .as_bytes(),
    );
    let b = font.face.global_bounding_box();
    let (asc, desc) = (
        font.scale(i32::from(font.face.ascender())),
        font.scale(i32::from(font.face.descender())),
    );
    out.object(
        5,
        format!(
            "<< /Type /FontDescriptor /FontName /{name} /Flags 4 /FontBBox [{} {} {} {}] /ItalicAngle 0 /Ascent {asc} /Descent {desc} /CapHeight {asc} /StemV 80 /FontFile2 6 0 R >>",
            font.scale(i32::from(b.x_min)),
            font.scale(i32::from(b.y_min)),
            font.scale(i32::from(b.x_max)),
            font.scale(i32::from(b.y_max)),
        )
        .as_bytes(),
    );
    out.stream(6, &format!("/Length1 {}", subset.len()), &deflate(&subset)?);
    out.stream(7, "", &deflate(to_unicode(&used).as_bytes())?);
    for (i, content) in contents.iter().enumerate() {
        let page = 8 + 2 * i;
        out.object(
            page,
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {} {}] /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
                A4.0,
                A4.1,
                page + 1
            )
            .as_bytes(),
        );
        out.stream(page + 1, "", content);
    }
    Ok(out.finish())
}

fn deflate(data: &[u8]) -> Result<Vec<u8>, PdfError> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(data)?;
    Ok(e.finish()?)
}

fn to_unicode(used: &BTreeMap<u16, (char, i32)>) -> String {
    let mut s = String::from(
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n\
/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n\
/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n\
1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n",
    );
    let entries: Vec<_> = used.iter().collect();
    for chunk in entries.chunks(100) {
        let _ = writeln!(s, "{} beginbfchar", chunk.len());
        for (gid, (ch, _)) in chunk {
            let mut units = [0u16; 2];
            let hex: String = ch
                .encode_utf16(&mut units)
                .iter()
                .map(|u| format!("{u:04X}"))
                .collect();
            let _ = writeln!(s, "<{gid:04X}> <{hex}>");
        }
        s.push_str("endbfchar\n");
    }
    s.push_str("endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n");
    s
}

/// Objects written in order, with the byte offsets the cross-reference table needs.
#[derive(Default)]
struct Pdf {
    buf: Vec<u8>,
    offsets: BTreeMap<usize, usize>,
}

impl Pdf {
    fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    fn object(&mut self, n: usize, body: &[u8]) {
        self.offsets.insert(n, self.buf.len());
        self.raw(format!("{n} 0 obj\n").as_bytes());
        self.raw(body);
        self.raw(b"\nendobj\n");
    }

    fn stream(&mut self, n: usize, extra: &str, data: &[u8]) {
        self.offsets.insert(n, self.buf.len());
        self.raw(
            format!(
                "{n} 0 obj\n<< /Length {} /Filter /FlateDecode {extra} >>\nstream\n",
                data.len()
            )
            .as_bytes(),
        );
        self.raw(data);
        self.raw(b"\nendstream\nendobj\n");
    }

    fn finish(mut self) -> Vec<u8> {
        let xref = self.buf.len();
        let count = self.offsets.len() + 1;
        let mut table = format!("xref\n0 {count}\n0000000000 65535 f \n");
        for off in self.offsets.values() {
            let _ = writeln!(table, "{off:010} 00000 n ");
        }
        let _ = write!(
            table,
            "trailer\n<< /Size {count} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
        );
        self.raw(table.as_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_wrap_at_the_width_and_closing_marks_hang() {
        let path = crate::config::LettersConfig::default().font;
        let Ok(data) = std::fs::read(&path) else {
            // The letters' end-to-end test requires the font; here it is optional.
            return;
        };
        let font = Font::parse(&data).unwrap();
        let text = "医療IDは、病院・診療所・薬局があなたの保険の資格を確かめるための番号です。";
        let lines = font.wrap(text, 10.0, 100.0);
        assert!(lines.len() > 1);
        assert_eq!(lines.concat(), text, "nothing lost or added");
        for l in &lines {
            assert!(!l.starts_with(['。', '、']), "{lines:?}");
            // A hanging mark may stick out by itself, nothing more.
            let body = l.trim_end_matches(['。', '、']);
            assert!(font.width(body, 10.0) <= 100.0, "{l}");
        }
        let latin = font.wrap("choose a password of at least ten characters", 10.0, 80.0);
        assert!(
            latin
                .iter()
                .all(|l| !l.starts_with(' ') && !l.ends_with(' ')),
            "{latin:?}"
        );
        assert_eq!(
            latin.join(" "),
            "choose a password of at least ten characters"
        );
    }
}
