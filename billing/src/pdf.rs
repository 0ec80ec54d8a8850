//! The invoice as a PDF, for finance systems that file PDFs: the same data
//! and the same number formatting as the HTML ([`crate::render`]), laid out
//! on A4 pages in Helvetica (one of the PDF standard fonts, so nothing is
//! embedded).
//!
//! A small writer of its own (PDF 1.4, uncompressed text streams): an
//! invoice needs text, lines and page breaks, and nothing in it varies but
//! the invoice, so equal invoices give byte-identical files (no creation
//! date, no random ids). Text is encoded in WinAnsi (Latin-1 plus dashes,
//! quotes and the euro sign): characters outside it print as `?`.

use crate::invoice::{Invoice, InvoiceStatus, LineKind};
use crate::render::{group_thousands, quantity_cell, unit_price_cell};
use std::fmt::Write;

const PAGE_W: f32 = 595.0;
const PAGE_H: f32 = 842.0;
const MARGIN: f32 = 40.0;
/// Characters of a description per table row (wrapped at spaces).
const DESCRIPTION_CHARS: usize = 44;

/// Width of `s` in Helvetica at `size` points (from the font's metrics for
/// the characters invoices print; others as an average letter).
fn width(s: &str, size: f32) -> f32 {
    let units: u32 = s
        .chars()
        .map(|c| match c {
            '0'..='9' => 556,
            ',' | '.' | ' ' | ':' => 278,
            '-' | '(' | ')' => 333,
            'A'..='Z' => 667,
            'i' | 'j' | 'l' => 222,
            'f' | 't' => 278,
            'm' | 'w' => 833,
            _ => 556,
        })
        .sum();
    units as f32 * size / 1000.0
}

/// `s` as a PDF string literal in WinAnsi (Latin-1 for what invoices hold).
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('(');
    for c in s.chars() {
        match c {
            '(' | ')' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            '\u{a0}'..='\u{ff}' => {
                let _ = write!(out, "\\{:03o}", c as u32);
            }
            _ => match win_ansi(c) {
                Some(b) => {
                    let _ = write!(out, "\\{b:03o}");
                }
                None => out.push('?'),
            },
        }
    }
    out.push(')');
    out
}

/// The WinAnsi byte of the characters it has beyond Latin-1 (dashes,
/// quotes, the euro sign, ...).
fn win_ansi(c: char) -> Option<u8> {
    Some(match c {
        '€' => 0x80,
        '‚' => 0x82,
        '„' => 0x84,
        '…' => 0x85,
        '‘' => 0x91,
        '’' => 0x92,
        '“' => 0x93,
        '”' => 0x94,
        '•' => 0x95,
        '–' => 0x96,
        '—' => 0x97,
        '™' => 0x99,
        _ => return None,
    })
}

/// The note after a line's description, as on the HTML invoice.
fn kind_note(kind: LineKind) -> &'static str {
    match kind {
        LineKind::Usage => "",
        LineKind::CommitmentTrueUp => " (commitment)",
        LineKind::Adjustment => " (adjustment)",
        LineKind::Credit => " (credit)",
    }
}

/// Words of `s` in rows of at most `n` characters (a longer word is cut).
fn wrap(s: &str, n: usize) -> Vec<String> {
    let mut rows: Vec<String> = Vec::new();
    let mut row = String::new();
    for word in s.split_whitespace() {
        let mut word = word.to_string();
        while word.chars().count() > n {
            let head: String = word.chars().take(n).collect();
            word = word.chars().skip(n).collect();
            if !row.is_empty() {
                rows.push(std::mem::take(&mut row));
            }
            rows.push(head);
        }
        if !row.is_empty() && row.chars().count() + 1 + word.chars().count() > n {
            rows.push(std::mem::take(&mut row));
        }
        if !row.is_empty() {
            row.push(' ');
        }
        row.push_str(&word);
    }
    if !row.is_empty() || rows.is_empty() {
        rows.push(row);
    }
    rows
}

/// Pages of drawing operators.
struct Pages {
    done: Vec<String>,
    page: String,
    y: f32,
}

