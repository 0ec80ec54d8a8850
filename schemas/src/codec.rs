//! Avro single-object encoding of [`ViewerUsage`].
//!
//! Wire format (Avro specification, "Single object encoding"): `C3 01`, the
//! 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing
//! Canonical Form, then the Avro binary body.
//!
//! The current schema (v1) is encoded and decoded by hand-written code that
//! follows the schema field by field and borrows strings from the input: the
//! aggregator's hot path. Every other known schema version is decoded with
//! apache-avro's generic decoder and resolved to the current schema, so old
//! and new writers stay readable. Fingerprints are computed with apache-avro
//! from the schema texts in `schemas/avro/`.

use crate::event::{Protocol, ViewerUsage};
use apache_avro::rabin::Rabin;
use apache_avro::types::Value;
use apache_avro::Schema;
use std::borrow::Cow;
use thiserror::Error;

/// The two marker bytes that open every single-object encoded message.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];
/// Length of the single-object header: magic plus fingerprint.
pub const HEADER_LEN: usize = 10;

/// Schema versions this build knows, oldest first. Every released version
/// stays here so that old (and newer) writers stay readable.
pub const SCHEMA_VERSIONS: &[(&str, &str)] =
    &[("v1", include_str!("../avro/viewer_usage.v1.avsc")), ("v2", include_str!("../avro/viewer_usage.v2.avsc"))];

/// The version this build writes, decodes on the fast path and resolves every
/// other version to (the contract's schema). v2 adds an optional field that
/// is read but not stored yet.
pub const CURRENT_VERSION: &str = "v1";

/// Why a message could not be decoded. Every variant is a poison record for
/// the consumer: it is dead-lettered with [`DecodeError::reason`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The message is shorter than the header; holds its length in bytes.
    #[error("message is {0} bytes, shorter than the 10-byte single-object header")]
    TooShort(usize),
    /// The message does not open with [`MAGIC`]; holds its first two bytes.
    #[error("message does not start with the single-object marker C3 01 (found {0:02x} {1:02x})")]
    BadMagic(u8, u8),
    /// The header's writer schema fingerprint (held, in wire order) is none of [`SCHEMA_VERSIONS`]'.
    #[error("unknown writer schema fingerprint {}", hex(.0))]
    UnknownFingerprint([u8; 8]),
    /// The body does not decode as the writer schema (or resolve to the current one).
    #[error("malformed Avro body at field `{field}`: {reason}")]
    Malformed {
        /// The schema field being read when decoding failed (`record` for the whole record).
        field: &'static str,
        /// What was wrong there.
        reason: String,
    },
    /// The body decoded, with this many bytes left over after the record.
    #[error("{0} unexpected bytes after the end of the record")]
    TrailingBytes(usize),
}

impl DecodeError {
    /// Short machine-readable reason, used as the dead-letter reason prefix and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooShort(_) | DecodeError::BadMagic(..) => "bad_header",
            DecodeError::UnknownFingerprint(_) => "unknown_fingerprint",
            DecodeError::Malformed { .. } | DecodeError::TrailingBytes(_) => "malformed",
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

/// A known writer schema.
#[derive(Debug, Clone)]
pub struct SchemaVersion {
    /// The version's name in [`SCHEMA_VERSIONS`], e.g. `v1`.
    pub name: &'static str,
    /// The parsed writer schema.
    pub schema: Schema,
    /// Its CRC-64-AVRO fingerprint in wire order, as in a message's header ([`fingerprint()`]).
    pub fingerprint: [u8; 8],
}

/// Encoder/decoder for the usage event. Cheap to share (`Arc`) or clone.
#[derive(Debug, Clone)]
pub struct Codec {
    versions: Vec<SchemaVersion>,
    /// Index of the version written and decoded on the fast path.
    current: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

/// The Parsing Canonical Form of `schema`, per the Avro specification.
///
/// apache-avro's `canonical_form()` strips `logicalType` but leaves the
/// wrapper object, writing `{"type":"long"}` where the specification's
/// \[PRIMITIVES\] rule asks for `"long"` (Python's `avro` package does the
/// same; Java's `SchemaNormalization` follows the rule). The contract's test
/// vector follows the specification, so the wrappers are reduced here. Named
/// types always carry `"name"` first, so only bare primitive wrappers match.
pub fn parsing_canonical_form(schema: &Schema) -> String {
    let mut pcf = schema.canonical_form();
    for p in ["null", "boolean", "int", "long", "float", "double", "bytes", "string"] {
        pcf = pcf.replace(&format!("{{\"type\":\"{p}\"}}"), &format!("\"{p}\""));
    }
    pcf
}

/// CRC-64-AVRO fingerprint (apache-avro's `Rabin`) of the schema's Parsing
/// Canonical Form, in wire (little-endian) order.
pub fn fingerprint(schema: &Schema) -> [u8; 8] {
    use digest::Digest;
    let mut d = Rabin::new();
    d.update(parsing_canonical_form(schema).as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&d.finalize()[..8]);
    out
}

impl Codec {
    /// A codec that knows every version in [`SCHEMA_VERSIONS`] and writes [`CURRENT_VERSION`].
    pub fn new() -> Self {
        let mut c = Self::with_versions(SCHEMA_VERSIONS).expect("built-in schemas parse");
        c.current = c.versions.iter().position(|v| v.name == CURRENT_VERSION).expect("current version is known");
        c
    }

