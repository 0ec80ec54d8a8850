//! Health checks that cost a dependency at most one probe per interval,
//! however often `/healthz` and `/readyz` are asked (load balancers,
//! monitoring, or someone flooding an endpoint that needs no credential).

use std::future::Future;
use std::time::{Duration, Instant};

/// The last result of a probe, reused for `ttl`; one probe at a time.
pub struct Probe {
    ttl: Duration,
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Probe {
    pub(crate) fn new(ttl: Duration) -> Self {
        Probe { ttl, last: tokio::sync::Mutex::new(None) }
    }

    /// The cached result when younger than the ttl, else `probe()`'s.
    pub async fn check<F, Fut>(&self, probe: F) -> Result<(), String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, r)) = last.as_ref() {
            if at.elapsed() < self.ttl {
                return r.clone();
            }
        }
        let r = probe().await;
        *last = Some((Instant::now(), r.clone()));
        r
    }

    /// Record a result learnt otherwise (a successful request proves the
    /// dependency up, as a probe would).
    pub async fn set(&self, result: Result<(), String>) {
        *self.last.lock().await = Some((Instant::now(), result));
    }
}

impl Default for Probe {
    /// A probe reused for one second.
    fn default() -> Self {
        Probe::new(Duration::from_secs(1))
    }
}

/// ClickHouse answers a trivial query.
pub async fn clickhouse_ping(client: &clickhouse::Client) -> Result<(), String> {
    client.query("SELECT 1").fetch_one::<u8>().await.map(|_| ()).map_err(|e| format!("clickhouse: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn probes_at_most_once_per_ttl() {
        let p = Probe::new(Duration::from_secs(3600));
        let calls = AtomicU32::new(0);
        for _ in 0..100 {
            let r = p
                .check(|| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("down".to_string())
                })
                .await;
            assert_eq!(r, Err("down".to_string()));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let fresh = Probe::new(Duration::ZERO);
        for _ in 0..3 {
            let _ = fresh
                .check(|| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }
}
