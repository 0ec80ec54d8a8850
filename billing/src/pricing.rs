//! Computing charges from a byte count and a [`PriceList`].
//!
//! All arithmetic is exact integer/decimal arithmetic; nothing uses floats.
//!
//! # Exactness
//! * Amounts are computed from the exact byte count as
//!   `bytes * unit_price / bytes_per_unit` (multiplication first, 256-bit
//!   intermediate), then rounded **once** to the currency's minor unit, half away
//!   from zero. They never depend on the displayed quantity.
//! * GB quantities (`bytes / 10^9`) are always exact.
//! * GiB quantities (`bytes / 2^30`) are **not** always representable:
//!   `1 / 2^30` needs 30 fractional digits and [`Decimal`] holds at most 28
//!   (and 96 bits of mantissa overall). [`quantity`] then rounds, half away from
//!   zero, to as many fractional digits as fit. Quantities are for display; the
//!   exact byte count travels on every [`ChargeLine`].

use rust_decimal::{Decimal, RoundingStrategy};

use crate::rates::{Currency, PriceList, PricingModel, Tier, Unit};

/// Description of the minimum-commitment true-up line.
pub const TRUE_UP_DESCRIPTION: &str = "Minimum commitment true-up";

/// One priced line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeLine {
    /// Human-readable description, e.g. `"Egress 0–1000 GB @ 0.050 EUR/GB"`.
    pub description: String,
    /// Exact number of bytes priced by this line.
    pub bytes: u64,
    /// `bytes` in `unit` (see the module docs on GiB exactness).
    pub quantity: Decimal,
    /// Unit of `quantity` and `unit_price`.
    pub unit: Unit,
    /// Price per unit (0 on the true-up line).
    pub unit_price: Decimal,
    /// Amount, rounded to the currency's minor units.
    pub amount: Decimal,
}

/// The result of pricing one period's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// Usage lines (at least one).
    pub lines: Vec<ChargeLine>,
    /// Sum of the rounded usage line amounts.
    pub usage_subtotal: Decimal,
    /// Present when `usage_subtotal` is below the minimum commitment.
    pub commitment_true_up: Option<ChargeLine>,
    /// `usage_subtotal` plus the true-up, if any.
    pub total: Decimal,
}

