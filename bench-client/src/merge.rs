//! `echo-bench merge`: sum interval logs from several client processes into one histogram.
//!
//! Loading one server from several clients (processes or hosts) is measured by starting them
//! with the same `--start-at`, each writing `--hlog`, and merging the logs here. Logs are read
//! with the hdrhistogram crate's `IntervalLogIterator`; like Java's `HistogramLogProcessor`,
//! only untagged intervals are summed unless `--tag` picks a tag. A file that does not parse,
//! holds a histogram that does not decode, or holds no interval at all (a truncated log) is an
//! error naming the file and the byte offset.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry, LogIteratorError};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::MergeArgs;
use crate::config::check_outputs;
use crate::record::{add_into, new_histogram};
use crate::report::{self, LatencyJson};

/// What one file contributed.
#[derive(Debug, Clone, Serialize)]
pub struct FileSummary {
    /// Path as given.
    pub path: String,
    /// Intervals summed.
    pub intervals: usize,
    /// Values summed.
    pub count: u64,
}

/// Merged result.
pub struct Merged {
    /// The sum of all selected intervals.
    pub histogram: Histogram<u64>,
    /// Per-file contributions.
    pub files: Vec<FileSummary>,
}

/// Read one interval log and add its selected intervals into `into`.
pub fn read_log(
    path: &Path,
    tag: Option<&str>,
    into: &mut Histogram<u64>,
) -> anyhow::Result<FileSummary> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut deserializer = Deserializer::new();
    let mut summary = FileSummary {
        path: path.display().to_string(),
        intervals: 0,
        count: 0,
    };
    let mut any_interval = false;
    for entry in IntervalLogIterator::new(&bytes) {
        let entry = entry.map_err(|LogIteratorError::ParseError { offset }| {
            anyhow::anyhow!(
                "{}: not a valid HdrHistogram interval log (parse error at byte offset {offset}; truncated or corrupted?)",
                path.display()
            )
        })?;
        let LogEntry::Interval(ilh) = entry else {
            continue;
        };
        any_interval = true;
        if ilh.tag().map(|t| t.as_str()) != tag {
            continue;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(ilh.encoded_histogram())
            .with_context(|| {
                format!(
                    "{}: interval at {:.3} s has an invalid base64 histogram",
                    path.display(),
                    ilh.start_timestamp().as_secs_f64()
                )
            })?;
        let h: Histogram<u64> = decode_histogram(&raw, &mut deserializer).map_err(|e| {
            anyhow::anyhow!(
                "{}: interval at {:.3} s does not decode: {e}",
                path.display(),
                ilh.start_timestamp().as_secs_f64()
            )
        })?;
        summary.intervals += 1;
        summary.count += h.len();
        add_into(into, &h);
    }
    if !any_interval {
        bail!(
            "{}: no interval histograms found (empty or truncated log)",
            path.display()
        );
    }
    if summary.intervals == 0 {
        bail!(
            "{}: no interval {} found",
            path.display(),
            match tag {
                Some(t) => format!("with tag '{t}'"),
                None => "without a tag (use --tag to pick tagged intervals)".into(),
            }
        );
    }
    Ok(summary)
}

const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9304 | 0x10;
const V2_HEADER_BYTES: usize = 40;
/// Largest decompressed histogram accepted from a file (a 1 ns .. 1 h, 3-digit histogram with
/// every bucket used is ~300 KiB).
pub const MAX_DECODED_BYTES: u64 = 64 << 20;

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes")))
}

/// Check that an uncompressed V2 histogram holds the payload its header declares.
fn check_v2(b: &[u8]) -> Result<(), String> {
    if be_u32(b, 0) != Some(V2_COOKIE) {
        return Err("not an HdrHistogram V2 histogram (bad cookie)".into());
    }
    let declared = be_u32(b, 4).ok_or("truncated header")? as usize;
    let present = b.len().saturating_sub(V2_HEADER_BYTES);
    if b.len() < V2_HEADER_BYTES || declared > present {
        return Err(format!(
            "header declares a {declared}-byte payload but only {present} bytes are present"
        ));
    }
    Ok(())
}