impl Pages {
    fn new() -> Self {
        Pages { done: Vec::new(), page: String::new(), y: PAGE_H - MARGIN }
    }

    fn text(&mut self, x: f32, font: &str, size: f32, s: &str) {
        let _ = writeln!(self.page, "BT /{font} {size} Tf {x:.2} {:.2} Td {} Tj ET", self.y, literal(s));
    }

    fn right(&mut self, right_edge: f32, font: &str, size: f32, s: &str) {
        self.text(right_edge - width(s, size), font, size, s);
    }

    fn rule(&mut self, weight: f32) {
        let y = self.y + 3.0;
        let _ = writeln!(self.page, "{weight} w {MARGIN} {y:.2} m {:.2} {y:.2} l S", PAGE_W - MARGIN);
    }

    /// Move down `dy`, starting a new page when the bottom margin is reached.
    fn down(&mut self, dy: f32) {
        self.y -= dy;
        if self.y < MARGIN + 20.0 {
            self.done.push(std::mem::take(&mut self.page));
            self.y = PAGE_H - MARGIN;
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.done.push(self.page);
        self.done
    }
}

/// Table columns: `#`, description, then right edges of bytes, quantity,
/// unit (left edge), unit price and amount.
const X_NO: f32 = MARGIN;
const X_DESC: f32 = 60.0;
const R_BYTES: f32 = 338.0;
const R_QTY: f32 = 400.0;
const X_UNIT: f32 = 406.0;
const R_PRICE: f32 = 475.0;
const R_AMOUNT: f32 = PAGE_W - MARGIN;

/// The invoice as a PDF document.
pub fn invoice_pdf(inv: &Invoice) -> Vec<u8> {
    let mut p = Pages::new();
    let status = match inv.status {
        InvoiceStatus::Draft => "DRAFT",
        InvoiceStatus::Issued => "ISSUED",
    };
    p.text(MARGIN, "F2", 16.0, &format!("Invoice {}", inv.invoice_number));
    p.right(R_AMOUNT, "F2", 12.0, status);
    p.down(8.0);
    p.rule(1.5);
    p.down(14.0);
    let last_day = inv.period_end.pred_opt().unwrap_or(inv.period_end);
    let meta = [
        ("Partner", format!("{} ({})", inv.partner_name, inv.partner_id)),
        ("Period", format!("{} ({} to {last_day})", inv.period, inv.period_start)),
        ("Status", format!("{status}, revision {}", inv.revision)),
        ("Issued", inv.issued_at.clone().unwrap_or_else(|| "not yet issued".into())),
        ("Currency", inv.currency.clone()),
        ("Tracking ids", inv.tracking_ids.join(", ")),
        ("Usage", format!("{} bytes", group_thousands(&inv.total_bytes.to_string()))),
    ];
    for (k, v) in meta {
        for (i, row) in wrap(&v, 80).into_iter().enumerate() {
            if i == 0 {
                p.text(MARGIN, "F1", 9.0, k);
            }
            p.text(130.0, "F1", 9.0, &row);
            p.down(13.0);
        }
    }
    p.down(8.0);
    let header = |p: &mut Pages| {
        p.text(X_NO, "F2", 8.0, "#");
        p.text(X_DESC, "F2", 8.0, "Description");
        p.right(R_BYTES, "F2", 8.0, "Bytes");
        p.right(R_QTY, "F2", 8.0, "Quantity");
        p.text(X_UNIT, "F2", 8.0, "Unit");
        p.right(R_PRICE, "F2", 8.0, "Unit price");
        p.right(R_AMOUNT, "F2", 8.0, "Amount");
        p.down(4.0);
        p.rule(0.5);
        p.down(10.0);
    };
    header(&mut p);
    for l in &inv.lines {
        let rows = wrap(&format!("{}{}", l.description, kind_note(l.kind)), DESCRIPTION_CHARS);
        if p.y - 11.0 * (rows.len() as f32) < MARGIN + 20.0 {
            p.down(PAGE_H); // the whole line on the next page
            header(&mut p);
        }
        p.text(X_NO, "F1", 8.0, &l.line_no.to_string());
        p.right(R_BYTES, "F1", 8.0, &group_thousands(&l.bytes.to_string()));
        p.right(R_QTY, "F1", 8.0, &quantity_cell(l));
        p.text(X_UNIT, "F1", 8.0, &l.unit);
        p.right(R_PRICE, "F1", 8.0, &unit_price_cell(l));
        p.right(R_AMOUNT, "F1", 8.0, &group_thousands(&l.amount.to_string()));
        for row in rows {
            p.text(X_DESC, "F1", 8.0, &row);
            p.down(11.0);
        }
        p.down(2.0);
    }
    p.rule(0.5);
    p.down(12.0);
    p.right(R_PRICE, "F1", 9.0, "Usage subtotal");
    p.right(R_AMOUNT, "F1", 9.0, &format!("{} {}", group_thousands(&inv.subtotal.to_string()), inv.currency));
    p.down(16.0);
    p.right(R_PRICE, "F2", 11.0, "Total");
    p.right(R_AMOUNT, "F2", 11.0, &format!("{} {}", group_thousands(&inv.total.to_string()), inv.currency));
    p.down(22.0);
    for row in wrap(&format!("Rounding: {}", inv.rounding_rule), 110) {
        p.text(MARGIN, "F1", 7.5, &row);
        p.down(10.0);
    }
    document(&p.finish())
}

/// A PDF file of `pages` (content streams), with the fonts F1 (Helvetica)
/// and F2 (Helvetica-Bold).
fn document(pages: &[String]) -> Vec<u8> {
    // objects: 1 catalog, 2 pages, 3 F1, 4 F2, then per page: page, content
    let n = pages.len();
    let mut objects: Vec<String> = Vec::with_capacity(4 + 2 * n);
    objects.push("<< /Type /Catalog /Pages 2 0 R >>".into());
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 5 + 2 * i)).collect();
    objects.push(format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" ")));
    for font in ["Helvetica", "Helvetica-Bold"] {
        objects.push(format!("<< /Type /Font /Subtype /Type1 /BaseFont /{font} /Encoding /WinAnsiEncoding >>"));
    }
    for (i, content) in pages.iter().enumerate() {
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_W} {PAGE_H}] \
             /Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents {} 0 R >>",
            6 + 2 * i
        ));
        objects.push(format!("<< /Length {} >>\nstream\n{content}endstream", content.len()));
    }
    let mut out: Vec<u8> = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::with_capacity(objects.len());
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    let mut tail = format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1);
    for off in offsets {
        let _ = writeln!(tail, "{off:010} 00000 n ");
    }
    let _ = write!(tail, "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1);
    out.extend_from_slice(tail.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_and_encoded() {
        assert_eq!(literal("a(b)c\\d"), "(a\\(b\\)c\\\\d)");
        assert_eq!(literal("Zürich € 0–10 ✓"), "(Z\\374rich \\200 0\\22610 ?)");
    }

    #[test]
    fn wrapping_keeps_every_word_in_order() {
        let s = "Late usage for 2026-10: 2.929324024 GB (on top of 6.249328071 GB invoiced)";
        let rows = wrap(s, 20);
        assert!(rows.iter().all(|r| r.chars().count() <= 20), "{rows:?}");
        assert_eq!(rows.join(" "), s);
        assert_eq!(wrap("", 10), vec![String::new()]);
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
    }

    #[test]
    fn the_cross_reference_table_points_at_every_object() {
        let pdf = document(&["BT ET\n".to_string(), "BT ET\n".to_string()]);
        let tail = String::from_utf8(pdf[pdf.len() - 40..].to_vec()).unwrap();
        let xref_at: usize = tail.rsplit("startxref\n").next().unwrap().lines().next().unwrap().parse().unwrap();
        let xref = String::from_utf8(pdf[xref_at..].to_vec()).unwrap();
        assert!(xref.starts_with("xref\n0 9\n"), "{xref}");
        for (i, line) in xref.lines().skip(3).take(8).enumerate() {
            let off: usize = line[..10].parse().unwrap();
            assert!(pdf[off..].starts_with(format!("{} 0 obj", i + 1).as_bytes()), "object {}", i + 1);
        }
    }
}