/// Rounds to the currency's minor units, half away from zero, and sets the
/// scale to exactly the minor units (so `1.5` EUR becomes `1.50`).
pub fn round_money(amount: Decimal, currency: &Currency) -> Decimal {
    let mut rounded = amount.round_dp_with_strategy(currency.minor_units, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(currency.minor_units);
    rounded
}

/// `bytes` expressed in `unit`.
///
/// Exact for GB. For GiB, rounded half away from zero to the most fractional
/// digits (at most 28) that [`Decimal`] can hold for that magnitude; the
/// result is normalized (no trailing zeros).
pub fn quantity(bytes: u64, unit: Unit) -> Decimal {
    match unit {
        Unit::Gigabyte => Decimal::from_i128_with_scale(i128::from(bytes), 9).normalize(),
        Unit::Gibibyte => {
            // bytes / 2^30 = whole + rest * 5^30 / 10^30, with rest < 2^30.
            const FRACTION_DIGITS: u32 = 30;
            let whole = u128::from(bytes >> 30);
            let rest = u128::from(bytes & ((1 << 30) - 1));
            let numerator = rest * 5u128.pow(FRACTION_DIGITS); // < 10^30
            let max_mantissa = (1u128 << 96) - 1;
            for scale in (0..=28u32).rev() {
                let divisor = 10u128.pow(FRACTION_DIGITS - scale);
                let fraction = (numerator + divisor / 2) / divisor;
                let mantissa = whole * 10u128.pow(scale) + fraction;
                if mantissa <= max_mantissa {
                    // mantissa < 2^96 and scale <= 28: always a valid Decimal.
                    return Decimal::from_i128_with_scale(mantissa as i128, scale).normalize();
                }
            }
            // Unreachable: at scale 0 the mantissa is at most 2^34.
            Decimal::from(whole)
        }
    }
}

pub use crate::rates::tier_boundary_bytes;

/// `round(bytes * unit_price / bytes_per_unit)` to the currency's minor units,
/// half away from zero, computed exactly.
///
/// Returns `None` only if the result does not fit in a [`Decimal`] (impossible
/// for unit prices up to [`crate::rates::MAX_UNIT_PRICE`]) or the currency has
/// more than 28 minor units.
pub fn line_amount(bytes: u64, unit_price: Decimal, unit: Unit, currency: &Currency) -> Option<Decimal> {
    let minor = currency.minor_units;
    if minor > 28 {
        return None;
    }
    // amount_minor = bytes * m * 10^minor / (10^scale * bpu)
    let numerator = U256::mul(u128::from(bytes), unit_price.mantissa().unsigned_abs()).checked_mul_small(10u128.pow(minor))?;
    let denominator = 10u128.pow(unit_price.scale()) * u128::from(unit.bytes_per_unit()); // < 2^124
    let (quotient, remainder) = numerator.div_rem(denominator);
    let mut q = quotient.to_u128()?;
    if remainder >= denominator - remainder {
        q += 1; // half away from zero
    }
    let q = i128::try_from(q).ok()?;
    let signed = if unit_price.is_sign_negative() { -q } else { q };
    Decimal::try_from_i128_with_scale(signed, minor).ok()
}

/// Prices `bytes` of usage under `list`.
///
/// Assumes a validated list (see [`crate::rates`]); for robustness the last
/// tier is always treated as unbounded, a flat list uses its first tier, and a
/// list without tiers prices at 0.
///
/// # Panics
/// Only if an amount overflows [`Decimal`], which cannot happen for lists that
/// passed rate card validation.
pub fn price(bytes: u64, list: &PriceList) -> Charge {
    let fallback = [Tier { up_to: None, unit_price: Decimal::ZERO }];
    let tiers: &[Tier] = if list.tiers.is_empty() { &fallback } else { &list.tiers };
    let unit = list.unit;
    let boundary = |i: usize| -> u64 {
        match tiers[i].up_to {
            Some(u) if i + 1 < tiers.len() => tier_boundary_bytes(u, unit).0,
            _ => u64::MAX,
        }
    };
    let line = |description: String, line_bytes: u64, unit_price: Decimal| ChargeLine {
        description,
        bytes: line_bytes,
        quantity: quantity(line_bytes, unit),
        unit,
        unit_price,
        amount: line_amount(line_bytes, unit_price, unit, &list.currency)
            .map(|a| round_money(a, &list.currency))
            .expect("amount overflows Decimal: unit_price exceeds MAX_UNIT_PRICE"),
    };

    let mut lines = Vec::new();
    match list.model {
        PricingModel::Flat => {
            let t = &tiers[0];
            lines.push(line(format!("Egress @ {}", rate(t.unit_price, list)), bytes, t.unit_price));
        }
        PricingModel::Graduated => {
            let mut lower = 0u64;
            for (i, t) in tiers.iter().enumerate() {
                let upper = boundary(i);
                let in_tier = bytes.min(upper).saturating_sub(lower);
                if in_tier > 0 {
                    lines.push(line(
                        format!("Egress {} @ {}", range_label(tiers, i, unit), rate(t.unit_price, list)),
                        in_tier,
                        t.unit_price,
                    ));
                }
                if bytes <= upper {
                    break;
                }
                lower = lower.max(upper);
            }
            if lines.is_empty() {
                let t = &tiers[0];
                lines.push(line(format!("Egress {} @ {}", range_label(tiers, 0, unit), rate(t.unit_price, list)), 0, t.unit_price));
            }
        }
        PricingModel::Volume => {
            let i = (0..tiers.len()).find(|&i| bytes <= boundary(i)).unwrap_or(tiers.len() - 1);
            lines.push(line(
                format!("Egress {} {unit} (volume tier {})", quantity(bytes, unit), range_label(tiers, i, unit)),
                bytes,
                tiers[i].unit_price,
            ));
        }
    }

    let usage_subtotal = round_money(lines.iter().map(|l| l.amount).sum(), &list.currency);
    let commitment_true_up =
        list.minimum_commitment.map(|m| round_money(m, &list.currency)).filter(|&m| usage_subtotal < m).map(|m| ChargeLine {
            description: TRUE_UP_DESCRIPTION.to_owned(),
            bytes: 0,
            quantity: Decimal::ZERO,
            unit,
            unit_price: Decimal::ZERO,
            amount: round_money(m - usage_subtotal, &list.currency),
        });
    let total = round_money(usage_subtotal + commitment_true_up.as_ref().map_or(Decimal::ZERO, |l| l.amount), &list.currency);
    Charge { lines, usage_subtotal, commitment_true_up, total }
}

/// `"0.050 EUR/GB"`.
fn rate(unit_price: Decimal, list: &PriceList) -> String {
    format!("{unit_price} {}/{}", list.currency.code, list.unit)
}

/// `"0–1000 GB"`, `"1000–10000 GB"`, `"above 10000 GB"` or `"from 0 GB"`.
fn range_label(tiers: &[Tier], i: usize, unit: Unit) -> String {
    let lower = if i == 0 { None } else { tiers[i - 1].up_to };
    let upper = if i + 1 < tiers.len() { tiers[i].up_to } else { None };
    match (lower, upper) {
        (lo, Some(hi)) => format!("{}–{hi} {unit}", lo.unwrap_or(Decimal::ZERO)),
        (Some(lo), None) => format!("above {lo} {unit}"),
        (None, None) => format!("from 0 {unit}"),
    }
}

/// Minimal unsigned 256-bit integer for exact `bytes * price` arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct U256 {
    hi: u128,
    lo: u128,
}

