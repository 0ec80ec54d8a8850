//! Kafka connection settings shared by the producers and consumers.

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the usage topic lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated. Use `127.0.0.1`, not `localhost`
    /// (librdkafka may resolve `localhost` to `::1`).
    pub brokers: String,
    /// The usage topic.
    pub topic: String,
    /// Extra librdkafka properties, applied last (e.g. `"security.protocol" = "SASL_SSL"`).
    /// Numbers and booleans are accepted and passed on as text.
    #[serde(deserialize_with = "scalar_map")]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig { brokers: "127.0.0.1:9092".into(), topic: "viewer-usage".into(), properties: BTreeMap::new() }
    }
}

impl KafkaConfig {
    /// A client config with the brokers set; `properties` are applied by [`KafkaConfig::finish`].
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    /// Apply the user's extra properties last, so they win.
    pub fn finish(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

fn scalar_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    let m = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(m.into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::S(s) => s,
                Scalar::I(i) => i.to_string(),
                Scalar::F(f) => f.to_string(),
                Scalar::B(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}
