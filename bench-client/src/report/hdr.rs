//! HdrHistogram's own file formats, so that its tools read what echo-bench writes.
//!
//! The `.hgrm` layout reproduces Java HdrHistogram's `outputPercentileDistribution` (5 ticks per
//! half distance, `%12.3f %2.12f %10d %14.2f` rows, the last row without `1/(1-Percentile)`,
//! and the `#[Mean`, `#[Max`, `#[Buckets` footer), values in milliseconds (what HdrHistogram's
//! plotter labels its axis with). The `.hlog` file is an interval log V2 compressed (the Java
//! `HistogramLogWriter` layout, readable by `HistogramLogProcessor` and by the Rust crate's
//! `IntervalLogIterator`), values in nanoseconds.

use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

use super::TargetRun;
use crate::record::new_histogram;

/// Ticks per half distance of the `.hgrm` table (HdrHistogram's default).
pub const HGRM_TICKS_PER_HALF_DISTANCE: u32 = 5;
/// `.hgrm` value scaling: ns → ms.
pub const HGRM_NS_PER_UNIT: f64 = 1e6;

/// Java HdrHistogram's `subBucketCount` for `sigfig` significant digits.
pub fn sub_bucket_count(sigfig: u8) -> u64 {
    let largest = 2 * 10u64.pow(u32::from(sigfig));
    1u64 << (64 - (largest - 1).leading_zeros())
}

/// Write `h` in HdrHistogram's `outputPercentileDistribution` format, values divided by
/// `value_scale` (use [`HGRM_NS_PER_UNIT`] for milliseconds).
pub fn write_hgrm<W: Write>(w: &mut W, h: &Histogram<u64>, value_scale: f64) -> io::Result<()> {
    writeln!(
        w,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in h.iter_quantiles(HGRM_TICKS_PER_HALF_DISTANCE) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = v.value_iterated_to() as f64 / value_scale;
        if q < 1.0 {
            writeln!(
                w,
                "{value:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(w, "{value:12.3} {q:2.12} {total:10}")?;
        }
    }
    writeln!(
        w,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / value_scale,
        h.stdev() / value_scale
    )?;
    writeln!(
        w,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / value_scale,
        h.len()
    )?;
    writeln!(
        w,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    )?;
    Ok(())
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Write the interval log of one target (all its rounds).
pub fn write_hlog<W: Write>(w: &mut W, t: &TargetRun, interval_ns: u64) -> io::Result<()> {
    let Some(base) = t.intervals.first().map(|(start, _, _)| *start) else {
        return Err(io::Error::other("no intervals recorded"));
    };
    writeln!(w, "#[Logged with echo-bench {}]", env!("CARGO_PKG_VERSION"))?;
    writeln!(w, "#[Histogram log format version 1.3]")?;
    writeln!(
        w,
        "#[StartTime: {:.3} (seconds since epoch), {}]",
        epoch_secs(base),
        humantime::format_rfc3339_millis(base)
    )?;
    writeln!(
        w,
        "#[BaseTime: {:.3} (seconds since epoch)]",
        epoch_secs(base)
    )?;
    writeln!(
        w,
        "#[Target {} ({}); values in nanoseconds; Interval_Max in milliseconds; open-loop service times tagged `service`]",
        t.name, t.address
    )?;
    writeln!(
        w,
        "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
    )?;
    let mut serializer = V2DeflateSerializer::new();
    let mut writer = IntervalLogWriterBuilder::new()
        .with_max_value_divisor(1e6)
        .begin_log_with(w, &mut serializer)?;
    let empty = new_histogram();
    let service_tag = Tag::new("service").expect("valid tag");
    for (start, measured_ns, intervals) in &t.intervals {
        let offset = start.duration_since(base).unwrap_or_default();
        let n = measured_ns.div_ceil(interval_ns);
        for idx in 0..n {
            let from = idx * interval_ns;
            let len = interval_ns.min(measured_ns - from);
            let ts = offset + std::time::Duration::from_nanos(from);
            let dur = std::time::Duration::from_nanos(len);
            let (lat, svc) = match intervals.get(&idx) {
                Some((l, s)) => (l, s.as_ref()),
                None => (&empty, None),
            };
            writer
                .write_histogram(lat, ts, dur, None)
                .map_err(|e| io::Error::other(e.to_string()))?;
            if t.service.is_some() {
                writer
                    .write_histogram(svc.unwrap_or(&empty), ts, dur, Some(service_tag))
                    .map_err(|e| io::Error::other(e.to_string()))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_buckets_match_java() {
        assert_eq!(sub_bucket_count(3), 2048);
        assert_eq!(sub_bucket_count(2), 256);
        assert_eq!(sub_bucket_count(1), 32);
    }

    #[test]
    fn hgrm_layout_matches_hdrhistogram() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap(); // exact values: below 2048 every value has its own bucket
        }
        let mut out = Vec::new();
        write_hgrm(&mut out, &h, 1.0).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        // first row: the minimum at percentile 0
        assert_eq!(
            lines[2],
            "       1.000 0.000000000000          1           1.00"
        );
        let last_row = lines[lines.len() - 4];
        assert!(
            last_row.ends_with("1.000000000000       1000"),
            "{last_row}"
        );
        assert!(lines[lines.len() - 3].starts_with("#[Mean    =      500.500, StdDeviation   = "));
        assert_eq!(
            lines[lines.len() - 2],
            "#[Max     =     1000.000, Total count    =         1000]"
        );
        assert!(lines[lines.len() - 1].starts_with("#[Buckets = "));
        assert!(lines[lines.len() - 1].ends_with("SubBuckets     =         2048]"));
        // the median row
        assert!(lines
            .iter()
            .any(|l| l.starts_with("     500.000 0.500000000000        500           2.00")));
    }
}
