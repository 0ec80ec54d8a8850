//! The media-server simulator: deterministic syndicated viewing for a seed.
//!
//! An account broadcasts `streams` live streams; `partners` syndication
//! partners (tracking ids) each bring `viewers_per_partner` viewers, some
//! with `custom_viewer_data`; `untracked_viewers` watch without a tracking
//! id. Every viewer has 1 to 3 sessions (connections, each its own
//! `viewer_id`) at random times in the period, each on a cluster, protocol
//! and bitrate profile, and reports every `report_interval_secs`.
//!
//! Faults on request: duplicate re-sends (same `viewer_id`, `seq`),
//! out-of-order delivery, late events (held back to the end of the run),
//! invalid events, and (Kafka target only) undecodable poison messages.
//!
//! [`Expected`] holds the exact totals of the unique valid events.

use chrono::{DateTime, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schemas::{OwnedViewerUsage, Protocol, ViewerUsage};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

/// What to simulate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimConfig {
    /// Seed of the random generator: the same seed and settings send the same messages. Default 1.
    pub seed: u64,
    /// Prefix of every `viewer_id`; distinct runs on one topic need distinct ones.
    pub run_id: String,
    /// Account that owns every stream (each event's `account_id`). Default `acct-demo`.
    pub account_id: String,
    /// Syndication partners, one tracking id each, when `tracking_ids` is empty. Default 3.
    pub partners: usize,
    /// Viewers each partner brings, each with 1 to 3 sessions. Default 20.
    pub viewers_per_partner: usize,
    /// Viewers without a tracking id. Default 5.
    pub untracked_viewers: usize,
    /// Live streams of the account (`live-0`, `live-1`, ...), one picked at random per session. Default 2.
    pub streams: usize,
    /// Start of the simulated period, epoch ms (UTC).
    pub start_ms: i64,
    /// Length of the simulated period, seconds.
    pub duration_secs: u64,
    /// Seconds between two reports of a session: each event's interval (a
    /// session's last one is shorter). Default 10.
    pub report_interval_secs: u32,
    /// Session length range, seconds.
    pub session_secs: (u64, u64),
    /// Fraction of events sent twice.
    pub duplicates: f64,
    /// Fraction of events delivered after their successor.
    pub out_of_order: f64,
    /// Fraction of events held back until the end of the run.
    pub late: f64,
    /// Fraction of extra invalid events (never counted).
    pub invalid: f64,
    /// Fraction of extra undecodable messages (Kafka target only).
    pub poison: f64,
    /// Tracking ids of the partners; generated when empty.
    pub tracking_ids: Vec<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            run_id: String::new(),
            account_id: "acct-demo".into(),
            partners: 3,
            viewers_per_partner: 20,
            untracked_viewers: 5,
            streams: 2,
            start_ms: Self::default_start().timestamp_millis(),
            duration_secs: 3600,
            report_interval_secs: 10,
            session_secs: (120, 1800),
            duplicates: 0.0,
            out_of_order: 0.0,
            late: 0.0,
            invalid: 0.0,
            poison: 0.0,
            tracking_ids: vec![],
        }
    }
}

const PARTNER_NAMES: &[&str] = &["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka", "tyrell", "cyberdyne"];
const CLUSTERS: &[&str] = &["fra-1", "iad-1", "sin-1", "gru-1"];
/// Bitrate profiles, bits per second.
const BITRATES: &[u64] = &[500_000, 1_500_000, 3_000_000, 6_000_000];

impl SimConfig {
    /// 2026-10-01T00:00:00Z, the default simulated period start.
    pub fn default_start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap()
    }

    /// The partners' tracking ids: `tracking_ids` when set, else `partners`
    /// ids made from a fixed list of names (`acme-web`, `globex-web`, ...).
    pub fn tracking_ids(&self) -> Vec<String> {
        if !self.tracking_ids.is_empty() {
            return self.tracking_ids.clone();
        }
        (0..self.partners)
            .map(|i| {
                let base = PARTNER_NAMES[i % PARTNER_NAMES.len()];
                if i < PARTNER_NAMES.len() {
                    format!("{base}-web")
                } else {
                    format!("{base}-{}", i / PARTNER_NAMES.len())
                }
            })
            .collect()
    }

    fn run_prefix(&self) -> String {
        if self.run_id.is_empty() {
            format!("s{}", self.seed)
        } else {
            self.run_id.clone()
        }
    }
}

