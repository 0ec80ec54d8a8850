//! `cargo run --release -p metering-bench -- codec [--events N]`
//!
//! Prints a table: stage, the project's figure, a baseline measured in the
//! same process on the same data, and their ratio. Absolute numbers vary
//! between machines and runs; the ratio is what to compare.

use aggregator::dedup::Dedup;
use aggregator::state::{Limits, PartitionState, Thresholds};
use anyhow::Result;
use clap::{Parser, Subcommand};
use ingest::simulate::{Messages, SimConfig, SimMessage};
use schemas::Codec;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "bench", about = "Pipeline benchmarks against same-run baselines")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Memory of the dedup state with N distinct active viewers (RSS before and after)
    Memory {
        #[arg(long, default_value_t = 1_000_000)]
        viewers: usize,
    },
    /// Decode + window update of single-object events on one core, vs apache-avro's generic decode
    Codec {
        /// Events to generate
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Repetitions (best is reported)
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Codec { events, rounds } => codec(events, rounds),
        Cmd::Memory { viewers } => memory(viewers),
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn memory(viewers: usize) -> Result<()> {
    let before = rss_kib();
    let mut d = Dedup::new(86_400_000);
    for v in 0..viewers {
        let id = format!("s1-partner-{}-{v}-0", v % 10);
        for seq in 0..30 {
            d.check_and_insert(&id, seq, 1_764_000_000_000 + seq * 10_000);
        }
    }
    d.mark_clean();
    let after = rss_kib();
    println!("| stage | project | baseline | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| dedup state, {viewers} active viewers x 30 reports | {} MiB RSS | {} MiB RSS before | {:.0} bytes/viewer |",
        after / 1024,
        before / 1024,
        (after - before) as f64 * 1024.0 / viewers as f64
    );
    std::hint::black_box(&d);
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown cpu".into());
    format!("{} cores, {cpu}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

fn codec(events: usize, rounds: usize) -> Result<()> {
    let codec = Codec::new();
    // realistic events: the simulator's, many viewers
    let cfg = SimConfig {
        partners: 10,
        viewers_per_partner: 2000,
        untracked_viewers: 1000,
        duration_secs: 6 * 3600,
        session_secs: (600, 3600),
        ..Default::default()
    };
    let msgs: Vec<Vec<u8>> = Messages::new(&cfg)
        .filter_map(|m| match m {
            SimMessage::Valid(ev) => Some(codec.encode_to_vec(&ev)),
            _ => None,
        })
        .take(events)
        .collect();
    let n = msgs.len();
    let bytes: usize = msgs.iter().map(|m| m.len()).sum();
    eprintln!("{n} events, {:.0} bytes each on average; machine: {}", bytes as f64 / n as f64, machine());
    let limits = Limits { window_secs: 60, dedup_horizon_ms: 86_400_000, max_lateness_ms: 35 * 86_400_000, max_future_ms: 3_600_000 };
    let now = 1_900_000_000_000;

    let best = |f: &mut dyn FnMut() -> u64| -> f64 {
        let mut best = f64::MAX;
        for _ in 0..rounds {
            let t = Instant::now();
            std::hint::black_box(f());
            best = best.min(t.elapsed().as_secs_f64());
        }
        best
    };
    // project: the aggregator's hot path (decode, validate, dedup, window update)
    let ours = best(&mut || {
        let mut st = PartitionState::new(0, 0, i64::MIN, Thresholds::default(), Dedup::new(limits.dedup_horizon_ms));
        for (i, m) in msgs.iter().enumerate() {
            st.process(i as i64, m, &codec, &limits, now);
        }
        st.pending_rows() as u64
    });
    // project: decode only
    let decode_only = best(&mut || {
        let mut s = 0u64;
        for m in &msgs {
            s += codec.decode(m).map(|e| e.bytes_out as u64).unwrap_or(0);
        }
        s
    });
    // baseline: apache-avro generic decode of the same bytes (no window update)
    let schema = &codec.current().schema;
    let generic = best(&mut || {
        let mut s = 0u64;
        for m in &msgs {
            let mut body = &m[schemas::codec::HEADER_LEN..];
            if apache_avro::from_avro_datum(schema, &mut body, None).is_ok() {
                s += 1;
            }
        }
        s
    });
    let rate = |secs: f64| n as f64 / secs;
    println!("| stage | project | baseline | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| decode + validate + dedup + window update (1 core) | {:.0} events/s | {:.0} events/s (apache-avro from_avro_datum) | {:.1}x |",
        rate(ours),
        rate(generic),
        generic / ours
    );
    println!(
        "| decode only (1 core) | {:.0} events/s | {:.0} events/s (apache-avro from_avro_datum) | {:.1}x |",
        rate(decode_only),
        rate(generic),
        generic / decode_only
    );
    Ok(())
}
