//! Row values shared by the hot path (`state`), the dedup state (`dedup`)
//! and the table encoders (`tables`). A leaf: it depends on no other module
//! of the crate.

use schemas::Protocol;

/// Interned string id, valid until the next flush cut.
pub(crate) type Sym = u32;

/// No row (the viewer's cache points nowhere yet).
pub(crate) const NO_ROW: u32 = u32::MAX;

/// Partial sums of one aggregate row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    pub(crate) bytes_out: u64,
    pub(crate) bytes_in: u64,
    pub(crate) events: u64,
}

impl Sums {
    /// Add one event's bytes; `false` (and nothing added) when a sum would
    /// overflow. The caller then starts another partial row for the same key:
    /// rows are partial sums, so a key may have several.
    #[inline]
    #[must_use]
    pub fn try_add(&mut self, bytes_out: i64, bytes_in: i64) -> bool {
        // validated: 0 <= bytes <= the per-event maximum
        let (Ok(o), Ok(i)) = (u64::try_from(bytes_out), u64::try_from(bytes_in)) else {
            return false;
        };
        match (self.bytes_out.checked_add(o), self.bytes_in.checked_add(i), self.events.checked_add(1)) {
            (Some(o), Some(i), Some(e)) => {
                *self = Sums { bytes_out: o, bytes_in: i, events: e };
                true
            }
            _ => false,
        }
    }
}

/// A poison or rejected record, waiting for the dead-letter table.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The record's Kafka timestamp (seconds): replays write the same value.
    pub received_at: u32,
    pub(crate) offset: i64,
    pub(crate) reason: String,
    pub(crate) payload: Vec<u8>,
}

/// Where a viewer's last event went, kept in the viewer's dedup entry so the
/// viewer's next event (usually the same window and attributes) skips the
/// interning and both row lookups: the event's strings are compared with the
/// cached ones instead of hashed. Valid only for the accumulation it was
/// made in (`generation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowCache {
    pub(crate) generation: u32,
    pub(crate) window: u32,
    pub(crate) protocol: Protocol,
    /// tracking, account, stream, cluster, custom viewer data
    pub(crate) syms: [Sym; 5],
    pub(crate) tracking_row: u32,
    pub(crate) viewer_row: u32,
}

impl Default for RowCache {
    fn default() -> Self {
        RowCache { generation: 0, window: 0, protocol: Protocol::Webrtc, syms: [0; 5], tracking_row: NO_ROW, viewer_row: NO_ROW }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_refuse_to_overflow() {
        let mut s = Sums { bytes_out: u64::MAX - 5, bytes_in: 0, events: 1 };
        assert!(s.try_add(5, 1));
        assert_eq!(s, Sums { bytes_out: u64::MAX, bytes_in: 1, events: 2 });
        assert!(!s.try_add(1, 0), "one more byte would wrap");
        assert_eq!(s, Sums { bytes_out: u64::MAX, bytes_in: 1, events: 2 }, "nothing half-added");
        assert!(!Sums::default().try_add(-1, 0), "negative bytes are not added");
        let mut s = Sums { bytes_out: 0, bytes_in: u64::MAX, events: 0 };
        assert!(!s.try_add(0, 1));
    }
}