/// One viewing session (one connection).
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub viewer_id: String,
    pub tracking_id: Option<String>,
    pub custom_viewer_data: Option<String>,
    pub stream_name: String,
    pub cluster: &'static str,
    pub server_id: String,
    pub protocol: Protocol,
    pub bitrate: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub token_id: Option<i64>,
}

/// The sessions of a simulation, in a deterministic order.
pub(crate) fn sessions(cfg: &SimConfig) -> Vec<Session> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let prefix = cfg.run_prefix();
    let tracking = cfg.tracking_ids();
    let end_of_period = cfg.start_ms + cfg.duration_secs as i64 * 1000;
    let mut out = Vec::new();
    let viewers: Vec<(Option<&String>, usize)> = tracking
        .iter()
        .flat_map(|t| (0..cfg.viewers_per_partner).map(move |v| (Some(t), v)))
        .chain((0..cfg.untracked_viewers).map(|v| (None, v)))
        .collect();
    for (t, v) in viewers {
        let cvd = match t {
            Some(_) if rng.gen_bool(0.7) => {
                Some(format!("{{\"user\":\"u{v}\",\"plan\":\"{}\"}}", ["free", "premium", "family"][rng.gen_range(0..3)]))
            }
            _ => None,
        };
        let n_sessions = rng.gen_range(1..=3);
        for s in 0..n_sessions {
            let len_ms = rng.gen_range(cfg.session_secs.0..=cfg.session_secs.1.max(cfg.session_secs.0)) as i64 * 1000;
            let start_ms = cfg.start_ms + rng.gen_range(0..cfg.duration_secs.max(1)) as i64 * 1000;
            let cluster = CLUSTERS[rng.gen_range(0..CLUSTERS.len())];
            out.push(Session {
                viewer_id: format!("{prefix}-{}-{v}-{s}", t.map(String::as_str).unwrap_or("untracked")),
                tracking_id: t.cloned(),
                custom_viewer_data: cvd.clone(),
                stream_name: format!("live-{}", rng.gen_range(0..cfg.streams.max(1))),
                cluster,
                server_id: format!("{cluster}-media-{}", rng.gen_range(1..=4)),
                protocol: Protocol::ALL[rng.gen_range(0..4)],
                bitrate: BITRATES[rng.gen_range(0..BITRATES.len())],
                start_ms,
                end_ms: (start_ms + len_ms).min(end_of_period),
                token_id: t.map(|_| 1000 + rng.gen_range(0..10)),
            });
        }
    }
    out
}

/// One message the simulator sends.
#[derive(Debug, Clone)]
pub enum SimMessage {
    /// First copy of a valid event: counted.
    Valid(OwnedViewerUsage),
    /// A re-send of an event already sent: not counted again.
    Duplicate(OwnedViewerUsage),
    /// An event that breaks a contract rule: never counted.
    Invalid(OwnedViewerUsage),
    /// Bytes that are not a decodable event (Kafka only).
    Poison(Vec<u8>),
}

/// Iterator over the simulation's messages in send order.
pub struct Messages {
    cfg: SimConfig,
    sessions: Vec<Session>,
    heap: BinaryHeap<Reverse<(i64, usize, i64)>>, // (report time, session, seq)
    rng: ChaCha8Rng,
    ready: VecDeque<SimMessage>,
    held_late: Vec<SimMessage>,
    swapped: Option<SimMessage>,
    resend: Vec<(u64, OwnedViewerUsage)>,
    produced: u64,
    invalid_n: u64,
    done: bool,
    /// Event time of the last report taken from the heap (progress).
    pub sim_time_ms: i64,
}

impl Messages {
    /// The messages of the simulation `cfg` describes, in send order.
    pub fn new(cfg: &SimConfig) -> Self {
        Self::with_sessions(cfg, sessions(cfg))
    }

