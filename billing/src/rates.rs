//! Rate cards: the TOML file finance edits, parsed and strictly validated.
//!
//! A rate card lists partners, the tracking ids whose usage belongs to them and
//! how that usage is priced. Every validation error names the file and the
//! 1-based line it refers to, e.g.
//! `rates.toml:14: partner "acme": tier 2: up_to (1000) must be greater than the previous tier's up_to (1000)`.
//!
//! Price changes (`[[partner.price_change]]`) apply *cumulatively* in date
//! order: each one overrides only the fields it names, on top of the base
//! pricing with all earlier changes applied. Each resulting price list is
//! resolved and validated at load time, so [`Partner::pricing_at`] cannot fail.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Largest accepted `unit_price` (per GB or GiB) in any currency.
///
/// A sanity cap that also guarantees every amount computed from a `u64` byte
/// count fits in a [`Decimal`].
pub const MAX_UNIT_PRICE: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

/// Longest accepted tracking id, in characters.
pub const MAX_TRACKING_ID_LEN: usize = schemas::validate::MAX_TRACKING_ID_CHARS;

/// ISO 4217 codes known to the validator with their minor-unit exponents.
const ISO_4217: &[(&str, u32)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("EGP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("GNF", 0),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KMF", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("LYD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NGN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PEN", 2),
    ("PHP", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("RON", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("VND", 0),
    ("VUV", 0),
    ("XAF", 0),
    ("XOF", 0),
    ("XPF", 0),
    ("ZAR", 2),
];

/// A currency with its ISO 4217 minor-unit exponent (EUR: 2, JPY: 0, KWD: 3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Currency {
    /// ISO 4217 alphabetic code, e.g. `"EUR"`.
    pub code: String,
    /// Number of decimals of the minor unit, e.g. 2 for cents.
    pub minor_units: u32,
}

impl Currency {
    /// Looks a code up in the built-in ISO 4217 table (case-sensitive).
    pub fn from_code(code: &str) -> Option<Currency> {
        ISO_4217.iter().find(|(c, _)| *c == code).map(|&(c, minor_units)| Currency { code: c.to_owned(), minor_units })
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code)
    }
}

/// The unit usage is priced in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Unit {
    /// `"GB"`: 10^9 bytes (the default).
    #[default]
    #[serde(rename = "GB")]
    Gigabyte,
    /// `"GiB"`: 2^30 bytes.
    #[serde(rename = "GiB")]
    Gibibyte,
}

impl Unit {
    /// Number of bytes in one unit.
    pub const fn bytes_per_unit(self) -> u64 {
        match self {
            Unit::Gigabyte => 1_000_000_000,
            Unit::Gibibyte => 1 << 30,
        }
    }

    /// The symbol used in rate cards and invoices: `"GB"` or `"GiB"`.
    pub const fn symbol(self) -> &'static str {
        match self {
            Unit::Gigabyte => "GB",
            Unit::Gibibyte => "GiB",
        }
    }

    /// Parses a symbol as written by [`Unit::symbol`].
    pub fn from_symbol(symbol: &str) -> Option<Unit> {
        match symbol {
            "GB" => Some(Unit::Gigabyte),
            "GiB" => Some(Unit::Gibibyte),
            _ => None,
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// How tiers turn usage into money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PricingModel {
    /// One price for all usage (exactly one tier).
    Flat,
    /// Each tier prices the usage that falls within it.
    Graduated,
    /// The tier the total falls in prices all usage.
    Volume,
}

impl PricingModel {
    /// The name used in rate cards: `"flat"`, `"graduated"` or `"volume"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PricingModel::Flat => "flat",
            PricingModel::Graduated => "graduated",
            PricingModel::Volume => "volume",
        }
    }
}

impl fmt::Display for PricingModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pricing tier. Boundaries are in units of the price list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Upper boundary (inclusive) in units; `None` on the last tier only.
    pub up_to: Option<Decimal>,
    /// Price per unit, in the currency's major unit.
    pub unit_price: Decimal,
}

/// The fully resolved pricing in force for a period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceList {
    /// Invoice currency.
    pub currency: Currency,
    /// Unit quantities and prices are expressed in.
    pub unit: Unit,
    /// Pricing model.
    pub model: PricingModel,
    /// Tiers, ascending; the last one is unbounded.
    pub tiers: Vec<Tier>,
    /// Minimum charge per month, in the currency; representable in its minor units.
    pub minimum_commitment: Option<Decimal>,
}

/// A dated price change, already resolved to a complete price list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceChange {
    /// First day (UTC) on which billing periods use `price_list`.
    pub effective_from: NaiveDate,
    /// The complete price list in force from `effective_from` on.
    pub price_list: PriceList,
}