impl U256 {
    /// Full 128 x 128 -> 256-bit product.
    fn mul(a: u128, b: u128) -> U256 {
        const MASK: u128 = u64::MAX as u128;
        let (a1, a0) = (a >> 64, a & MASK);
        let (b1, b0) = (b >> 64, b & MASK);
        let p00 = a0 * b0;
        let p01 = a0 * b1;
        let p10 = a1 * b0;
        let p11 = a1 * b1;
        let mid = (p00 >> 64) + (p01 & MASK) + (p10 & MASK);
        let lo = (p00 & MASK) | (mid << 64);
        let hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
        U256 { hi, lo }
    }

    /// `self * k`, or `None` on overflow.
    fn checked_mul_small(self, k: u128) -> Option<U256> {
        let low = U256::mul(self.lo, k);
        let high = self.hi.checked_mul(k)?;
        Some(U256 { hi: low.hi.checked_add(high)?, lo: low.lo })
    }

    /// Quotient and remainder by `d` (`0 < d < 2^127`), by binary long division.
    fn div_rem(self, d: u128) -> (U256, u128) {
        debug_assert!(d > 0 && d < (1 << 127));
        let mut q = U256 { hi: 0, lo: 0 };
        let mut r: u128 = 0;
        for bit in (0..256u32).rev() {
            let b = if bit >= 128 { (self.hi >> (bit - 128)) & 1 } else { (self.lo >> bit) & 1 };
            r = (r << 1) | b;
            if r >= d {
                r -= d;
                if bit >= 128 {
                    q.hi |= 1 << (bit - 128);
                } else {
                    q.lo |= 1 << bit;
                }
            }
        }
        (q, r)
    }