    /// Messages of the given sessions (e.g. after token admission dropped some).
    pub(crate) fn with_sessions(cfg: &SimConfig, sessions: Vec<Session>) -> Self {
        let heap = sessions.iter().enumerate().filter(|(_, s)| s.end_ms > s.start_ms).map(|(i, s)| Reverse((s.start_ms, i, 0))).collect();
        Messages {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_f00d),
            cfg: cfg.clone(),
            sessions,
            heap,
            ready: VecDeque::new(),
            held_late: vec![],
            swapped: None,
            resend: vec![],
            produced: 0,
            invalid_n: 0,
            done: false,
            sim_time_ms: cfg.start_ms,
        }
    }

    fn report(&mut self, t: i64, si: usize, seq: i64) -> OwnedViewerUsage {
        let s = &self.sessions[si];
        let step = self.cfg.report_interval_secs as i64 * 1000;
        let end = (t + step).min(s.end_ms);
        let ms = (end - t) as u64;
        let nominal = s.bitrate * ms / 8000;
        let jitter = self.rng.gen_range(900..=1100u64);
        let bytes_out = nominal * jitter / 1000;
        if end < s.end_ms {
            self.heap.push(Reverse((end, si, seq + 1)));
        }
        ViewerUsage {
            viewer_id: Cow::Owned(s.viewer_id.clone()),
            seq,
            interval_start: t,
            interval_end: end,
            bytes_out: bytes_out as i64,
            bytes_in: (bytes_out / 100 + self.rng.gen_range(0..200)) as i64,
            account_id: Cow::Owned(self.cfg.account_id.clone()),
            stream_name: Cow::Owned(s.stream_name.clone()),
            cluster: Cow::Borrowed(s.cluster),
            server_id: Cow::Owned(s.server_id.clone()),
            protocol: s.protocol,
            token_id: s.token_id,
            tracking_id: s.tracking_id.clone().map(Cow::Owned),
            custom_viewer_data: s.custom_viewer_data.clone().map(Cow::Owned),
        }
    }

    fn invalid_event(&mut self, base: &OwnedViewerUsage) -> OwnedViewerUsage {
        self.invalid_n += 1;
        let mut ev = base.clone();
        ev.viewer_id = Cow::Owned(format!("{}-invalid-{}", self.cfg.run_prefix(), self.invalid_n));
        match self.invalid_n % 4 {
            0 => ev.bytes_out = -1,
            1 => ev.interval_end = ev.interval_start - 1,
            2 => ev.tracking_id = Some(Cow::Owned("x".repeat(129))),
            _ => ev.account_id = Cow::Borrowed(""),
        }
        ev
    }

    /// Generate the next batch of ready messages; false when the heap is empty.
    fn step(&mut self) -> bool {
        let Some(Reverse((t, si, seq))) = self.heap.pop() else { return false };
        self.sim_time_ms = t;
        let ev = self.report(t, si, seq);
        self.produced += 1;
        // due re-sends
        let now = self.produced;
        let mut i = 0;
        while i < self.resend.len() {
            if self.resend[i].0 <= now {
                let (_, d) = self.resend.swap_remove(i);
                self.ready.push_back(SimMessage::Duplicate(d));
            } else {
                i += 1;
            }
        }
        if self.rng.gen_bool(self.cfg.duplicates.clamp(0.0, 1.0)) {
            let delay = self.rng.gen_range(0..200u64);
            self.resend.push((now + delay, ev.clone()));
        }
        if self.rng.gen_bool(self.cfg.invalid.clamp(0.0, 1.0)) {
            let bad = self.invalid_event(&ev);
            self.ready.push_back(SimMessage::Invalid(bad));
        }
        if self.rng.gen_bool(self.cfg.poison.clamp(0.0, 1.0)) {
            let mut junk = vec![0xC3, 0x01];
            junk.extend((0..self.rng.gen_range(0..40)).map(|_| self.rng.gen::<u8>()));
            self.ready.push_back(SimMessage::Poison(junk));
        }
        let msg = SimMessage::Valid(ev);
        if self.rng.gen_bool(self.cfg.late.clamp(0.0, 1.0)) {
            self.held_late.push(msg);
        } else if let Some(prev) = self.swapped.take() {
            self.ready.push_back(msg);
            self.ready.push_back(prev);
        } else if self.rng.gen_bool(self.cfg.out_of_order.clamp(0.0, 1.0)) {
            self.swapped = Some(msg);
        } else {
            self.ready.push_back(msg);
        }
        true
    }
}

impl Iterator for Messages {
    type Item = SimMessage;