/// Decode a serialised histogram from an untrusted file. hdrhistogram's deserializer sizes its
/// buffer from the payload length in the header, so a corrupted length would allocate up to
/// 4 GiB before failing: the lengths are checked against the bytes actually present first, and
/// compressed histograms are inflated here with a size limit.
pub fn decode_histogram(raw: &[u8], de: &mut Deserializer) -> Result<Histogram<u64>, String> {
    use std::io::Read;
    let inflated;
    let v2: &[u8] = match be_u32(raw, 0) {
        Some(V2_COOKIE) => raw,
        Some(V2_COMPRESSED_COOKIE) => {
            let declared = be_u32(raw, 4).ok_or("truncated header")? as usize;
            let present = raw.len().saturating_sub(8);
            if declared > present {
                return Err(format!(
                    "header declares a {declared}-byte compressed payload but only {present} bytes are present"
                ));
            }
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(&raw[8..8 + declared])
                .take(MAX_DECODED_BYTES + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("compressed payload does not inflate: {e}"))?;
            if out.len() as u64 > MAX_DECODED_BYTES {
                return Err(format!("inflates to more than {MAX_DECODED_BYTES} bytes"));
            }
            inflated = out;
            &inflated
        }
        _ => return Err("not an HdrHistogram V2 histogram (bad cookie)".into()),
    };
    check_v2(v2)?;
    de.deserialize(&mut &v2[..]).map_err(|e| e.to_string())
}

/// Merge several logs.
pub fn merge_files(paths: &[impl AsRef<Path>], tag: Option<&str>) -> anyhow::Result<Merged> {
    let mut histogram = new_histogram();
    let mut files = Vec::new();
    for p in paths {
        files.push(read_log(p.as_ref(), tag, &mut histogram)?);
    }
    Ok(Merged { histogram, files })
}

#[derive(Serialize)]
struct MergeJson {
    schema_version: u32,
    tool: report::ToolJson,
    command: &'static str,
    tag: Option<String>,
    files: Vec<FileSummary>,
    latency: LatencyJson,
}

/// Run `echo-bench merge`.
pub fn run(args: &MergeArgs) -> anyhow::Result<()> {
    let outputs: Vec<_> = args.hgrm.iter().chain(args.json.iter()).cloned().collect();
    check_outputs(&outputs, args.force)?;
    let merged = merge_files(&args.files, args.tag.as_deref())?;
    let h = &merged.histogram;
    let mut out = std::io::stdout().lock();
    for f in &merged.files {
        writeln!(
            out,
            "{}: {} intervals, {} values",
            f.path, f.intervals, f.count
        )?;
    }
    let l = report::json::latency_json(h, "merged interval logs");
    writeln!(
        out,
        "merged: {} values from {} file(s)",
        h.len(),
        merged.files.len()
    )?;
    writeln!(
        out,
        "  latency µs    min {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  p99.99 {:.1}  max {:.1}  (mean {:.1})",
        l.min_us, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.p9999_us, l.max_us, l.mean_us
    )?;
    if let Some(path) = &args.hgrm {
        let mut buf = Vec::new();
        report::hdr::write_hgrm(&mut buf, h, report::hdr::HGRM_NS_PER_UNIT)?;
        crate::write_file(path, &buf, args.force)?;
    }
    if let Some(path) = &args.json {
        let json = MergeJson {
            schema_version: report::SCHEMA_VERSION,
            tool: report::ToolJson::this(),
            command: "merge",
            tag: args.tag.clone(),
            files: merged.files.clone(),
            latency: l,
        };
        let mut buf = serde_json::to_vec_pretty(&json)?;
        buf.push(b'\n');
        crate::write_file(path, &buf, args.force)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::{Serializer, V2DeflateSerializer, V2Serializer};

    fn sample() -> Histogram<u64> {
        let mut h = new_histogram();
        for v in 1..1000u64 {
            h.record(v * 1000).unwrap();
        }
        h
    }

    #[test]
    fn decodes_both_encodings() {
        let h = sample();
        let mut de = Deserializer::new();
        for compressed in [false, true] {
            let mut buf = Vec::new();
            if compressed {
                V2DeflateSerializer::new().serialize(&h, &mut buf).unwrap();
            } else {
                V2Serializer::new().serialize(&h, &mut buf).unwrap();
            }
            assert_eq!(decode_histogram(&buf, &mut de).unwrap(), h);
        }
    }

    #[test]
    fn refuses_lying_lengths_without_allocating_them() {
        let mut de = Deserializer::new();
        let mut buf = Vec::new();
        V2Serializer::new().serialize(&sample(), &mut buf).unwrap();
        buf[4..8].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        let err = decode_histogram(&buf, &mut de).unwrap_err();
        assert!(err.contains("declares a 4294967280-byte payload"), "{err}");

        let mut buf = Vec::new();
        V2DeflateSerializer::new()
            .serialize(&sample(), &mut buf)
            .unwrap();
        buf[4..8].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        assert!(decode_histogram(&buf, &mut de)
            .unwrap_err()
            .contains("compressed payload"));

        assert!(decode_histogram(b"junk", &mut de)
            .unwrap_err()
            .contains("bad cookie"));
        assert!(decode_histogram(&[], &mut de).is_err());
    }
}