    fn to_u128(self) -> Option<u128> {
        (self.hi == 0).then_some(self.lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    fn cur(code: &str) -> Currency {
        Currency::from_code(code).expect("known currency")
    }

    fn tier(up_to: Option<Decimal>, unit_price: Decimal) -> Tier {
        Tier { up_to, unit_price }
    }

    fn list(model: PricingModel, unit: Unit, code: &str, tiers: Vec<Tier>, min: Option<Decimal>) -> PriceList {
        PriceList { currency: cur(code), unit, model, tiers, minimum_commitment: min }
    }

    fn example_tiers() -> Vec<Tier> {
        vec![tier(Some(dec!(1000)), dec!(0.050)), tier(Some(dec!(10000)), dec!(0.040)), tier(None, dec!(0.030))]
    }

    const GB: u64 = 1_000_000_000;
    const GIB: u64 = 1 << 30;

    #[test]
    fn quantity_gb_exact() {
        assert_eq!(quantity(0, Unit::Gigabyte), dec!(0));
        assert_eq!(quantity(1, Unit::Gigabyte), dec!(0.000000001));
        assert_eq!(quantity(12_345_600_000_000, Unit::Gigabyte).to_string(), "12345.6");
        assert_eq!(quantity(u64::MAX, Unit::Gigabyte), dec!(18446744073.709551615));
    }

    #[test]
    fn quantity_gib_exact_and_rounded() {
        assert_eq!(quantity(GIB, Unit::Gibibyte), dec!(1));
        assert_eq!(quantity(GIB / 2 * 3, Unit::Gibibyte), dec!(1.5));
        // 4 bytes = 2^-28 GiB needs exactly 28 fractional digits: exact.
        assert_eq!(quantity(4, Unit::Gibibyte), dec!(0.0000000037252902984619140625));
        // 1 byte = 2^-30 GiB = 0.000000000931322574615478515625 (30 digits): rounded to 28.
        assert_eq!(quantity(1, Unit::Gibibyte), dec!(0.0000000009313225746154785156));
        // 3 bytes = ...2.793967723846435546875e-9: ...5546875 -> rounds half away to ...5547.
        assert_eq!(quantity(3, Unit::Gibibyte), dec!(0.0000000027939677238464355469));
        // Large values keep fewer fractional digits but stay within 1 ulp.
        let q = quantity(u64::MAX, Unit::Gibibyte);
        assert_eq!(q.trunc(), dec!(17179869183));
        assert!(q > dec!(17179869183.99999999) && q <= dec!(17179869184));
    }

    #[test]
    fn round_money_halves_and_exponents() {
        assert_eq!(round_money(dec!(0.005), &cur("EUR")).to_string(), "0.01");
        assert_eq!(round_money(dec!(0.0049), &cur("EUR")).to_string(), "0.00");
        assert_eq!(round_money(dec!(-0.005), &cur("EUR")).to_string(), "-0.01");
        assert_eq!(round_money(dec!(0.5), &cur("JPY")).to_string(), "1");
        assert_eq!(round_money(dec!(2.5), &cur("JPY")).to_string(), "3");
        assert_eq!(round_money(dec!(0.0005), &cur("KWD")).to_string(), "0.001");
        assert_eq!(round_money(dec!(1.5), &cur("EUR")).to_string(), "1.50");
    }

    #[test]
    fn line_amount_rounds_once_half_away() {
        // 0.1 GB at 0.05 = 0.005 EUR -> 0.01
        assert_eq!(line_amount(GB / 10, dec!(0.05), Unit::Gigabyte, &cur("EUR")), Some(dec!(0.01)));
        // 0.098 GB at 0.05 = 0.0049 EUR -> 0.00
        assert_eq!(line_amount(98_000_000, dec!(0.05), Unit::Gigabyte, &cur("EUR")), Some(dec!(0.00)));
        // JPY: 0.5 GB at 1 = 0.5 -> 1
        assert_eq!(line_amount(GB / 2, dec!(1), Unit::Gigabyte, &cur("JPY")), Some(dec!(1)));
        // KWD: 1 GB at 0.0125 = 0.0125 -> 0.013
        assert_eq!(line_amount(GB, dec!(0.0125), Unit::Gigabyte, &cur("KWD")), Some(dec!(0.013)));
        // GiB: half a GiB at 0.01 = 0.005 -> 0.01, computed from bytes.
        assert_eq!(line_amount(GIB / 2, dec!(0.01), Unit::Gibibyte, &cur("EUR")), Some(dec!(0.01)));
        // 1 byte in GiB at 10^9: 0.931322574615478515625 -> 0.93
        assert_eq!(line_amount(1, dec!(1000000000), Unit::Gibibyte, &cur("EUR")), Some(dec!(0.93)));
        // Worst case still fits.
        let max = line_amount(u64::MAX, crate::rates::MAX_UNIT_PRICE, Unit::Gibibyte, &cur("KWD"));
        assert!(max.is_some());
    }

    #[test]
    fn u256_matches_u128_where_it_fits() {
        let p = U256::mul(u128::from(u64::MAX), u128::from(u64::MAX));
        assert_eq!(p.to_u128(), Some(u128::from(u64::MAX) * u128::from(u64::MAX)));
        let big = U256::mul(u128::MAX, 3);
        assert_eq!(big, U256 { hi: 2, lo: u128::MAX - 2 });
        let (q, r) = big.div_rem(3);
        assert_eq!((q.to_u128(), r), (Some(u128::MAX), 0));
        let (q, r) = U256::mul(1_000_007, 999_983).div_rem(1000);
        assert_eq!((q.to_u128(), r), (Some(1_000_007 * 999_983 / 1000), 1_000_007 * 999_983 % 1000));
    }

    #[test]
    fn graduated_spans_tiers() {
        let l = list(PricingModel::Graduated, Unit::Gigabyte, "EUR", example_tiers(), None);
        let c = price(12_345 * GB + GB / 2, &l);
        let descr: Vec<_> = c.lines.iter().map(|l| l.description.as_str()).collect();
        assert_eq!(
            descr,
            ["Egress 0–1000 GB @ 0.050 EUR/GB", "Egress 1000–10000 GB @ 0.040 EUR/GB", "Egress above 10000 GB @ 0.030 EUR/GB"]
        );
        let bytes: Vec<_> = c.lines.iter().map(|l| l.bytes).collect();
        assert_eq!(bytes, [1000 * GB, 9000 * GB, 2345 * GB + GB / 2]);
        let amounts: Vec<_> = c.lines.iter().map(|l| l.amount).collect();
        assert_eq!(amounts, [dec!(50.00), dec!(360.00), dec!(70.37)]); // 70.365 -> 70.37
        assert_eq!(c.usage_subtotal, dec!(480.37));
        assert_eq!(c.total, dec!(480.37));
        assert_eq!(c.lines[2].quantity, dec!(2345.5));
    }

    #[test]
    fn graduated_boundary_exact_and_one_byte_above() {
        let l = list(PricingModel::Graduated, Unit::Gigabyte, "EUR", example_tiers(), None);
        let at = price(1000 * GB, &l);
        assert_eq!(at.lines.len(), 1);
        assert_eq!(at.lines[0].bytes, 1000 * GB);
        assert_eq!(at.total, dec!(50.00));
        let above = price(1000 * GB + 1, &l);
        assert_eq!(above.lines.len(), 2);
        assert_eq!(above.lines[1].bytes, 1);
        assert_eq!(above.lines[1].description, "Egress 1000–10000 GB @ 0.040 EUR/GB");
        assert_eq!(above.lines[1].amount, dec!(0.00));
        let at2 = price(10_000 * GB, &l);
        assert_eq!(at2.lines.len(), 2);
        let above2 = price(10_000 * GB + 1, &l);
        assert_eq!(above2.lines.len(), 3);
        assert_eq!(above2.lines[2].bytes, 1);
    }

    #[test]
    fn volume_prices_all_bytes_in_one_tier() {
        let l = list(PricingModel::Volume, Unit::Gigabyte, "EUR", example_tiers(), None);
        let c = price(12_345_600_000_000, &l);
        assert_eq!(c.lines.len(), 1);
        assert_eq!(c.lines[0].description, "Egress 12345.6 GB (volume tier above 10000 GB)");
        assert_eq!(c.lines[0].unit_price, dec!(0.030));
        assert_eq!(c.total, dec!(370.37)); // 370.368
        let mid = price(5000 * GB, &l);
        assert_eq!(mid.lines[0].description, "Egress 5000 GB (volume tier 1000–10000 GB)");
        let at = price(1000 * GB, &l);
        assert_eq!(at.lines[0].unit_price, dec!(0.050));
        assert_eq!(at.lines[0].description, "Egress 1000 GB (volume tier 0–1000 GB)");
        let above = price(1000 * GB + 1, &l);
        assert_eq!(above.lines[0].unit_price, dec!(0.040));
        assert_eq!(above.lines[0].bytes, 1000 * GB + 1);
    }

    #[test]
    fn flat_prices_everything() {
        let l = list(PricingModel::Flat, Unit::Gigabyte, "USD", vec![tier(None, dec!(0.02))], None);
        let c = price(123_456 * GB, &l);
        assert_eq!(c.lines.len(), 1);
        assert_eq!(c.lines[0].description, "Egress @ 0.02 USD/GB");
        assert_eq!(c.total.to_string(), "2469.12");
    }

    #[test]
    fn zero_usage_shows_first_tier() {
        for model in [PricingModel::Graduated, PricingModel::Volume] {
            let c = price(0, &list(model, Unit::Gigabyte, "EUR", example_tiers(), None));
            assert_eq!(c.lines.len(), 1, "{model}");
            assert_eq!(c.lines[0].bytes, 0);
            assert_eq!(c.lines[0].unit_price, dec!(0.050));
            assert_eq!(c.lines[0].amount.to_string(), "0.00");
            assert_eq!(c.total.to_string(), "0.00");
        }
        let flat = list(PricingModel::Flat, Unit::Gigabyte, "JPY", vec![tier(None, dec!(3))], None);
        assert_eq!(price(0, &flat).lines[0].amount.to_string(), "0");
        let single = list(PricingModel::Graduated, Unit::Gigabyte, "EUR", vec![tier(None, dec!(1))], None);
        assert_eq!(price(0, &single).lines[0].description, "Egress from 0 GB @ 1 EUR/GB");
    }

    #[test]
    fn commitment_true_up_below_equal_above() {
        let l = |min| list(PricingModel::Flat, Unit::Gigabyte, "EUR", vec![tier(None, dec!(0.05))], Some(min));
        let below = price(1000 * GB, &l(dec!(250.00))); // 50.00
        let up = below.commitment_true_up.as_ref().expect("true-up");
        assert_eq!(up.description, TRUE_UP_DESCRIPTION);
        assert_eq!((up.bytes, up.quantity), (0, Decimal::ZERO));
        assert_eq!(up.amount.to_string(), "200.00");
        assert_eq!(below.usage_subtotal, dec!(50.00));
        assert_eq!(below.total.to_string(), "250.00");
        let equal = price(5000 * GB, &l(dec!(250)));
        assert!(equal.commitment_true_up.is_none());
        assert_eq!(equal.total, dec!(250.00));
        let above = price(6000 * GB, &l(dec!(250)));
        assert!(above.commitment_true_up.is_none());
        assert_eq!(above.total, dec!(300.00));
        let zero = price(0, &l(dec!(250)));
        assert_eq!(zero.total.to_string(), "250.00");
    }

    #[test]
    fn currency_exponents() {
        let one = |code| list(PricingModel::Flat, Unit::Gigabyte, code, vec![tier(None, dec!(1.23456))], None);
        assert_eq!(price(GB, &one("JPY")).total.to_string(), "1");
        assert_eq!(price(GB, &one("EUR")).total.to_string(), "1.23");
        assert_eq!(price(GB, &one("KWD")).total.to_string(), "1.235");
        // Half: 0.5 JPY rounds away from zero.
        let half = list(PricingModel::Flat, Unit::Gigabyte, "JPY", vec![tier(None, dec!(1))], None);
        assert_eq!(price(GB / 2, &half).total.to_string(), "1");
        assert_eq!(price(GB / 2 - 1, &half).total.to_string(), "0");
    }

    #[test]
    fn gib_versus_gb() {
        let tiers = vec![tier(Some(dec!(1)), dec!(10)), tier(None, dec!(1))];
        let gb = list(PricingModel::Graduated, Unit::Gigabyte, "EUR", tiers.clone(), None);
        let gib = list(PricingModel::Graduated, Unit::Gibibyte, "EUR", tiers, None);
        let c_gb = price(GIB, &gb); // 1.073741824 GB: crosses the 1 GB boundary
        assert_eq!(c_gb.lines.len(), 2);
        assert_eq!(c_gb.lines[1].bytes, GIB - GB);
        assert_eq!(c_gb.total, dec!(10.07)); // 10 + 0.073741824
        let c_gib = price(GIB, &gib); // exactly at the 1 GiB boundary
        assert_eq!(c_gib.lines.len(), 1);
        assert_eq!(c_gib.lines[0].description, "Egress 0–1 GiB @ 10 EUR/GiB");
        assert_eq!(c_gib.total, dec!(10.00));
    }

    #[test]
    fn boundary_bytes() {
        assert_eq!(tier_boundary_bytes(dec!(1000), Unit::Gigabyte), (1000 * GB, true));
        assert_eq!(tier_boundary_bytes(dec!(0.5), Unit::Gibibyte), (GIB / 2, true));
        assert_eq!(tier_boundary_bytes(dec!(0.1), Unit::Gibibyte), (107_374_182, false));
        assert_eq!(tier_boundary_bytes(dec!(0.0000000001), Unit::Gigabyte), (0, false));
        assert_eq!(tier_boundary_bytes(dec!(100000000000000000000), Unit::Gigabyte), (u64::MAX, true));
    }

    fn tiers_strategy() -> impl Strategy<Value = Vec<Tier>> {
        (prop::collection::btree_set(1u64..2_000_000, 0..5), prop::collection::vec((0i64..100_000, 0u32..6), 5)).prop_map(
            |(bounds, prices)| {
                let mut tiers: Vec<Tier> =
                    bounds.iter().zip(&prices).map(|(&b, &(m, s))| tier(Some(Decimal::from(b)), Decimal::new(m, s))).collect();
                let (m, s) = prices[4];
                tiers.push(tier(None, Decimal::new(m, s)));
                tiers
            },
        )
    }

    fn list_strategy() -> impl Strategy<Value = PriceList> {
        (
            prop_oneof![Just(PricingModel::Flat), Just(PricingModel::Graduated), Just(PricingModel::Volume)],
            prop_oneof![Just(Unit::Gigabyte), Just(Unit::Gibibyte)],
            prop_oneof![Just("EUR"), Just("JPY"), Just("KWD")],
            tiers_strategy(),
            prop::option::of(0i64..10_000_000),
        )
            .prop_map(|(model, unit, code, mut tiers, min)| {
                if model == PricingModel::Flat {
                    let last = tiers.pop().expect("at least one tier");
                    tiers = vec![last];
                }
                let c = cur(code);
                let min = min.map(|m| Decimal::new(m, c.minor_units));
                list(model, unit, code, tiers, min)
            })
    }

    proptest! {
        #[test]
        fn prop_charge_invariants(bytes in 0u64..=10_000_000_000_000_000, l in list_strategy()) {
            let c = price(bytes, &l);
            prop_assert!(!c.lines.is_empty());
            prop_assert_eq!(c.lines.iter().map(|x| u128::from(x.bytes)).sum::<u128>(), u128::from(bytes));
            let minor = l.currency.minor_units;
            for line in c.lines.iter().chain(c.commitment_true_up.iter()) {
                prop_assert!(line.amount >= Decimal::ZERO);
                prop_assert!(line.amount.scale() <= minor);
                prop_assert_eq!(line.amount, round_money(line.amount, &l.currency));
            }
            let lines_sum: Decimal = c.lines.iter().map(|x| x.amount).sum();
            prop_assert_eq!(c.usage_subtotal, lines_sum);
            let up = c.commitment_true_up.as_ref().map_or(Decimal::ZERO, |x| x.amount);
            prop_assert_eq!(c.total, lines_sum + up);
            if let Some(min) = l.minimum_commitment {
                prop_assert!(c.total >= min);
            }
            if l.model != PricingModel::Graduated {
                prop_assert_eq!(c.lines.len(), 1);
            }
        }

        #[test]
        fn prop_line_amount_matches_decimal_for_gb(bytes in 0u64..=10_000_000_000_000_000, m in 0i64..1_000_000, s in 0u32..6) {
            // For GB the exact value bytes * p / 10^9 is representable in Decimal,
            // so a single Decimal rounding must agree with the 256-bit path.
            let p = Decimal::new(m, s);
            let exact = Decimal::from(bytes) * p / Decimal::from(GB);
            let eur = cur("EUR");
            prop_assert_eq!(line_amount(bytes, p, Unit::Gigabyte, &eur), Some(round_money(exact, &eur)));
        }
    }
}
