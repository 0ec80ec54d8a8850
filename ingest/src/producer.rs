//! `UsageProducer`: validate, encode (Avro single-object) and produce usage
//! events to Kafka, keyed by `viewer_id`, with an idempotent producer
//! (`enable.idempotence=true`, `acks=all`). For media servers written in Rust,
//! and used by the HTTP gateway and the simulator.
//!
//! ```no_run
//! # async fn f(ev: schemas::ViewerUsage<'_>) -> Result<(), ingest::IngestError> {
//! let producer = ingest::UsageProducer::new(&runtime::kafka::KafkaConfig::default(), Default::default())?;
//! producer.send(&ev).await?; // returns once Kafka acknowledged the event
//! # Ok(()) }
//! ```

use crate::error::IngestError;
use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use runtime::kafka::KafkaConfig;
use schemas::{Codec, ViewerUsage};
use std::time::Duration;

/// How long a producer that stands in for a media server (the simulator, the
/// tests' producers) keeps re-sending an unacknowledged event. The default
/// 10 s suits the gateway, whose HTTP client waits for the answer; a media
/// server keeps trying. On 2 cores, with an aggregator being killed and
/// restarted beside it, tansu has been seen to leave a batch unacknowledged
/// past 10 s (`MessageTimedOut` after 381,495 of a million events in a CI
/// run).
pub const MEDIA_SERVER_DELIVERY_TIMEOUT: Duration = Duration::from_secs(180);

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// Give up on an unacknowledged event after this long (`message.timeout.ms`).
    pub delivery_timeout: Duration,
    /// Validate `interval_end` against the local clock (5 minutes of skew allowed).
    pub check_clock: bool,
    /// librdkafka `linger.ms`: batching delay.
    pub linger_ms: u32,
    /// Per-event maximum of `bytes_out` and `bytes_in`.
    pub max_event_bytes: i64,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            delivery_timeout: Duration::from_secs(10),
            check_clock: true,
            linger_ms: 5,
            max_event_bytes: schemas::validate::DEFAULT_MAX_EVENT_BYTES,
        }
    }
}

/// Validates, encodes and produces usage events.
#[derive(Clone)]
pub struct UsageProducer {
    producer: FutureProducer,
    topic: String,
    codec: Codec,
    opts: ProducerOptions,
}

impl UsageProducer {
    /// A producer to `kafka.topic` (idempotent, `acks=all`; `kafka.properties`
    /// applied last). No broker is contacted yet: fails only on settings
    /// librdkafka refuses ([`IngestError::Kafka`]).
    pub fn new(kafka: &KafkaConfig, opts: ProducerOptions) -> Result<Self, IngestError> {
        let mut c = kafka.client_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", opts.delivery_timeout.as_millis().to_string())
            .set("linger.ms", opts.linger_ms.to_string())
            .set("queue.buffering.max.messages", "1000000")
            .set("batch.num.messages", "10000")
            .set("compression.type", "none");
        let producer: FutureProducer = kafka.finish(c).create()?;
        Ok(UsageProducer { producer, topic: kafka.topic.clone(), codec: Codec::new(), opts })
    }

    /// The Kafka topic every event is produced to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The Avro single-object codec events are encoded with (the current
    /// writer schema), for callers that encode themselves ([`Self::send_encoded`]).
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// Check an event against the contract (and the clock, if configured).
    pub fn validate(&self, ev: &ViewerUsage<'_>) -> Result<(), IngestError> {
        let now = self.opts.check_clock.then(|| chrono::Utc::now().timestamp_millis());
        schemas::validate_with(ev, &schemas::Rules { now_ms: now, max_event_bytes: self.opts.max_event_bytes })
            .map_err(IngestError::Invalid)
    }

    /// Validate, encode and produce one event; resolves when Kafka acknowledged it.
    pub async fn send(&self, ev: &ViewerUsage<'_>) -> Result<(), IngestError> {
        self.validate(ev)?;
        let payload = self.codec.encode_to_vec(ev);
        self.send_encoded(&ev.viewer_id, &payload).await
    }

    /// Produce an already encoded message with key `viewer_id`.
    pub async fn send_encoded(&self, viewer_id: &str, payload: &[u8]) -> Result<(), IngestError> {
        let record = FutureRecord::to(&self.topic).key(viewer_id).payload(payload);
        match self.producer.send(record, Timeout::After(self.opts.delivery_timeout)).await {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(IngestError::Kafka(e)),
        }
    }

    /// Validate all events first; if one is invalid, produce none and return
    /// the errors by index. Otherwise produce all and wait for every
    /// acknowledgement; `Err` if any was not acknowledged (then some may have
    /// been written: re-sending all is safe).
    pub async fn send_all(&self, events: &[ViewerUsage<'_>]) -> Result<usize, SendAllError> {
        let invalid: Vec<(usize, Vec<schemas::FieldError>)> = events
            .iter()
            .enumerate()
            .filter_map(|(i, ev)| match self.validate(ev) {
                Err(IngestError::Invalid(errs)) => Some((i, errs)),
                _ => None,
            })
            .collect();
        if !invalid.is_empty() {
            return Err(SendAllError::Invalid(invalid));
        }
        let mut buf = Vec::with_capacity(128);
        let futures = events.iter().map(|ev| {
            buf.clear();
            self.codec.encode(ev, &mut buf);
            let record = FutureRecord::to(&self.topic).key(ev.viewer_id.as_ref()).payload(&buf[..]);
            self.producer.send_result(record).map_err(|(e, _)| e)
        });
        let mut pending = Vec::with_capacity(events.len());
        for f in futures {
            match f {
                Ok(f) => pending.push(f),
                Err(e) => {
                    // local queue full or similar: wait for what was queued, then fail
                    let _ = join_all(pending).await;
                    return Err(SendAllError::Kafka(e));
                }
            }
        }
        let mut first_err = None;
        for r in join_all(pending).await {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    first_err.get_or_insert(e);
                }
                Err(_canceled) => {
                    first_err.get_or_insert(KafkaError::Canceled);
                }
            }
        }
        match first_err {
            None => Ok(events.len()),
            Some(e) => Err(SendAllError::Kafka(e)),
        }
    }

    /// Wait until everything queued is acknowledged (or `timeout`).
    pub fn flush(&self, timeout: Duration) -> Result<(), IngestError> {
        self.producer.flush(timeout)?;
        Ok(())
    }

    /// Is a broker reachable? (metadata request)
    pub fn broker_reachable(&self, timeout: Duration) -> bool {
        self.producer.client().fetch_metadata(Some(&self.topic), timeout).is_ok()
    }

    /// The underlying librdkafka producer.
    pub fn inner(&self) -> &FutureProducer {
        &self.producer
    }
}

/// Whether a produce error concerns the record itself (too large, refused
/// as invalid), not the broker's availability: the request that carried it
/// gets a 4xx, and the broker is not marked down.
pub fn is_record_error(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidRecord
                | C::InvalidMessage
                | C::MessageBatchTooLarge
                | C::InvalidArgument
        )
    )
}

/// Why [`UsageProducer::send_all`] did not accept a batch.
#[derive(Debug, thiserror::Error)]
pub enum SendAllError {
    /// Some events break a contract rule; nothing was produced. Holds each
    /// invalid event's index in the batch with its errors.
    #[error("{} invalid events; nothing was produced", .0.len())]
    Invalid(Vec<(usize, Vec<schemas::FieldError>)>),
    /// Kafka did not acknowledge every event (the first error): some may have
    /// been written; re-sending the whole batch is safe.
    #[error("Kafka did not acknowledge every event: {0}")]
    Kafka(KafkaError),
}
