//! Human-facing renderings of invoices: CSV lines, a standalone HTML page and
//! a fixed-width terminal table. All output is deterministic.

use std::fmt::Write as _;

use rust_decimal::RoundingStrategy;

use crate::invoice::{Invoice, InvoiceLine, InvoiceStatus, LineKind};
use crate::pricing;
use crate::rates::Unit;
use runtime::csv;

/// CSV header written by [`lines_csv`].
pub const CSV_HEADER: &str = "invoice_number,partner_id,period,currency,line_no,kind,description,bytes,quantity,unit,unit_price,amount";

/// All lines of all invoices as CSV (RFC 4180 quoting, `\n` line ends,
/// header first, invoices and lines in the given order).
pub fn lines_csv(invoices: &[Invoice]) -> String {
    let mut out = String::with_capacity(128 * (1 + invoices.len()));
    out.push_str(CSV_HEADER);
    out.push('\n');
    for inv in invoices {
        for l in &inv.lines {
            let (line_no, bytes, quantity, unit_price, amount) =
                (l.line_no.to_string(), l.bytes.to_string(), l.quantity.to_string(), l.unit_price.to_string(), l.amount.to_string());
            runtime::csv::line(
                &mut out,
                [
                    csv::text(&inv.invoice_number),
                    csv::text(&inv.partner_id),
                    csv::text(&inv.period),
                    csv::text(&inv.currency),
                    csv::number(&line_no).into(),
                    csv::text(l.kind.as_str()),
                    csv::text(&l.description),
                    csv::number(&bytes).into(),
                    csv::number(&quantity).into(),
                    csv::text(&l.unit),
                    csv::number(&unit_price).into(),
                    csv::number(&amount).into(),
                ],
            );
        }
    }
    out
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Groups the integer digits of a decimal string in thousands: `-1234567.50`
/// becomes `-1,234,567.50`.
pub(crate) fn group_thousands(s: &str) -> String {
    let (sign, rest) = s.strip_prefix('-').map_or(("", s), |r| ("-", r));
    let (int, frac) = rest.split_once('.').map_or((rest, None), |(i, f)| (i, Some(f)));
    let mut grouped = String::with_capacity(int.len() + int.len() / 3);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

const STYLE: &str =
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d1d1f;background:#f4f4f6;margin:0;padding:2rem}\
.invoice{max-width:60rem;margin:0 auto;background:#fff;padding:2rem 2.5rem;border-radius:8px;box-shadow:0 1px 4px rgba(0,0,0,.12)}\
header{display:flex;justify-content:space-between;align-items:baseline;border-bottom:2px solid #1d1d1f;margin-bottom:1.5rem}\
h1{font-size:1.5rem;margin:0 0 .5rem}\
.status{font-weight:700;letter-spacing:.1em;padding:.2rem .6rem;border-radius:4px}\
.status-draft{color:#8a5300;background:#fff1d6;border:1px solid #e0a030}\
.status-issued{color:#0b5d1e;background:#ddf5e3;border:1px solid #38a35a}\
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1.5rem;margin:0 0 1.5rem}\
dl.meta dt{color:#666}dl.meta dd{margin:0}\
table{width:100%;border-collapse:collapse;font-size:.95rem}\
th,td{padding:.45rem .6rem;border-bottom:1px solid #e2e2e6;text-align:left;vertical-align:top}\
thead th{background:#f0f0f3;font-weight:600}\
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
tfoot th{text-align:right;font-weight:600}\
tr.total th,tr.total td{font-size:1.1rem;font-weight:700;border-top:2px solid #1d1d1f;border-bottom:none}\
.kind{color:#666;font-size:.85rem}\
.rounding{color:#555;font-size:.85rem;margin-top:1.5rem}";

/// A standalone HTML page for one invoice (inline CSS, no external resources).
/// All invoice text is HTML-escaped.
pub fn invoice_html(inv: &Invoice) -> String {
    let e = html_escape;
    let (status_class, status_label) = status_label(inv.status);
    let cur = e(&inv.currency);
    let last_day = inv.period_end.pred_opt().unwrap_or(inv.period_end);
    let mut h = String::with_capacity(4096);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(h, "<title>Invoice {} ({status_label})</title>", e(&inv.invoice_number));
    let _ = writeln!(h, "<style>{STYLE}</style>\n</head>\n<body>\n<main class=\"invoice\">");
    let _ = writeln!(
        h,
        "<header>\n<h1>Invoice {}</h1>\n<span class=\"status {status_class}\">{status_label}</span>\n</header>",
        e(&inv.invoice_number)
    );
    h.push_str("<dl class=\"meta\">\n");
    let mut meta = |k: &str, v: String| {
        let _ = writeln!(h, "<dt>{k}</dt><dd>{v}</dd>");
    };
    meta("Partner", format!("{} ({})", e(&inv.partner_name), e(&inv.partner_id)));
    meta("Period", format!("{} ({} to {})", e(&inv.period), inv.period_start, last_day));
    meta("Status", format!("{status_label}, revision {}", inv.revision));
    meta("Issued", inv.issued_at.as_deref().map_or_else(|| "not yet issued".to_owned(), e));
    meta("Currency", cur.clone());
    meta("Tracking ids", e(&inv.tracking_ids.join(", ")));
    meta("Usage", format!("{} bytes", group_thousands(&inv.total_bytes.to_string())));
    h.push_str(
        "</dl>\n<table>\n<thead><tr><th>#</th><th>Description</th><th class=\"num\">Bytes</th>\
<th class=\"num\">Quantity</th><th>Unit</th><th class=\"num\">Unit price</th><th class=\"num\">Amount</th></tr></thead>\n<tbody>\n",
    );
    for l in &inv.lines {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            l.line_no,
            e(&l.description),
            kind_note(l.kind),
            group_thousands(&l.bytes.to_string()),
            e(&quantity_cell(l)),
            e(&l.unit),
            e(&unit_price_cell(l)),
            group_thousands(&l.amount.to_string()),
        );
    }
    h.push_str("</tbody>\n<tfoot>\n");
    let _ = writeln!(
        h,
        "<tr><th colspan=\"6\">Usage subtotal</th><td class=\"num\">{} {cur}</td></tr>",
        group_thousands(&inv.subtotal.to_string())
    );
    let _ = writeln!(
        h,
        "<tr class=\"total\"><th colspan=\"6\">Total</th><td class=\"num\">{} {cur}</td></tr>",
        group_thousands(&inv.total.to_string())
    );
    h.push_str("</tfoot>\n</table>\n");
    let _ = writeln!(h, "<p class=\"rounding\">Rounding: {}</p>", e(&inv.rounding_rule));
    h.push_str("</main>\n</body>\n</html>\n");
    h
}

fn status_label(status: InvoiceStatus) -> (&'static str, &'static str) {
    match status {
        InvoiceStatus::Draft => ("status-draft", "DRAFT"),
        InvoiceStatus::Issued => ("status-issued", "ISSUED"),
    }
}

fn kind_note(kind: LineKind) -> &'static str {
    match kind {
        LineKind::Usage => "",
        LineKind::CommitmentTrueUp => " <span class=\"kind\">(commitment)</span>",
        LineKind::Adjustment => " <span class=\"kind\">(adjustment)</span>",
        LineKind::Credit => " <span class=\"kind\">(credit)</span>",
    }
}

pub(crate) fn quantity_cell(l: &InvoiceLine) -> String {
    match l.kind {
        LineKind::CommitmentTrueUp => String::new(),
        _ => l.quantity.to_string(),
    }
}

pub(crate) fn unit_price_cell(l: &InvoiceLine) -> String {
    match l.kind {
        LineKind::Usage => l.unit_price.to_string(),
        _ => String::new(),
    }
}

/// A fixed-width text table, one row per invoice: partner, period, bytes,
/// quantity (rounded to 3 decimals for display), currency, total, status.
/// Numbers are right-aligned; control characters in names are replaced.
pub fn terminal_table(invoices: &[Invoice]) -> String {
    const HEADER: [&str; 7] = ["PARTNER", "PERIOD", "BYTES", "QUANTITY", "CURRENCY", "TOTAL", "STATUS"];
    const RIGHT: [bool; 7] = [false, false, true, true, false, true, false];
    let rows: Vec<[String; 7]> = invoices
        .iter()
        .map(|inv| {
            [
                sanitize(&inv.partner_name),
                sanitize(&inv.period),
                group_thousands(&inv.total_bytes.to_string()),
                display_quantity(inv),
                sanitize(&inv.currency),
                group_thousands(&inv.total.to_string()),
                status_label(inv.status).1.to_owned(),
            ]
        })
        .collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push_row = |cells: &[String; 7]| {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if RIGHT[i] {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push_row(&HEADER.map(str::to_owned));
    push_row(&widths.map(|w| "-".repeat(w)));
    for row in &rows {
        push_row(row);
    }
    out
}

/// Usage quantity in the invoice's unit, e.g. `12,345.600 GB`.
fn display_quantity(inv: &Invoice) -> String {
    let unit = inv.lines.iter().find(|l| l.kind == LineKind::Usage).and_then(|l| Unit::from_symbol(&l.unit));
    match unit {
        Some(unit) => {
            let mut q = pricing::quantity(inv.total_bytes, unit).round_dp_with_strategy(3, RoundingStrategy::MidpointAwayFromZero);
            q.rescale(3);
            format!("{} {unit}", group_thousands(&q.to_string()))
        }
        None => "-".to_owned(),
    }
}

/// Replaces control characters so names cannot move the cursor or recolour the terminal.
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '\u{FFFD}' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoice::build_invoice;
    use crate::rates::parse_rate_card;
    use chrono::{TimeZone, Utc};

    const GB: u64 = 1_000_000_000;

    fn card(name: &str) -> String {
        format!(
            "[[partner]]\nid = \"acme\"\nname = {}\ntracking_ids = [\"a\"]\ncurrency = \"EUR\"\npricing = \"graduated\"\n\
             minimum_commitment = \"100\"\ntiers = [ {{ up_to = \"1000\", unit_price = \"0.050\" }}, {{ unit_price = \"0.040\" }} ]\n\
             [[partner]]\nid = \"kw\"\nname = \"Kuwait, \\\"Ltd\\\"\"\ntracking_ids = [\"k\"]\ncurrency = \"KWD\"\nunit = \"GiB\"\n\
             pricing = \"flat\"\ntiers = [ {{ unit_price = \"0.0125\" }} ]\n",
            toml::Value::String(name.to_owned())
        )
    }

    fn invoices(name: &str) -> Vec<Invoice> {
        let rc = parse_rate_card(&card(name), "rates.toml").expect("card parses");
        let mut a = build_invoice(&rc.partners[0], (2026, 10), 1500 * GB, &[], 1).expect("a");
        a.issue(Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).single().expect("t")).expect("issue");
        let k = build_invoice(&rc.partners[1], (2026, 10), 3 << 29, &[], 2).expect("k");
        vec![a, k]
    }

    #[test]
    fn csv_lines_and_quoting() {
        let csv = lines_csv(&invoices("Acme TV"));
        let lines: Vec<&str> = csv.split('\n').collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(
            lines[1],
            "INV-202610-acme-r1,acme,2026-10,EUR,1,usage,Egress 0–1000 GB @ 0.050 EUR/GB,1000000000000,1000,GB,0.050,50.00"
        );
        assert_eq!(lines[3], "INV-202610-acme-r1,acme,2026-10,EUR,3,commitment_true_up,Minimum commitment true-up,0,0,GB,0,30.00");
        assert_eq!(lines[4], "INV-202610-kw-r2,kw,2026-10,KWD,1,usage,Egress @ 0.0125 KWD/GiB,1610612736,1.5,GiB,0.0125,0.019");
        assert_eq!(lines.len(), 6, "4 lines + header + trailing empty");
        assert!(csv.ends_with('\n') && !csv.contains('\r'));
    }

    #[test]
    fn csv_quotes_hostile_descriptions() {
        let mut invs = invoices("Acme");
        invs[0].lines[0].description = "Late, \"quoted\"\nusage".into();
        let csv = lines_csv(&invs);
        assert!(csv.contains(",1,usage,\"Late, \"\"quoted\"\"\nusage\",1000000000000,"));
        invs[0].lines[0].description = "=cmd|' /C calc'!A0".into();
        let csv = lines_csv(&invs);
        assert!(csv.contains(",1,usage,'=cmd|' /C calc'!A0,1000000000000,"), "formula neutralised: {csv}");
    }

    #[test]
    fn html_escapes_hostile_partner_name() {
        let hostile = "<script>alert('x')</script> & \"Sons\"";
        let invs = invoices(hostile);
        let html = invoice_html(&invs[0]);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;Sons&quot;"));
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("ISSUED"));
        assert!(html.contains("revision 1"));
        assert!(html.contains("2026-10 (2026-10-01 to 2026-10-31)"));
        assert!(html.contains("Each line amount is rounded once"));
        assert!(html.contains("<td class=\"num\">1,000,000,000,000</td>"));
        assert!(html.contains("70.00 EUR"));
        let draft = invoice_html(&invs[1]);
        assert!(draft.contains("DRAFT") && draft.contains("Kuwait, &quot;Ltd&quot;"));
        assert_eq!(html_escape("a&b<c>d\"e'f"), "a&amp;b&lt;c&gt;d&quot;e&#39;f");
    }

    #[test]
    fn terminal_table_is_aligned() {
        let table = terminal_table(&invoices("Acme \u{1b}[31mTV"));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("PARTNER"));
        assert!(!table.contains('\u{1b}'));
        assert!(lines[2].contains("1,500,000,000,000") && lines[2].contains("1,500.000 GB"));
        assert!(lines[2].contains("100.00") && lines[2].ends_with("ISSUED"));
        assert!(lines[3].contains("1.500 GiB") && lines[3].contains("0.019") && lines[3].ends_with("DRAFT"));
        // Right-aligned numeric columns end at the same character position.
        let end_of = |l: &str, needle: &str| l.find(needle).map(|i| l[..i + needle.len()].chars().count());
        assert_eq!(end_of(lines[2], "1,500,000,000,000"), end_of(lines[3], "1,610,612,736"));
        assert_eq!(terminal_table(&[]).lines().count(), 2);
    }

    #[test]
    fn renderings_are_deterministic() {
        let a = invoices("Acme TV");
        let b = invoices("Acme TV");
        assert_eq!(lines_csv(&a), lines_csv(&b));
        assert_eq!(invoice_html(&a[0]), invoice_html(&b[0]));
        assert_eq!(terminal_table(&a), terminal_table(&b));
        assert_eq!(a[0].to_json(), b[0].to_json());
    }

    #[test]
    fn thousands_grouping() {
        assert_eq!(group_thousands("0"), "0");
        assert_eq!(group_thousands("999"), "999");
        assert_eq!(group_thousands("1000"), "1,000");
        assert_eq!(group_thousands("-1234567.50"), "-1,234,567.50");
    }
}