    fn next(&mut self) -> Option<SimMessage> {
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Some(m);
            }
            if self.done {
                return None;
            }
            if !self.step() {
                self.done = true;
                self.ready.extend(self.swapped.take());
                self.ready.extend(self.resend.drain(..).map(|(_, d)| SimMessage::Duplicate(d)));
                self.ready.extend(self.held_late.drain(..));
            }
        }
    }
}

/// Totals of one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Sum of the events' `bytes_out`: the billed bytes.
    pub bytes_out: u64,
    /// Sum of the events' `bytes_in`.
    pub bytes_in: u64,
    /// How many events.
    pub events: u64,
}

impl Totals {
    fn add(&mut self, ev: &ViewerUsage<'_>) {
        self.bytes_out += ev.bytes_out as u64;
        self.bytes_in += ev.bytes_in as u64;
        self.events += 1;
    }
}

/// Per-viewer (connection) totals with its attribution.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewerTotals {
    /// The viewer's tracking id; `""` when untracked.
    pub tracking_id: String,
    /// The viewer's `custom_viewer_data`; `""` when it has none.
    pub custom_viewer_data: String,
    /// The stream it watched.
    pub stream_name: String,
    /// Earliest `interval_start` of the viewer's events, epoch ms (with
    /// `last_start_ms`: the session's bounds, for viewer records).
    #[serde(default)]
    pub first_start_ms: i64,
    /// Latest `interval_start` of the viewer's events, epoch ms.
    #[serde(default)]
    pub last_start_ms: i64,
    /// Its bytes and events (flattened into this object in JSON).
    #[serde(flatten)]
    pub totals: Totals,
}

impl ViewerTotals {
    fn span(&mut self, start_ms: i64, first: bool) {
        self.first_start_ms = if first { start_ms } else { self.first_start_ms.min(start_ms) };
        self.last_start_ms = if first { start_ms } else { self.last_start_ms.max(start_ms) };
    }
}

/// Exact expected totals of the unique valid events a run sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    /// Messages sent, of every kind (poison only to Kafka: none is sent to the gateway).
    pub messages_sent: u64,
    /// Valid events sent for the first time: what the pipeline must count, each once.
    pub unique_valid_events: u64,
    /// Re-sends of a valid event already sent (same `viewer_id` and `seq`): never counted again.
    pub duplicates_sent: u64,
    /// Events that break a contract rule: never counted (the gateway answers 400; from Kafka, dead letters).
    pub invalid_sent: u64,
    /// Undecodable messages (Kafka only): dead letters, never counted.
    pub poison_sent: u64,
    /// Totals of the unique valid events.
    pub total: Totals,
    /// By tracking id (`""` = untracked).
    pub by_tracking: BTreeMap<String, Totals>,
    /// By viewer_id.
    pub by_viewer: BTreeMap<String, ViewerTotals>,
    /// By hour (RFC 3339, UTC) then tracking id.
    pub by_hour: BTreeMap<String, BTreeMap<String, Totals>>,
    /// By UTC day (YYYY-MM-DD) then tracking id.
    pub by_day: BTreeMap<String, BTreeMap<String, Totals>>,
}

impl Expected {
    /// Account for one sent message.
    pub fn record(&mut self, m: &SimMessage) {
        self.messages_sent += 1;
        match m {
            SimMessage::Valid(ev) => {
                self.unique_valid_events += 1;
                let t = ev.tracking_id_or_empty().to_string();
                self.total.add(ev);
                self.by_tracking.entry(t.clone()).or_default().add(ev);
                let v = self.by_viewer.entry(ev.viewer_id.to_string()).or_insert_with(|| ViewerTotals {
                    tracking_id: t.clone(),
                    custom_viewer_data: ev.custom_viewer_data_or_empty().to_string(),
                    stream_name: ev.stream_name.to_string(),
                    ..Default::default()
                });
                v.span(ev.interval_start, v.totals.events == 0);
                v.totals.add(ev);
                let hour = hour_key(ev.interval_start);
                self.by_hour.entry(hour.clone()).or_default().entry(t.clone()).or_default().add(ev);
                self.by_day.entry(hour[..10].to_string()).or_default().entry(t).or_default().add(ev);
            }
            SimMessage::Duplicate(_) => self.duplicates_sent += 1,
            SimMessage::Invalid(_) => self.invalid_sent += 1,
            SimMessage::Poison(_) => self.poison_sent += 1,
        }
    }

