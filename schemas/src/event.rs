//! The usage event (`media.metering.v1.ViewerUsage`) as a Rust type.
//!
//! One type serves both the zero-copy hot path (strings borrowed from the Kafka
//! payload) and owned use (JSON ingest, the simulator): string fields are
//! `Cow<'a, str>`. Times are UTC epoch milliseconds, bytes are `i64` as in the
//! Avro schema (validation rejects negatives).

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// Transport protocol of the viewer connection (Avro enum `Protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// `WEBRTC`: WebRTC, negotiated other than by WHEP.
    Webrtc,
    /// `WHEP`: WebRTC playback negotiated over WHEP (WebRTC-HTTP Egress Protocol).
    Whep,
    /// `RTMP`: Real-Time Messaging Protocol.
    Rtmp,
    /// `SRT`: Secure Reliable Transport.
    Srt,
    /// `OTHER`: any other protocol; the schema's default.
    #[default]
    Other,
}

impl Protocol {
    /// All symbols in schema order; the index is the Avro enum index.
    pub const ALL: [Protocol; 5] = [Protocol::Webrtc, Protocol::Whep, Protocol::Rtmp, Protocol::Srt, Protocol::Other];

    /// The Avro symbol, also the value written to ClickHouse.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Webrtc => "WEBRTC",
            Protocol::Whep => "WHEP",
            Protocol::Rtmp => "RTMP",
            Protocol::Srt => "SRT",
            Protocol::Other => "OTHER",
        }
    }

    /// Avro enum index of this symbol.
    pub fn index(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_index(i: i64) -> Option<Protocol> {
        usize::try_from(i).ok().and_then(|i| Self::ALL.get(i).copied())
    }

    /// The protocol of Avro symbol `s` (`WHEP`, ...; exact case); `None` for an unknown symbol.
    pub fn from_symbol(s: &str) -> Option<Protocol> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes exchanged with one viewer connection during one reporting interval.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ViewerUsage<'a> {
    /// Connection id assigned by the media server, unique per viewer connection; the record's Kafka key.
    pub viewer_id: Cow<'a, str>,
    /// Report number within the connection: 0 for the first, +1 for each next; `(viewer_id, seq)` identifies the event. Never negative.
    pub seq: i64,
    /// Inclusive start of the interval, UTC epoch milliseconds.
    pub interval_start: i64,
    /// Exclusive end of the interval, UTC epoch milliseconds.
    pub interval_end: i64,
    /// Egress bytes sent to the viewer in the interval: what is billed. Never negative.
    pub bytes_out: i64,
    /// Ingress bytes received from the viewer in the interval (RTCP, data channel). Never negative.
    pub bytes_in: i64,
    /// Account that owns the stream (the content owner).
    pub account_id: Cow<'a, str>,
    /// Name of the stream the viewer watches, within `account_id`.
    pub stream_name: Cow<'a, str>,
    /// Origin cluster region of the stream, e.g. `fra-1`.
    pub cluster: Cow<'a, str>,
    /// Media server instance that measured the bytes.
    pub server_id: Cow<'a, str>,
    /// Transport protocol of the viewer connection.
    pub protocol: Protocol,
    /// Id of the Subscribe token the viewer connected with (the parent token, for a self-signed one), if any.
    pub token_id: Option<i64>,
    /// Distribution channel (syndication partner) the viewer is attributed to; `None` for untracked viewers. At most 128 characters.
    pub tracking_id: Option<Cow<'a, str>>,
    /// Opaque per-viewer attribution set by the distributor in a self-signed token; at most 1024 characters.
    pub custom_viewer_data: Option<Cow<'a, str>>,
}

/// An event that owns its strings.
pub type OwnedViewerUsage = ViewerUsage<'static>;

impl ViewerUsage<'_> {
    /// Detach from the buffer the event was decoded from.
    pub fn into_owned(self) -> OwnedViewerUsage {
        fn own(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        ViewerUsage {
            viewer_id: own(self.viewer_id),
            seq: self.seq,
            interval_start: self.interval_start,
            interval_end: self.interval_end,
            bytes_out: self.bytes_out,
            bytes_in: self.bytes_in,
            account_id: own(self.account_id),
            stream_name: own(self.stream_name),
            cluster: own(self.cluster),
            server_id: own(self.server_id),
            protocol: self.protocol,
            token_id: self.token_id,
            tracking_id: self.tracking_id.map(own),
            custom_viewer_data: self.custom_viewer_data.map(own),
        }
    }

    /// `tracking_id` as stored in ClickHouse: `""` for untracked viewers.
    pub fn tracking_id_or_empty(&self) -> &str {
        self.tracking_id.as_deref().unwrap_or("")
    }

    /// `custom_viewer_data` as stored in ClickHouse: `""` when absent.
    pub fn custom_viewer_data_or_empty(&self) -> &str {
        self.custom_viewer_data.as_deref().unwrap_or("")
    }

    /// Start of the tumbling window (of `width_ms`) that contains `interval_start`,
    /// aligned to multiples of the width since the Unix epoch.
    pub fn window_start_ms(&self, width_ms: i64) -> i64 {
        window_start_ms(self.interval_start, width_ms)
    }
}

/// Round `t_ms` down to a multiple of `width_ms` (floor, also for negative times).
pub fn window_start_ms(t_ms: i64, width_ms: i64) -> i64 {
    t_ms.div_euclid(width_ms) * width_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_round_down_to_the_width() {
        assert_eq!(window_start_ms(0, 60_000), 0);
        assert_eq!(window_start_ms(59_999, 60_000), 0);
        assert_eq!(window_start_ms(60_000, 60_000), 60_000);
        assert_eq!(window_start_ms(1_764_251_999_999, 3_600_000), 1_764_248_400_000);
        assert_eq!(window_start_ms(-1, 60_000), -60_000);
    }

    #[test]
    fn protocol_symbols_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(Protocol::from_index(p.index() as i64), Some(p));
            assert_eq!(Protocol::from_symbol(p.as_str()), Some(p));
        }
        assert_eq!(Protocol::from_index(5), None);
        assert_eq!(Protocol::from_index(-1), None);
    }
}
