//! Building the JSON report of a run from its [`TargetRun`]s: [`json_report`] for a benchmark
//! run, [`report_header`] for what every report (a run's, an `slo` search's) starts with, and
//! the figures the text summary prints too ([`rate_check`], [`per_msg`], [`latency_json`]), so
//! that the two cannot disagree. The report's types are in the parent module.

use std::time::SystemTime;

use base64::Engine as _;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

use super::{
    comparison, rate_reached, us, ConfigJson, HistogramConfigJson, JsonReport, LatencyJson,
    PinningJson, ReportHeader, SkippedTarget, TargetInfo, TargetJson, TargetRun, ToolJson, MIB,
    SCHEMA_VERSION,
};
use crate::config::{BenchConfig, Mode};
use crate::host::HostInfo;
use crate::record;

/// Build the JSON report.
pub fn json_report(
    cfg: &BenchConfig,
    host: &HostInfo,
    targets: &[TargetRun],
    skipped: &[SkippedTarget],
    start_time: SystemTime,
    incomplete: bool,
    exit_code: u8,
) -> JsonReport {
    let open = matches!(cfg.load.mode, Mode::Open { .. });
    let targets_json: Vec<TargetJson> = targets
        .iter()
        .map(|t| {
            let (target_rate, achieved_rate_ratio, rate_shortfall) = rate_check(cfg, t);
            TargetJson {
                info: TargetInfo {
                    name: t.name.clone(),
                    address: t.address.to_string(),
                    spawn_command: t.spawn_command.clone(),
                    server_summary: t.server_summary.clone(),
                    server_features: t.server_features.clone(),
                    server_pid: t.server_pid,
                },
                messages: t.totals.messages,
                warmup_messages: t.totals.warmup_messages,
                sent: t.totals.sent,
                aborted: t.totals.aborted,
                unsent: t.totals.unsent,
                bytes: t.totals.messages * cfg.load.size as u64,
                duration_s: t.totals.measured_ns as f64 / 1e9,
                msgs_per_s: t.msgs_per_s(),
                mib_per_s: t.msgs_per_s() * cfg.load.size as f64 / MIB,
                target_rate,
                achieved_rate_ratio,
                rate_shortfall,
                client_bound: !t.client_bound_rounds().is_empty(),
                errors: t.totals.errors,
                error_samples: t.error_samples.clone(),
                latency: latency_json(
                    &t.latency,
                    if open {
                        "intended send time"
                    } else {
                        "send time"
                    },
                ),
                service_time: t
                    .service
                    .as_ref()
                    .map(|h| latency_json(h, "actual send time")),
                send_lateness: t
                    .lateness
                    .as_ref()
                    .map(|h| latency_json(h, "send lateness: actual - intended send time")),
                server_cpu_ns_per_msg: per_msg(t.totals.server_cpu_ns, t.totals.messages),
                client_cpu_ns_per_msg: per_msg(Some(t.totals.client_cpu_ns), t.totals.messages),
                rounds: t.rounds.clone(),
            }
        })
        .collect();
    JsonReport {
        header: report_header(cfg, host, start_time, "run"),
        rate_shortfall: targets_json.iter().any(|t| t.rate_shortfall),
        client_bound: targets_json.iter().any(|t| t.client_bound),
        errors_total: targets_json.iter().map(|t| t.errors.total).sum(),
        targets: targets_json,
        comparison: comparison(targets),
        incomplete,
        skipped: skipped.to_vec(),
        exit_code,
    }
}

/// The header of a report of `command` (`run`, `slo`) made with `cfg`.
pub fn report_header(
    cfg: &BenchConfig,
    host: &HostInfo,
    start_time: SystemTime,
    command: &str,
) -> ReportHeader {
    let open = matches!(cfg.load.mode, Mode::Open { .. });
    let pipeline = cfg.load.pipeline;
    let (rate, arrival) = match cfg.load.mode {
        Mode::Closed => (None, None),
        Mode::Open { rate, arrival } => (Some(rate), Some(arrival)),
    };
    ReportHeader {
        schema_version: SCHEMA_VERSION,
        tool: ToolJson::this(),
        command: command.into(),
        command_line: cfg.command_line.clone(),
        label: cfg.label.clone(),
        start_time: humantime::format_rfc3339_micros(start_time).to_string(),
        host: host.clone(),
        pinning: PinningJson {
            client_cpus: cfg.load.client_cpus.clone(),
            server_cpus: cfg.server_cpus.clone(),
        },
        config: ConfigJson {
            mode: if open { "open" } else { "closed" }.into(),
            connections: cfg.load.connections,
            size_bytes: cfg.load.size,
            pipeline,
            rate,
            arrival,
            threads: cfg.load.threads,
            busy_poll: cfg.load.busy_poll,
            duration_s: cfg.load.duration.as_secs_f64(),
            warmup_s: cfg.load.warmup.as_secs_f64(),
            rounds: cfg.rounds,
            interval_s: cfg.load.interval.map(|d| d.as_secs_f64()),
            rate_interval_s: open.then_some(cfg.load.rate_interval.as_secs_f64()),
            start_at: cfg
                .start_at
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
            seed: cfg.seed,
            default_comparison: cfg.default_comparison,
            histogram: HistogramConfigJson {
                unit: "ns".into(),
                lowest: record::LOWEST_NS,
                highest: record::HIGHEST_NS,
                significant_digits: record::SIGFIG,
            },
        },
    }
}

/// Rate figures of an open-loop target: (target, achieved ratio, shortfall).
pub fn rate_check(cfg: &BenchConfig, t: &TargetRun) -> (Option<f64>, Option<f64>, bool) {
    match cfg.load.mode {
        Mode::Open { rate, .. } => {
            let ratio = t.msgs_per_s() / rate;
            (Some(rate), Some(ratio), !rate_reached(t.msgs_per_s(), rate))
        }
        Mode::Closed => (None, None, false),
    }
}

/// `ns / msgs`, when both are known and `msgs > 0`.
pub fn per_msg(ns: Option<u64>, msgs: u64) -> Option<f64> {
    match ns {
        Some(ns) if msgs > 0 => Some(ns as f64 / msgs as f64),
        _ => None,
    }
}

/// Encode a histogram as base64 V2-deflate.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .expect("serialising into a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Figures of `h`.
pub fn latency_json(h: &Histogram<u64>, basis: &str) -> LatencyJson {
    let q = |x: f64| {
        if h.is_empty() {
            0.0
        } else {
            us(h.value_at_quantile(x))
        }
    };
    LatencyJson {
        basis: basis.to_string(),
        count: h.len(),
        min_us: if h.is_empty() { 0.0 } else { us(h.min()) },
        mean_us: h.mean() / 1000.0,
        stdev_us: h.stdev() / 1000.0,
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        p9999_us: q(0.9999),
        max_us: if h.is_empty() { 0.0 } else { us(h.max()) },
        histogram: encode_histogram(h),
    }
}