    /// A codec for the given `(name, schema JSON)` versions, oldest first; the
    /// last is the current one and must have the fields of `ViewerUsage`.
    pub fn with_versions(list: &[(&'static str, &str)]) -> Result<Self, apache_avro::Error> {
        let versions = list
            .iter()
            .map(|(name, text)| {
                let schema = Schema::parse_str(text)?;
                Ok(SchemaVersion { name, fingerprint: fingerprint(&schema), schema })
            })
            .collect::<Result<Vec<_>, apache_avro::Error>>()?;
        assert!(!versions.is_empty(), "a codec needs at least one schema version");
        Ok(Codec { current: versions.len() - 1, versions })
    }

    /// The current schema: written by [`Codec::encode`].
    pub fn current(&self) -> &SchemaVersion {
        &self.versions[self.current]
    }

    /// All known versions, oldest first.
    pub fn versions(&self) -> &[SchemaVersion] {
        &self.versions
    }

    /// Append the single-object encoding of `ev` (current schema) to `out`.
    pub fn encode(&self, ev: &ViewerUsage<'_>, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.current().fingerprint);
        encode_body(ev, out);
    }

    /// The single-object encoding of `ev` as a new buffer.
    pub fn encode_to_vec(&self, ev: &ViewerUsage<'_>) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode(ev, &mut out);
        out
    }

    /// Decode one message. Strings borrow from `msg` when it was written with
    /// the current schema; other known versions are decoded generically.
    pub fn decode<'a>(&self, msg: &'a [u8]) -> Result<ViewerUsage<'a>, DecodeError> {
        if msg.len() < HEADER_LEN {
            return Err(DecodeError::TooShort(msg.len()));
        }
        if msg[..2] != MAGIC {
            return Err(DecodeError::BadMagic(msg[0], msg[1]));
        }
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&msg[2..HEADER_LEN]);
        let body = &msg[HEADER_LEN..];
        let current = self.current();
        if fp == current.fingerprint {
            return decode_body(body);
        }
        let writer = self.versions.iter().find(|v| v.fingerprint == fp).ok_or(DecodeError::UnknownFingerprint(fp))?;
        decode_generic(&writer.schema, &current.schema, body)
    }
}

// ---------------------------------------------------------------------------
// Hand-written v1 body codec.

fn put_long(n: i64, out: &mut Vec<u8>) {
    // zig-zag, then base-128 varint
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

fn put_str(s: &str, out: &mut Vec<u8>) {
    put_long(s.len() as i64, out);
    out.extend_from_slice(s.as_bytes());
}

fn encode_body(ev: &ViewerUsage<'_>, out: &mut Vec<u8>) {
    put_str(&ev.viewer_id, out);
    put_long(ev.seq, out);
    put_long(ev.interval_start, out);
    put_long(ev.interval_end, out);
    put_long(ev.bytes_out, out);
    put_long(ev.bytes_in, out);
    put_str(&ev.account_id, out);
    put_str(&ev.stream_name, out);
    put_str(&ev.cluster, out);
    put_str(&ev.server_id, out);
    put_long(ev.protocol.index() as i64, out);
    match ev.token_id {
        None => put_long(0, out),
        Some(t) => {
            put_long(1, out);
            put_long(t, out);
        }
    }
    for opt in [&ev.tracking_id, &ev.custom_viewer_data] {
        match opt {
            None => put_long(0, out),
            Some(s) => {
                put_long(1, out);
                put_str(s, out);
            }
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn long(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        let mut z: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(malformed(field, "truncated varint"));
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(malformed(field, "varint overflows 64 bits"));
            }
            z |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
            shift += 7;
            if shift > 63 {
                return Err(malformed(field, "varint longer than 10 bytes"));
            }
        }
    }

    #[inline]
    fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let len = self.long(field)?;
        let len = usize::try_from(len).map_err(|_| malformed(field, "negative string length"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| malformed(field, "string runs past the end of the message"))?;
        let bytes = &self.buf[self.pos..end];
        let s = if bytes.is_ascii() {
            // SAFETY: ASCII is valid UTF-8. The inlined word-at-a-time ASCII
            // check is ~2x cheaper than `from_utf8`'s call on short ids.
            unsafe { std::str::from_utf8_unchecked(bytes) }
        } else {
            std::str::from_utf8(bytes).map_err(|_| malformed(field, "string is not valid UTF-8"))?
        };
        self.pos = end;
        Ok(s)
    }

    #[inline]
    fn union_branch(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.long(field)? {
            0 => Ok(false),
            1 => Ok(true),
            i => Err(malformed(field, &format!("union branch {i} out of range"))),
        }
    }
}

fn malformed(field: &'static str, reason: &str) -> DecodeError {
    DecodeError::Malformed { field, reason: reason.to_string() }
}

fn decode_body(body: &[u8]) -> Result<ViewerUsage<'_>, DecodeError> {
    let mut r = Reader { buf: body, pos: 0 };
    let ev = ViewerUsage {
        viewer_id: Cow::Borrowed(r.str("viewer_id")?),
        seq: r.long("seq")?,
        interval_start: r.long("interval_start")?,
        interval_end: r.long("interval_end")?,
        bytes_out: r.long("bytes_out")?,
        bytes_in: r.long("bytes_in")?,
        account_id: Cow::Borrowed(r.str("account_id")?),
        stream_name: Cow::Borrowed(r.str("stream_name")?),
        cluster: Cow::Borrowed(r.str("cluster")?),
        server_id: Cow::Borrowed(r.str("server_id")?),
        protocol: {
            let i = r.long("protocol")?;
            Protocol::from_index(i).ok_or_else(|| malformed("protocol", &format!("enum index {i} out of range")))?
        },
        token_id: if r.union_branch("token_id")? { Some(r.long("token_id")?) } else { None },
        tracking_id: if r.union_branch("tracking_id")? { Some(Cow::Borrowed(r.str("tracking_id")?)) } else { None },
        custom_viewer_data: if r.union_branch("custom_viewer_data")? { Some(Cow::Borrowed(r.str("custom_viewer_data")?)) } else { None },
    };
    if r.pos != body.len() {
        return Err(DecodeError::TrailingBytes(body.len() - r.pos));
    }
    Ok(ev)
}

// ---------------------------------------------------------------------------
// Generic path for other known writer schemas.

fn decode_generic(writer: &Schema, reader: &Schema, body: &[u8]) -> Result<ViewerUsage<'static>, DecodeError> {
    let mut cursor = body;
    let value = apache_avro::from_avro_datum(writer, &mut cursor, Some(reader)).map_err(|e| malformed("record", &e.to_string()))?;
    if !cursor.is_empty() {
        return Err(DecodeError::TrailingBytes(cursor.len()));
    }
    let Value::Record(fields) = value else {
        return Err(malformed("record", "not a record"));
    };
    let mut fields = fields;
    let mut get = |name: &'static str| -> Result<Value, DecodeError> {
        let i = fields.iter().position(|(n, _)| n == name).ok_or_else(|| malformed(name, "missing after schema resolution"))?;
        Ok(std::mem::replace(&mut fields[i].1, Value::Null))
    };
    fn long(name: &'static str, v: Value) -> Result<i64, DecodeError> {
        match v {
            Value::Long(n) | Value::TimestampMillis(n) => Ok(n),
            Value::Int(n) => Ok(n as i64),
            other => Err(malformed(name, &format!("expected long, found {other:?}"))),
        }
    }
    fn string(name: &'static str, v: Value) -> Result<Cow<'static, str>, DecodeError> {
        match v {
            Value::String(s) => Ok(Cow::Owned(s)),
            other => Err(malformed(name, &format!("expected string, found {other:?}"))),
        }
    }
    fn optional(v: Value) -> Option<Value> {
        match v {
            Value::Union(_, inner) => optional(*inner),
            Value::Null => None,
            other => Some(other),
        }
    }
    Ok(ViewerUsage {
        viewer_id: string("viewer_id", get("viewer_id")?)?,
        seq: long("seq", get("seq")?)?,
        interval_start: long("interval_start", get("interval_start")?)?,
        interval_end: long("interval_end", get("interval_end")?)?,
        bytes_out: long("bytes_out", get("bytes_out")?)?,
        bytes_in: long("bytes_in", get("bytes_in")?)?,
        account_id: string("account_id", get("account_id")?)?,
        stream_name: string("stream_name", get("stream_name")?)?,
        cluster: string("cluster", get("cluster")?)?,
        server_id: string("server_id", get("server_id")?)?,
        protocol: match get("protocol")? {
            Value::Enum(_, sym) => Protocol::from_symbol(&sym).unwrap_or(Protocol::Other),
            other => return Err(malformed("protocol", &format!("expected enum, found {other:?}"))),
        },
        token_id: optional(get("token_id")?).map(|v| long("token_id", v)).transpose()?,
        tracking_id: optional(get("tracking_id")?).map(|v| string("tracking_id", v)).transpose()?,
        custom_viewer_data: optional(get("custom_viewer_data")?).map(|v| string("custom_viewer_data", v)).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Record;
    use proptest::prelude::*;

    fn sample() -> ViewerUsage<'static> {
        ViewerUsage {
            viewer_id: "v-1".into(),
            seq: 3,
            interval_start: 1_764_000_000_000,
            interval_end: 1_764_000_010_000,
            bytes_out: 1_250_000,
            bytes_in: 2_000,
            account_id: "acct".into(),
            stream_name: "live".into(),
            cluster: "fra-1".into(),
            server_id: "srv-1".into(),
            protocol: Protocol::Whep,
            token_id: Some(42),
            tracking_id: Some("acme-web".into()),
            custom_viewer_data: Some("{\"u\":1}".into()),
        }
    }

    /// Encode with apache-avro's generic writer: an independent implementation.
    fn generic_encode(schema: &Schema, ev: &ViewerUsage<'_>) -> Vec<u8> {
        let mut r = Record::new(schema).unwrap();
        r.put("viewer_id", ev.viewer_id.to_string());
        r.put("seq", ev.seq);
        r.put("interval_start", Value::TimestampMillis(ev.interval_start));
        r.put("interval_end", Value::TimestampMillis(ev.interval_end));
        r.put("bytes_out", ev.bytes_out);
        r.put("bytes_in", ev.bytes_in);
        r.put("account_id", ev.account_id.to_string());
        r.put("stream_name", ev.stream_name.to_string());
        r.put("cluster", ev.cluster.to_string());
        r.put("server_id", ev.server_id.to_string());
        r.put("protocol", Value::Enum(ev.protocol.index() as u32, ev.protocol.as_str().into()));
        let opt_long = |v: Option<i64>| match v {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(n) => Value::Union(1, Box::new(Value::Long(n))),
        };
        let opt_str = |v: &Option<Cow<'_, str>>| match v {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(s) => Value::Union(1, Box::new(Value::String(s.to_string()))),
        };
        r.put("token_id", opt_long(ev.token_id));
        r.put("tracking_id", opt_str(&ev.tracking_id));
        r.put("custom_viewer_data", opt_str(&ev.custom_viewer_data));
        apache_avro::to_avro_datum(schema, r).unwrap()
    }

    #[test]
    fn v2_is_known_and_v1_is_written() {
        let codec = Codec::new();
        assert_eq!(codec.current().name, "v1");
        assert_eq!(codec.versions().len(), 2);
        assert_ne!(codec.versions()[1].fingerprint, codec.current().fingerprint);
    }

    #[test]
    fn fingerprint_matches_the_contract_test_vector() {
        let codec = Codec::new();
        assert_eq!(codec.current().fingerprint, [0x2a, 0x9c, 0xa5, 0x0d, 0x2b, 0xf4, 0x8a, 0x30]);
        let msg = codec.encode_to_vec(&sample());
        assert_eq!(&msg[..10], &[0xC3, 0x01, 0x2a, 0x9c, 0xa5, 0x0d, 0x2b, 0xf4, 0x8a, 0x30]);
    }

    #[test]
    fn canonical_form_reduces_logical_types_to_primitives() {
        let pcf = parsing_canonical_form(&Codec::new().current().schema);
        assert!(!pcf.contains("logicalType"), "{pcf}");
        assert!(!pcf.contains("\"doc\""), "{pcf}");
        assert!(pcf.contains(r#"{"name":"interval_start","type":"long"}"#), "{pcf}");
        assert!(pcf.starts_with(r#"{"name":"media.metering.v1.ViewerUsage","type":"record","fields":["#), "{pcf}");
    }

    #[test]
    fn round_trip_sample_borrows_strings() {
        let codec = Codec::new();
        let msg = codec.encode_to_vec(&sample());
        let back = codec.decode(&msg).unwrap();
        assert_eq!(back, sample());
        assert!(matches!(back.viewer_id, Cow::Borrowed(_)));
    }

    #[test]
    fn edge_values_round_trip() {
        let codec = Codec::new();
        let long_edges = [i64::MIN, i64::MIN + 1, -1, 0, 1, 63, 64, 127, 128, i64::MAX - 1, i64::MAX];
        for &n in &long_edges {
            for p in Protocol::ALL {
                let mut ev = sample();
                ev.seq = n;
                ev.interval_start = n;
                ev.interval_end = n;
                ev.bytes_out = n;
                ev.bytes_in = n;
                ev.token_id = if n % 2 == 0 { None } else { Some(n) };
                ev.protocol = p;
                ev.viewer_id = "".into();
                ev.tracking_id = None;
                ev.custom_viewer_data = Some("ü€😀\u{0}".repeat(300).into());
                let msg = codec.encode_to_vec(&ev);
                assert_eq!(codec.decode(&msg).unwrap(), ev, "value {n}");
            }
        }
    }

    #[test]
    fn unknown_fingerprint_is_a_typed_error() {
        let codec = Codec::new();
        let mut msg = codec.encode_to_vec(&sample());
        msg[2] ^= 0xff;
        let err = codec.decode(&msg).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownFingerprint(_)), "{err}");
        assert_eq!(err.reason(), "unknown_fingerprint");
    }

    #[test]
    fn message_of_another_schema_is_unknown() {
        let other = Schema::parse_str(r#"{"type":"record","name":"Other","fields":[{"name":"x","type":"long"}]}"#).unwrap();
        let mut msg = MAGIC.to_vec();
        msg.extend_from_slice(&fingerprint(&other));
        msg.push(2);
        let err = Codec::new().decode(&msg).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownFingerprint(_)));
    }

    #[test]
    fn bad_header_and_trailing_bytes_are_rejected() {
        let codec = Codec::new();
        assert_eq!(codec.decode(&[]).unwrap_err(), DecodeError::TooShort(0));
        assert!(matches!(codec.decode(b"{\"viewer_id\":1}").unwrap_err(), DecodeError::BadMagic(..)));
        let mut msg = codec.encode_to_vec(&sample());
        msg.push(0);
        assert_eq!(codec.decode(&msg).unwrap_err(), DecodeError::TrailingBytes(1));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let codec = Codec::new();
        let msg = codec.encode_to_vec(&sample());
        for n in 0..msg.len() {
            assert!(codec.decode(&msg[..n]).is_err(), "prefix of {n} bytes decoded");
        }
    }

    #[test]
    fn older_writer_schema_is_resolved_to_the_current_one() {
        // A "v0" writer without the three optional fields; the current schema
        // gives them their defaults.
        let v1: serde_json::Value = serde_json::from_str(SCHEMA_VERSIONS[0].1).unwrap();
        assert_eq!(SCHEMA_VERSIONS[0].0, "v1");
        let mut v0 = v1.clone();
        let fields = v0["fields"].as_array_mut().unwrap();
        fields.retain(|f| !["token_id", "tracking_id", "custom_viewer_data"].contains(&f["name"].as_str().unwrap()));
        let v0_text = v0.to_string();
        let codec = Codec::with_versions(&[("v0", &v0_text), ("v1", SCHEMA_VERSIONS[0].1)]).unwrap();
        let v0_schema = &codec.versions()[0].schema;
        let mut r = Record::new(v0_schema).unwrap();
        let ev = sample();
        r.put("viewer_id", "old");
        r.put("seq", 1i64);
        r.put("interval_start", Value::TimestampMillis(ev.interval_start));
        r.put("interval_end", Value::TimestampMillis(ev.interval_end));
        r.put("bytes_out", 10i64);
        r.put("bytes_in", 1i64);
        r.put("account_id", "a");
        r.put("stream_name", "s");
        r.put("cluster", "c");
        r.put("server_id", "x");
        r.put("protocol", Value::Enum(2, "RTMP".into()));
        let mut msg = MAGIC.to_vec();
        msg.extend_from_slice(&codec.versions()[0].fingerprint);
        msg.extend(apache_avro::to_avro_datum(v0_schema, r).unwrap());
        let back = codec.decode(&msg).unwrap();
        assert_eq!(back.viewer_id, "old");
        assert_eq!(back.bytes_out, 10);
        assert_eq!(back.protocol, Protocol::Rtmp);
        assert_eq!((back.token_id, back.tracking_id, back.custom_viewer_data), (None, None, None));
    }

    fn any_event() -> impl Strategy<Value = ViewerUsage<'static>> {
        let s = || any::<String>().prop_map(Cow::Owned);
        (
            (s(), any::<i64>(), any::<i64>(), any::<i64>(), any::<i64>(), any::<i64>()),
            (s(), s(), s(), s(), 0usize..5),
            (proptest::option::of(any::<i64>()), proptest::option::of(s()), proptest::option::of(s())),
        )
            .prop_map(|((viewer_id, seq, a, b, o, i), (acc, st, cl, sv, p), (tok, tr, cvd))| ViewerUsage {
                viewer_id,
                seq,
                interval_start: a,
                interval_end: b,
                bytes_out: o,
                bytes_in: i,
                account_id: acc,
                stream_name: st,
                cluster: cl,
                server_id: sv,
                protocol: Protocol::ALL[p],
                token_id: tok,
                tracking_id: tr,
                custom_viewer_data: cvd,
            })
    }

    proptest! {
        #[test]
        fn encoding_equals_apache_avro_and_round_trips(ev in any_event()) {
            let codec = Codec::new();
            let msg = codec.encode_to_vec(&ev);
            prop_assert_eq!(&msg[HEADER_LEN..], &generic_encode(&codec.current().schema, &ev)[..]);
            prop_assert_eq!(codec.decode(&msg).unwrap(), ev);
        }

        #[test]
        fn random_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let codec = Codec::new();
            let mut msg = codec.encode_to_vec(&sample())[..HEADER_LEN].to_vec();
            msg.extend(&body);
            let _ = codec.decode(&msg);
            let _ = codec.decode(&body);
        }

        #[test]
        fn corrupted_messages_never_panic(pos in 0usize..60, byte in any::<u8>()) {
            let codec = Codec::new();
            let mut msg = codec.encode_to_vec(&sample());
            let pos = pos % msg.len();
            msg[pos] = byte;
            let _ = codec.decode(&msg);
        }
    }
}