/// A partner of the rate card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partner {
    /// Stable id (`[a-z0-9][a-z0-9-]*`), used in invoice numbers.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Tracking ids whose usage is billed to this partner, in file order.
    pub tracking_ids: Vec<String>,
    /// Pricing before the first price change.
    pub base: PriceList,
    /// Price changes, strictly ascending by `effective_from`.
    pub price_changes: Vec<PriceChange>,
}

impl Partner {
    /// The price list for a billing period starting on `period_start`.
    ///
    /// The pricing in force at the *start* of the period applies to the whole
    /// period: the last price change with `effective_from <= period_start`
    /// (which already includes all earlier changes), or the base pricing.
    pub fn pricing_at(&self, period_start: NaiveDate) -> PriceList {
        self.price_changes
            .iter()
            .rev()
            .find(|c| c.effective_from <= period_start)
            .map_or_else(|| self.base.clone(), |c| c.price_list.clone())
    }
}

/// A validated rate card.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateCard {
    /// Partners in file order.
    pub partners: Vec<Partner>,
}

impl RateCard {
    /// The partner a tracking id belongs to, if any (exact, case-sensitive match).
    pub fn partner_for_tracking_id(&self, tracking_id: &str) -> Option<&Partner> {
        self.partners.iter().find(|p| p.tracking_ids.iter().any(|t| t == tracking_id))
    }

    /// The partner with the given id, if any.
    pub fn partner(&self, id: &str) -> Option<&Partner> {
        self.partners.iter().find(|p| p.id == id)
    }
}

