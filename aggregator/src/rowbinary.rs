//! A minimal writer of ClickHouse's `RowBinary` format, for the few column
//! types the aggregator writes. Rows are encoded once, when a flush batch is
//! cut, and the same bytes are re-sent on retry.

/// Appends `RowBinary` values to a buffer.
#[derive(Debug, Default, Clone)]
pub struct RowBinary {
    pub(crate) buf: Vec<u8>,
    pub(crate) rows: usize,
}

impl RowBinary {
    pub(crate) fn string(&mut self, s: &str) -> &mut Self {
        self.uvarint(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// `DateTime`: seconds since the epoch as UInt32.
    pub fn datetime(&mut self, secs: u32) -> &mut Self {
        self.u32(secs)
    }

    /// `Array(Int64)`.
    pub fn array_i64(&mut self, v: &[i64]) -> &mut Self {
        self.uvarint(v.len() as u64);
        for x in v {
            self.i64(*x);
        }
        self
    }

    /// Mark the end of a row.
    pub fn end_row(&mut self) {
        self.rows += 1;
    }

    fn uvarint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_clickhouse() {
        let mut w = RowBinary::default();
        w.string("ab").u32(1).u64(2).i64(-1).array_i64(&[3]);
        w.end_row();
        assert_eq!(
            w.buf,
            vec![2, b'a', b'b', 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255, 1, 3, 0, 0, 0, 0, 0, 0, 0]
        );
        let mut w = RowBinary::default();
        w.string(&"x".repeat(300));
        assert_eq!(&w.buf[..2], &[0xAC, 0x02]);
        assert_eq!(w.rows, 0);
    }
}