    /// Merge another run's totals (runs with distinct `run_id`s).
    pub fn merge(&mut self, o: &Expected) {
        fn add(a: &mut Totals, b: &Totals) {
            a.bytes_out += b.bytes_out;
            a.bytes_in += b.bytes_in;
            a.events += b.events;
        }
        self.messages_sent += o.messages_sent;
        self.unique_valid_events += o.unique_valid_events;
        self.duplicates_sent += o.duplicates_sent;
        self.invalid_sent += o.invalid_sent;
        self.poison_sent += o.poison_sent;
        add(&mut self.total, &o.total);
        for (k, v) in &o.by_tracking {
            add(self.by_tracking.entry(k.clone()).or_default(), v);
        }
        for (k, v) in &o.by_viewer {
            let e = self.by_viewer.entry(k.clone()).or_insert_with(|| ViewerTotals { totals: Totals::default(), ..v.clone() });
            if v.totals.events > 0 {
                e.span(v.first_start_ms, e.totals.events == 0);
                e.span(v.last_start_ms, false);
            }
            add(&mut e.totals, &v.totals);
        }
        for (map, other) in [(&mut self.by_hour, &o.by_hour), (&mut self.by_day, &o.by_day)] {
            for (h, m) in other {
                for (k, v) in m {
                    add(map.entry(h.clone()).or_default().entry(k.clone()).or_default(), v);
                }
            }
        }
    }
}

fn hour_key(ms: i64) -> String {
    let h = ms.div_euclid(3_600_000) * 3_600_000;
    DateTime::<Utc>::from_timestamp_millis(h).map(|t| t.format("%Y-%m-%dT%H:00:00Z").to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn cfg() -> SimConfig {
        SimConfig { duplicates: 0.05, out_of_order: 0.05, late: 0.02, invalid: 0.01, poison: 0.01, ..Default::default() }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a: Vec<String> = Messages::new(&cfg()).map(|m| format!("{m:?}")).collect();
        let b: Vec<String> = Messages::new(&cfg()).map(|m| format!("{m:?}")).collect();
        assert_eq!(a, b);
        let c: Vec<String> = Messages::new(&SimConfig { seed: 2, ..cfg() }).map(|m| format!("{m:?}")).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn expected_counts_each_identity_once_and_faults_are_present() {
        let mut exp = Expected::default();
        let mut seen = HashSet::new();
        let mut recount = Totals::default();
        let mut out_of_order = 0;
        let mut last_seq: BTreeMap<String, i64> = BTreeMap::new();
        let mut dups = Vec::new();
        for m in Messages::new(&cfg()) {
            exp.record(&m);
            match &m {
                SimMessage::Valid(ev) => {
                    assert!(schemas::validate(ev, None).is_ok());
                    assert!(seen.insert((ev.viewer_id.to_string(), ev.seq)), "valid identity twice");
                    recount.add(ev);
                    let l = last_seq.entry(ev.viewer_id.to_string()).or_insert(-1);
                    if ev.seq < *l {
                        out_of_order += 1;
                    }
                    *l = (*l).max(ev.seq);
                }
                SimMessage::Duplicate(ev) => dups.push((ev.viewer_id.to_string(), ev.seq)),
                SimMessage::Invalid(ev) => assert!(schemas::validate(ev, None).is_err()),
                SimMessage::Poison(b) => assert!(schemas::Codec::new().decode(b).is_err()),
            }
        }
        assert!(!dups.is_empty());
        assert!(dups.iter().all(|d| seen.contains(d)), "every duplicate re-sends a valid event");
        assert_eq!(exp.total, recount);
        assert_eq!(exp.by_tracking.values().map(|t| t.bytes_out).sum::<u64>(), recount.bytes_out);
        assert_eq!(exp.by_viewer.values().map(|t| t.totals.bytes_out).sum::<u64>(), recount.bytes_out);
        assert!(exp.duplicates_sent > 0 && exp.invalid_sent > 0 && exp.poison_sent > 0);
        assert!(out_of_order > 0);
        assert!(exp.by_tracking.contains_key(""), "untracked viewers present");
        assert_eq!(exp.by_tracking.len(), 4);
    }
}