/// Everything that can go wrong loading a rate card.
#[derive(Debug, thiserror::Error)]
pub enum RateCardError {
    /// The file could not be read.
    #[error("{path}: cannot read rate card: {source}")]
    Io {
        /// Path as given.
        path: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the rate card's shape
    /// (unknown or missing fields, wrong types, floats instead of strings...).
    #[error("{file}:{line}: {message}")]
    Syntax {
        /// File name used in messages.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file is well-formed but breaks a validation rule.
    #[error("{file}:{line}: {message}")]
    Invalid {
        /// File name used in messages.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong, starting with the partner concerned.
        message: String,
    },
}

impl RateCardError {
    /// The 1-based line the error refers to, if it refers to one.
    pub fn line(&self) -> Option<usize> {
        match self {
            RateCardError::Io { .. } => None,
            RateCardError::Syntax { line, .. } | RateCardError::Invalid { line, .. } => Some(*line),
        }
    }
}

/// Reads and validates a rate card file. Messages use the path as file name.
pub fn load_rate_card(path: &Path) -> Result<RateCard, RateCardError> {
    let text = std::fs::read_to_string(path).map_err(|source| RateCardError::Io { path: path.display().to_string(), source })?;
    parse_rate_card(&text, &path.display().to_string())
}

/// Parses and validates rate card text; `file_name` is only used in messages.
pub fn parse_rate_card(text: &str, file_name: &str) -> Result<RateCard, RateCardError> {
    let src = Source { text, file: file_name };
    let raw: RawCard = toml::from_str(text).map_err(|e| RateCardError::Syntax {
        file: file_name.to_owned(),
        line: e.span().map_or(1, |s| src.line(&s)),
        message: e.message().trim_end().to_owned(),
    })?;
    validate(&src, raw)
}

// ---------------------------------------------------------------------------
// Raw (unvalidated) representation
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCard {
    #[serde(default)]
    partner: Vec<RawPartner>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartner {
    id: Spanned<String>,
    name: Spanned<String>,
    tracking_ids: Spanned<Vec<Spanned<String>>>,
    currency: Spanned<String>,
    #[serde(default)]
    unit: Option<Spanned<Unit>>,
    pricing: Spanned<PricingModel>,
    #[serde(default)]
    minimum_commitment: Option<Spanned<TomlDecimal>>,
    tiers: Spanned<Vec<Spanned<RawTier>>>,
    #[serde(default)]
    price_change: Vec<RawPriceChange>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    #[serde(default)]
    up_to: Option<Spanned<TomlDecimal>>,
    unit_price: Spanned<TomlDecimal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPriceChange {
    effective_from: Spanned<TomlDate>,
    #[serde(default)]
    pricing: Option<Spanned<PricingModel>>,
    #[serde(default)]
    tiers: Option<Spanned<Vec<Spanned<RawTier>>>>,
    #[serde(default)]
    minimum_commitment: Option<Spanned<TomlDecimal>>,
    #[serde(default)]
    unit: Option<Spanned<Unit>>,
    #[serde(default)]
    currency: Option<Spanned<String>>,
}

const FLOAT_HINT: &str = "write decimals as strings, e.g. \"0.05\"";

/// A decimal written as a TOML string (or integer); TOML floats are rejected.
struct TomlDecimal(Decimal);

impl<'de> Deserialize<'de> for TomlDecimal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TomlDecimal;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a decimal written as a string, e.g. \"0.05\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TomlDecimal, E> {
                parse_decimal(v).map(TomlDecimal).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TomlDecimal, E> {
                Ok(TomlDecimal(Decimal::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TomlDecimal, E> {
                Ok(TomlDecimal(Decimal::from(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<TomlDecimal, E> {
                Err(E::custom(format!("{FLOAT_HINT}: found the TOML float {v}, and floats are inexact")))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Parses `-?[0-9]+(\.[0-9]+)?` exactly (no exponent, separators or rounding).
fn parse_decimal(s: &str) -> Result<Decimal, String> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || !frac.is_none_or(all_digits) {
        return Err(format!("invalid decimal {s:?}: expected digits with an optional fraction, e.g. \"0.05\""));
    }
    Decimal::from_str_exact(s).map_err(|e| format!("invalid decimal {s:?}: {e}"))
}

/// A date written as `"YYYY-MM-DD"` (a TOML local date is accepted too).
struct TomlDate(NaiveDate);

impl<'de> Deserialize<'de> for TomlDate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TomlDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a date written as \"YYYY-MM-DD\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TomlDate, E> {
                parse_date(v).map(TomlDate).map_err(E::custom)
            }
            // toml hands native date-times over as a one-entry map.
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TomlDate, A::Error> {
                match map.next_entry::<String, String>()? {
                    Some((_, v)) => parse_date(&v).map(TomlDate).map_err(de::Error::custom),
                    None => Err(de::Error::custom("expected a date \"YYYY-MM-DD\"")),
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 10 && b.iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() });
    if !shape_ok {
        return Err(format!("invalid date {s:?}: expected \"YYYY-MM-DD\""));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| format!("invalid date {s:?}: {e}"))
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

struct Source<'a> {
    text: &'a str,
    file: &'a str,
}

impl Source<'_> {
    /// 1-based line of a byte span's start.
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    fn line_of<T>(&self, s: &Spanned<T>) -> usize {
        self.line(&s.span())
    }

    fn invalid(&self, line: usize, message: String) -> RateCardError {
        RateCardError::Invalid { file: self.file.to_owned(), line: line.max(1), message }
    }
}

/// A price list under construction, each field with the line it came from
/// (0 when defaulted), so errors point at the field that caused them.
#[derive(Clone)]
struct Draft<'a> {
    model: (PricingModel, usize),
    tiers: (&'a [Spanned<RawTier>], usize),
    unit: (Unit, usize),
    currency: (&'a str, usize),
    minimum_commitment: Option<(Decimal, usize)>,
}

fn validate(src: &Source<'_>, raw: RawCard) -> Result<RateCard, RateCardError> {
    let mut partner_lines: HashMap<String, usize> = HashMap::new();
    let mut tracking_owner: HashMap<String, (String, usize)> = HashMap::new();
    let mut partners = Vec::with_capacity(raw.partner.len());

    for rp in &raw.partner {
        let id = rp.id.get_ref();
        let id_line = src.line_of(&rp.id);
        if !is_valid_partner_id(id) {
            return Err(
                src.invalid(id_line, format!("partner {id:?}: id must match [a-z0-9][a-z0-9-]* (lowercase letters, digits, dashes)"))
            );
        }
        if let Some(first) = partner_lines.insert(id.clone(), id_line) {
            return Err(src.invalid(id_line, format!("partner {id:?}: duplicate partner id (first defined at line {first})")));
        }
        let ctx = format!("partner {id:?}");
        if rp.name.get_ref().trim().is_empty() {
            return Err(src.invalid(src.line_of(&rp.name), format!("{ctx}: name must not be empty")));
        }

        if rp.tracking_ids.get_ref().is_empty() {
            return Err(src.invalid(src.line_of(&rp.tracking_ids), format!("{ctx}: needs at least one tracking id")));
        }
        let mut tracking_ids = Vec::with_capacity(rp.tracking_ids.get_ref().len());
        for t in rp.tracking_ids.get_ref() {
            let tid = t.get_ref();
            let line = src.line_of(t);
            if tid.is_empty() {
                return Err(src.invalid(line, format!("{ctx}: tracking ids must not be empty")));
            }
            let len = tid.chars().count();
            if len > MAX_TRACKING_ID_LEN {
                return Err(
                    src.invalid(line, format!("{ctx}: tracking id {tid:?} is {len} characters long (at most {MAX_TRACKING_ID_LEN})"))
                );
            }
            if let Some((owner, owner_line)) = tracking_owner.get(tid) {
                let msg = if owner == id {
                    format!("{ctx}: tracking id {tid:?} is listed twice")
                } else {
                    format!("{ctx}: tracking id {tid:?} already belongs to partner {owner:?} (line {owner_line})")
                };
                return Err(src.invalid(line, msg));
            }
            tracking_owner.insert(tid.clone(), (id.clone(), line));
            tracking_ids.push(tid.clone());
        }

        let mut draft = Draft {
            model: (*rp.pricing.get_ref(), src.line_of(&rp.pricing)),
            tiers: (rp.tiers.get_ref().as_slice(), src.line_of(&rp.tiers)),
            unit: rp.unit.as_ref().map_or((Unit::default(), 0), |u| (*u.get_ref(), src.line_of(u))),
            currency: (rp.currency.get_ref().as_str(), src.line_of(&rp.currency)),
            minimum_commitment: rp.minimum_commitment.as_ref().map(|m| (m.get_ref().0, src.line_of(m))),
        };
        let base = validate_price_list(src, &ctx, &draft)?;

        let mut price_changes: Vec<PriceChange> = Vec::with_capacity(rp.price_change.len());
        for (i, ch) in rp.price_change.iter().enumerate() {
            let date = ch.effective_from.get_ref().0;
            let date_line = src.line_of(&ch.effective_from);
            let ctx = format!("{ctx}: price_change {} (effective_from {date})", i + 1);
            if let Some(prev) = price_changes.last().filter(|p| date <= p.effective_from) {
                return Err(src.invalid(
                    date_line,
                    format!(
                        "{ctx}: effective_from ({date}) must be later than the previous price_change's effective_from ({})",
                        prev.effective_from
                    ),
                ));
            }
            if let Some(p) = &ch.pricing {
                draft.model = (*p.get_ref(), src.line_of(p));
            }
            if let Some(t) = &ch.tiers {
                draft.tiers = (t.get_ref().as_slice(), src.line_of(t));
            }
            if let Some(u) = &ch.unit {
                draft.unit = (*u.get_ref(), src.line_of(u));
            }
            if let Some(c) = &ch.currency {
                draft.currency = (c.get_ref().as_str(), src.line_of(c));
            }
            if let Some(m) = &ch.minimum_commitment {
                draft.minimum_commitment = Some((m.get_ref().0, src.line_of(m)));
            }
            let price_list = validate_price_list(src, &ctx, &draft)?;
            price_changes.push(PriceChange { effective_from: date, price_list });
        }

        partners.push(Partner { id: id.clone(), name: rp.name.get_ref().clone(), tracking_ids, base, price_changes });
    }
    Ok(RateCard { partners })
}

fn is_valid_partner_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9')) && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

fn validate_price_list(src: &Source<'_>, ctx: &str, d: &Draft<'_>) -> Result<PriceList, RateCardError> {
    let (code, currency_line) = d.currency;
    let currency = Currency::from_code(code).ok_or_else(|| {
        src.invalid(currency_line, format!("{ctx}: unknown currency {code:?} (expected an ISO 4217 code such as \"EUR\")"))
    })?;
    let (unit, unit_line) = d.unit;
    let (model, model_line) = d.model;
    let (raw_tiers, tiers_line) = d.tiers;

    if raw_tiers.is_empty() {
        return Err(src.invalid(tiers_line, format!("{ctx}: needs at least one tier")));
    }
    if model == PricingModel::Flat && raw_tiers.len() != 1 {
        return Err(
            src.invalid(tiers_line.max(model_line), format!("{ctx}: pricing \"flat\" needs exactly one tier, found {}", raw_tiers.len()))
        );
    }

    let mut tiers = Vec::with_capacity(raw_tiers.len());
    let mut previous: Option<Decimal> = None;
    for (i, rt) in raw_tiers.iter().enumerate() {
        let n = i + 1;
        let tier = rt.get_ref();
        let is_last = n == raw_tiers.len();
        let price = tier.unit_price.get_ref().0;
        let price_line = src.line_of(&tier.unit_price);
        if price.is_sign_negative() && !price.is_zero() {
            return Err(src.invalid(price_line, format!("{ctx}: tier {n}: unit_price ({price}) must not be negative")));
        }
        if price > MAX_UNIT_PRICE {
            return Err(src.invalid(price_line, format!("{ctx}: tier {n}: unit_price ({price}) must be at most {MAX_UNIT_PRICE}")));
        }
        let up_to = match (&tier.up_to, is_last) {
            (None, true) => None,
            (None, false) => {
                return Err(src.invalid(src.line_of(rt), format!("{ctx}: tier {n}: up_to is required on every tier but the last")));
            }
            (Some(u), true) => {
                return Err(src.invalid(
                    src.line_of(u),
                    format!("{ctx}: tier {n}: the last tier must not have up_to ({}); it covers all remaining usage", u.get_ref().0),
                ));
            }
            (Some(u), false) => {
                let value = u.get_ref().0;
                let line = src.line_of(u);
                if value <= Decimal::ZERO {
                    return Err(src.invalid(line, format!("{ctx}: tier {n}: up_to ({value}) must be greater than 0")));
                }
                if let Some(prev) = previous.filter(|&p| value <= p) {
                    return Err(src.invalid(
                        line,
                        format!("{ctx}: tier {n}: up_to ({value}) must be greater than the previous tier's up_to ({prev})"),
                    ));
                }
                if !tier_boundary_bytes(value, unit).1 {
                    return Err(src.invalid(
                        line.max(unit_line),
                        format!(
                            "{ctx}: tier {n}: up_to ({value}) {unit} is not a whole number of bytes ({} bytes per {unit})",
                            unit.bytes_per_unit()
                        ),
                    ));
                }
                previous = Some(value);
                Some(value)
            }
        };
        tiers.push(Tier { up_to, unit_price: price });
    }

    let minimum_commitment = match d.minimum_commitment {
        None => None,
        Some((m, line)) => {
            if m.is_sign_negative() && !m.is_zero() {
                return Err(src.invalid(line, format!("{ctx}: minimum_commitment ({m}) must not be negative")));
            }
            if m.normalize().scale() > currency.minor_units {
                return Err(src.invalid(
                    line.max(currency_line),
                    format!("{ctx}: minimum_commitment ({m}) has more decimals than {} allows ({})", currency.code, currency.minor_units),
                ));
            }
            Some(m)
        }
    };

    Ok(PriceList { currency, unit, model, tiers, minimum_commitment })
}

/// Byte boundary of a tier's `up_to`: `(bytes, exact)`.
///
/// `bytes` is `floor(up_to * bytes_per_unit)`, 0 for negative values and
/// saturated to `u64::MAX` (a boundary beyond `u64::MAX` can never be
/// crossed, so saturation does not change any price). `exact` is false when
/// the boundary is not a whole number of bytes (rejected by validation).
pub fn tier_boundary_bytes(up_to: Decimal, unit: Unit) -> (u64, bool) {
    if up_to.is_sign_negative() && !up_to.is_zero() {
        return (0, false);
    }
    // up_to = m / 10^s with m < 2^96: m * bpu < 2^126 and 10^s <= 10^28 fit in u128.
    let m = up_to.mantissa().unsigned_abs();
    let den = 10u128.pow(up_to.scale());
    let num = m * u128::from(unit.bytes_per_unit());
    let bytes = u64::try_from(num / den).unwrap_or(u64::MAX);
    (bytes, num.is_multiple_of(den))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    /// The example card from the specification.
    pub(crate) const EXAMPLE: &str = r#"
[[partner]]
id = "acme"                          # stable id, [a-z0-9-]+, used in invoice numbers
name = "Acme TV"
tracking_ids = ["acme-web", "acme-app"]   # a tracking id belongs to at most one partner (across all partners)
currency = "EUR"                     # ISO 4217; minor units from the standard
unit = "GB"                          # "GB" = 10^9 bytes (default), "GiB" = 2^30 bytes
pricing = "graduated"                # "flat" | "graduated" | "volume"
minimum_commitment = "250.00"        # optional, per month, in currency
tiers = [
  { up_to = "1000",  unit_price = "0.050" },
  { up_to = "10000", unit_price = "0.040" },
  { unit_price = "0.030" },          # last tier has no up_to
]
# price changes: optional, each with effective_from = "YYYY-MM-DD" (UTC)
[[partner.price_change]]
effective_from = "2026-11-01"
pricing = "volume"
tiers = [ { unit_price = "0.020" } ]
"#;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid test date")
    }

    fn err(text: &str) -> RateCardError {
        match parse_rate_card(text, "rates.toml") {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    /// Asserts the error is at `line` and its message contains `needle`.
    fn assert_err(text: &str, line: usize, needle: &str) {
        let e = err(text);
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("rates.toml:{line}: ")), "wrong line in {msg:?} (expected {line})");
        assert!(msg.contains(needle), "{msg:?} does not contain {needle:?}");
    }

    /// A one-partner card; `extra` lines go after `currency`, tiers last.
    fn card(extra: &str, tiers: &str) -> String {
        let pricing = if extra.contains("pricing") { "" } else { "pricing = \"graduated\"\n" };
        format!("[[partner]]\nid = \"p\"\nname = \"P\"\ntracking_ids = [\"t\"]\ncurrency = \"EUR\"\n{extra}tiers = [\n{tiers}]\n{pricing}")
    }

    #[test]
    fn example_card_parses() {
        let rc = parse_rate_card(EXAMPLE, "rates.toml").expect("example parses");
        assert_eq!(rc.partners.len(), 1);
        let p = &rc.partners[0];
        assert_eq!(p.id, "acme");
        assert_eq!(p.name, "Acme TV");
        assert_eq!(p.tracking_ids, vec!["acme-web", "acme-app"]);
        assert_eq!(p.base.currency, Currency { code: "EUR".into(), minor_units: 2 });
        assert_eq!(p.base.unit, Unit::Gigabyte);
        assert_eq!(p.base.model, PricingModel::Graduated);
        assert_eq!(p.base.minimum_commitment, Some(dec!(250.00)));
        assert_eq!(p.base.tiers.len(), 3);
        assert_eq!(p.base.tiers[0].up_to, Some(dec!(1000)));
        assert_eq!(p.base.tiers[0].unit_price.to_string(), "0.050");
        assert_eq!(p.base.tiers[2].up_to, None);
        assert_eq!(p.price_changes.len(), 1);
        let changed = &p.price_changes[0].price_list;
        assert_eq!(changed.model, PricingModel::Volume);
        assert_eq!(changed.tiers, vec![Tier { up_to: None, unit_price: dec!(0.020) }]);
        // Not overridden: inherited from the base.
        assert_eq!(changed.minimum_commitment, Some(dec!(250.00)));
        assert_eq!(changed.currency.code, "EUR");
        assert_eq!(rc.partner_for_tracking_id("acme-app").map(|p| p.id.as_str()), Some("acme"));
        assert!(rc.partner_for_tracking_id("ACME-APP").is_none());
        assert!(rc.partner("acme").is_some());
    }

    #[test]
    fn pricing_at_before_at_and_after_effective_from() {
        let rc = parse_rate_card(EXAMPLE, "rates.toml").expect("example parses");
        let p = &rc.partners[0];
        assert_eq!(p.pricing_at(date(2026, 10, 1)).model, PricingModel::Graduated);
        assert_eq!(p.pricing_at(date(2026, 10, 31)).model, PricingModel::Graduated);
        assert_eq!(p.pricing_at(date(2026, 11, 1)).model, PricingModel::Volume);
        assert_eq!(p.pricing_at(date(2027, 5, 1)).model, PricingModel::Volume);
    }

    #[test]
    fn price_changes_apply_cumulatively() {
        let text = format!(
            "{}[[partner.price_change]]\neffective_from = \"2026-11-01\"\ncurrency = \"USD\"\n\
             [[partner.price_change]]\neffective_from = 2027-01-01\nminimum_commitment = 5\n",
            card("unit = \"GiB\"\n", "{ unit_price = \"1\" }\n")
        );
        let rc = parse_rate_card(&text, "rates.toml").expect("parses");
        let p = &rc.partners[0];
        let dec_list = p.pricing_at(date(2026, 12, 1));
        assert_eq!(dec_list.currency.code, "USD");
        assert_eq!(dec_list.minimum_commitment, None);
        let jan = p.pricing_at(date(2027, 1, 1));
        assert_eq!(jan.currency.code, "USD");
        assert_eq!(jan.unit, Unit::Gibibyte);
        assert_eq!(jan.minimum_commitment, Some(dec!(5)));
        assert_eq!(p.pricing_at(date(2026, 10, 1)).currency.code, "EUR");
    }

    #[test]
    fn integers_accepted_floats_rejected() {
        let ok = card("", "{ up_to = 1000, unit_price = 1 },\n{ unit_price = \"0.5\" },\n");
        assert!(parse_rate_card(&ok, "rates.toml").is_ok());
        let bad = card("", "{ up_to = 1000, unit_price = 0.05 },\n{ unit_price = \"0.5\" },\n");
        assert_err(&bad, 7, "write decimals as strings, e.g. \"0.05\"");
    }

    #[test]
    fn malformed_decimal_strings_rejected() {
        for s in ["1e3", "1_000", "", ".5", "5.", "+1", " 1", "abc"] {
            let text = card("", &format!("{{ unit_price = {s:?} }}\n"));
            assert_err(&text, 7, "invalid decimal");
        }
    }

    #[test]
    fn unknown_and_missing_fields_rejected() {
        assert_err(&card("colour = \"red\"\n", "{ unit_price = \"1\" }\n"), 6, "unknown field `colour`");
        assert_err(&card("", "{ unit_price = \"1\", discount = \"2\" }\n"), 7, "unknown field `discount`");
        assert_err("[[partner]]\nid = \"p\"\n", 1, "missing field");
        assert_err("currency = \"EUR\"\n", 1, "unknown field `currency`");
        assert_err(&card("pricing = \"tiered\"\n", "{ unit_price = \"1\" }\n"), 6, "unknown variant `tiered`");
        assert_err(&card("unit = \"TB\"\n", "{ unit_price = \"1\" }\n"), 6, "unknown variant `TB`");
    }

    #[test]
    fn syntax_error_has_line() {
        assert_err("[[partner]]\nid = \"p\nname = 1\n", 2, "");
    }

    fn partner(id: &str, name: &str, tids: &str) -> String {
        format!(
            "[[partner]]\nid = {id:?}\nname = {name:?}\ntracking_ids = {tids}\ncurrency = \"EUR\"\npricing = \"flat\"\ntiers = [{{ unit_price = \"1\" }}]\n"
        )
    }

    #[test]
    fn partner_id_rules() {
        for bad in ["Acme", "-acme", "ac me", "", "acme_tv", "akmé"] {
            assert_err(&partner(bad, "A", "[\"t\"]"), 2, "id must match");
        }
        assert!(parse_rate_card(&partner("0-a-9", "A", "[\"t\"]"), "x").is_ok());
        let dup = format!("{}{}", partner("a", "A", "[\"t1\"]"), partner("a", "B", "[\"t2\"]"));
        assert_err(&dup, 9, "duplicate partner id (first defined at line 2)");
    }

    #[test]
    fn name_must_not_be_empty() {
        assert_err(&partner("a", "  ", "[\"t\"]"), 3, "name must not be empty");
    }

    #[test]
    fn tracking_id_rules() {
        assert_err(&partner("a", "A", "[]"), 4, "at least one tracking id");
        assert_err(&partner("a", "A", "[\"\"]"), 4, "must not be empty");
        let long = "x".repeat(129);
        assert_err(&partner("a", "A", &format!("[{long:?}]")), 4, "129 characters long");
        assert!(parse_rate_card(&partner("a", "A", &format!("[{:?}]", "x".repeat(128))), "x").is_ok());
        assert_err(&partner("a", "A", "[\"t\", \"t\"]"), 4, "listed twice");
        let across = format!("{}{}", partner("a", "A", "[\"t1\"]"), partner("b", "B", "[\n\"t2\",\n\"t1\"]"));
        assert_err(&across, 13, "tracking id \"t1\" already belongs to partner \"a\" (line 4)");
    }

    #[test]
    fn currency_rules_and_exponents() {
        let text = card("", "{ unit_price = \"1\" }\n").replace("EUR", "EUX");
        assert_err(&text, 5, "unknown currency \"EUX\"");
        let lower = card("", "{ unit_price = \"1\" }\n").replace("EUR", "eur");
        assert_err(&lower, 5, "unknown currency");
        let expect = [
            ("EUR", 2),
            ("USD", 2),
            ("GBP", 2),
            ("CHF", 2),
            ("JPY", 0),
            ("KRW", 0),
            ("KWD", 3),
            ("BHD", 3),
            ("JOD", 3),
            ("OMR", 3),
            ("TND", 3),
            ("SEK", 2),
            ("NOK", 2),
            ("DKK", 2),
            ("PLN", 2),
            ("CZK", 2),
            ("HUF", 2),
            ("CAD", 2),
            ("AUD", 2),
            ("NZD", 2),
            ("BRL", 2),
            ("MXN", 2),
            ("INR", 2),
            ("CNY", 2),
            ("HKD", 2),
            ("SGD", 2),
            ("ZAR", 2),
            ("AED", 2),
            ("SAR", 2),
            ("ISK", 0),
            ("CLP", 0),
            ("VND", 0),
        ];
        for (code, minor) in expect {
            assert_eq!(Currency::from_code(code).map(|c| c.minor_units), Some(minor), "{code}");
        }
        assert!(ISO_4217.windows(2).all(|w| w[0].0 < w[1].0), "table sorted, no duplicates");
    }

    #[test]
    fn tier_rules() {
        assert_err(&card("", ""), 6, "needs at least one tier");
        assert_err(
            &card("pricing = \"flat\"\n", "{ up_to = \"1\", unit_price = \"1\" },\n{ unit_price = \"1\" },\n"),
            7,
            "pricing \"flat\" needs exactly one tier, found 2",
        );
        assert_err(
            &card("", "{ up_to = \"1000\", unit_price = \"1\" },\n{ up_to = \"1000\", unit_price = \"1\" },\n{ unit_price = \"1\" },\n"),
            8,
            "partner \"p\": tier 2: up_to (1000) must be greater than the previous tier's up_to (1000)",
        );
        assert_err(
            &card("", "{ up_to = \"0\", unit_price = \"1\" },\n{ unit_price = \"1\" },\n"),
            7,
            "tier 1: up_to (0) must be greater than 0",
        );
        assert_err(&card("", "{ up_to = \"-5\", unit_price = \"1\" },\n{ unit_price = \"1\" },\n"), 7, "must be greater than 0");
        assert_err(
            &card("", "{ up_to = \"10\", unit_price = \"1\" },\n{ unit_price = \"1\" },\n{ unit_price = \"1\" },\n"),
            8,
            "tier 2: up_to is required",
        );
        assert_err(
            &card("", "{ up_to = \"10\", unit_price = \"1\" },\n{ up_to = \"20\", unit_price = \"1\" },\n"),
            8,
            "tier 2: the last tier must not have up_to",
        );
        assert_err(&card("", "{ unit_price = \"-0.01\" }\n"), 7, "unit_price (-0.01) must not be negative");
        assert_err(&card("", "{ unit_price = \"1000000000.01\" }\n"), 7, "must be at most 1000000000");
        assert!(parse_rate_card(&card("", "{ unit_price = \"-0\" }\n"), "x").is_ok());
    }

    #[test]
    fn boundaries_must_be_whole_bytes() {
        let gb = card("", "{ up_to = \"0.0000000001\", unit_price = \"1\" },\n{ unit_price = \"1\" },\n");
        assert_err(&gb, 7, "is not a whole number of bytes");
        assert!(parse_rate_card(&gb.replace("0.0000000001", "0.000000001"), "x").is_ok());
        let gib = card("unit = \"GiB\"\n", "{ up_to = \"0.1\", unit_price = \"1\" },\n{ unit_price = \"1\" },\n");
        assert_err(&gib, 8, "(0.1) GiB is not a whole number of bytes");
        assert!(parse_rate_card(&gib.replace("0.1", "0.5"), "x").is_ok());
        // Fine in GB, broken by a later change to GiB: reported at the change's unit.
        let change = format!(
            "{}[[partner.price_change]]\neffective_from = \"2026-01-01\"\nunit = \"GiB\"\n",
            card("", "{ up_to = \"0.1\", unit_price = \"1\" },\n{ unit_price = \"1\" },\n")
        );
        assert_err(&change, 13, "price_change 1 (effective_from 2026-01-01): tier 1: up_to (0.1) GiB");
    }

    #[test]
    fn minimum_commitment_rules() {
        let neg = card("minimum_commitment = \"-1\"\n", "{ unit_price = \"1\" }\n");
        assert_err(&neg, 6, "minimum_commitment (-1) must not be negative");
        let frac = card("minimum_commitment = \"1.005\"\n", "{ unit_price = \"1\" }\n");
        assert_err(&frac, 6, "has more decimals than EUR allows (2)");
        let trailing_zero = card("minimum_commitment = \"1.000\"\n", "{ unit_price = \"1\" }\n");
        assert!(parse_rate_card(&trailing_zero, "x").is_ok());
        let jpy = card("minimum_commitment = \"1.5\"\n", "{ unit_price = \"1\" }\n").replace("EUR", "JPY");
        assert_err(&jpy, 6, "than JPY allows (0)");
        let kwd = card("minimum_commitment = \"1.505\"\n", "{ unit_price = \"1\" }\n").replace("EUR", "KWD");
        assert!(parse_rate_card(&kwd, "x").is_ok());
    }

    #[test]
    fn price_change_dates_strictly_increasing() {
        let base = card("", "{ unit_price = \"1\" }\n");
        let same = format!(
            "{base}[[partner.price_change]]\neffective_from = \"2026-11-01\"\n[[partner.price_change]]\neffective_from = \"2026-11-01\"\n"
        );
        assert_err(
            &same,
            13,
            "price_change 2 (effective_from 2026-11-01): effective_from (2026-11-01) must be later than the previous price_change's effective_from (2026-11-01)",
        );
        let earlier = same.replacen("2026-11-01\"\n[", "2026-12-01\"\n[", 1);
        assert_err(&earlier, 13, "must be later");
        let bad_date = format!("{base}[[partner.price_change]]\neffective_from = \"2026-02-30\"\n");
        assert_err(&bad_date, 11, "invalid date \"2026-02-30\"");
        let bad_shape = format!("{base}[[partner.price_change]]\neffective_from = \"2026-2-3\"\n");
        assert_err(&bad_shape, 11, "expected \"YYYY-MM-DD\"");
    }

    #[test]
    fn price_change_overrides_validated_with_lines() {
        let base = card("", "{ unit_price = \"1\" }\n");
        let flat = format!(
            "{base}[[partner.price_change]]\neffective_from = \"2026-11-01\"\npricing = \"flat\"\ntiers = [\n{{ up_to = \"5\", unit_price = \"1\" }},\n{{ unit_price = \"2\" }},\n]\n"
        );
        assert_err(&flat, 13, "price_change 1 (effective_from 2026-11-01): pricing \"flat\" needs exactly one tier");
        let cur = format!("{base}[[partner.price_change]]\neffective_from = \"2026-11-01\"\ncurrency = \"XYZ\"\n");
        assert_err(&cur, 12, "unknown currency \"XYZ\"");
        let commit = format!(
            "{}[[partner.price_change]]\neffective_from = \"2026-11-01\"\ncurrency = \"JPY\"\n",
            card("minimum_commitment = \"10.50\"\n", "{ unit_price = \"1\" }\n")
        );
        assert_err(&commit, 13, "minimum_commitment (10.50) has more decimals than JPY allows (0)");
        let unknown = format!("{base}[[partner.price_change]]\neffective_from = \"2026-11-01\"\nname = \"x\"\n");
        assert_err(&unknown, 12, "unknown field `name`");
    }

    #[test]
    fn load_reports_missing_file() {
        let e = load_rate_card(Path::new("/nonexistent/rates.toml")).expect_err("missing");
        assert!(matches!(e, RateCardError::Io { .. }));
        assert!(e.to_string().starts_with("/nonexistent/rates.toml: cannot read rate card"));
        assert_eq!(e.line(), None);
    }

    #[test]
    fn empty_card_is_empty() {
        assert_eq!(parse_rate_card("", "x").expect("empty ok").partners.len(), 0);
    }
}
