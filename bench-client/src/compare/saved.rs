//! `echo-bench compare`: saved reports side by side, with the statistics of a live run.
//!
//! Run reports: the targets of every file, in order, are compared against the first target of
//! the first file with [`super::comparison`], the very function a live run uses, on the
//! per-round records the files hold (paired by round number), and printed by the same printer.
//! `slo` reports: the bounds are compared with [`crate::slo::report::compare_all`].
//!
//! Saved results are only comparable when they were made alike, so every difference is one
//! `WARNING:` line: each field of `host` (kernel included), `pinning`, `config`, the tool
//! version and the schema (and for `slo`, the SLO and search settings) that differs from the
//! first file's; each key of a target's server `features:` line that differs from the first
//! target's; and each target whose client was the bottleneck. Target names that occur in
//! more than one file are prefixed with the file's stem (`monday:epoll`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

use super::Series;
use crate::cli::CompareArgs;
use crate::report::{text, JsonReport, SCHEMA_VERSION};
use crate::slo::report::{compare_all, print_bounds, slo_text, SloReport, SloTargetJson};
use crate::spawn::FEATURES_PREFIX;

/// What a saved file holds.
#[derive(Debug, Clone)]
pub enum Saved {
    /// A benchmark run.
    Run(Box<JsonReport>),
    /// An `slo` search.
    Slo(Box<SloReport>),
}

/// A saved report, as read.
#[derive(Debug, Clone)]
pub struct SavedFile {
    /// Path as given.
    pub path: PathBuf,
    /// Short name (the file stem, or the path when stems collide).
    pub label: String,
    /// The JSON, for the field-by-field comparison.
    pub raw: Value,
    /// The typed report.
    pub report: Saved,
}

/// Read a report written by `--json` (of a run or an `slo` search).
pub fn read(path: &Path) -> anyhow::Result<SavedFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let raw: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a JSON file", path.display()))?;
    match raw.get("schema_version").and_then(Value::as_u64) {
        None => bail!(
            "{}: not an echo-bench report (no schema_version)",
            path.display()
        ),
        Some(v) if v > u64::from(SCHEMA_VERSION) => bail!(
            "{}: written by a newer echo-bench (schema {v}; this one reads up to {SCHEMA_VERSION})",
            path.display()
        ),
        Some(_) => {}
    }
    let not_report =
        |e: serde_json::Error| anyhow::anyhow!("{}: not an echo-bench report: {e}", path.display());
    let report = if raw.get("slo").is_some() {
        Saved::Slo(Box::new(
            serde_json::from_value(raw.clone()).map_err(not_report)?,
        ))
    } else {
        Saved::Run(Box::new(
            serde_json::from_value(raw.clone()).map_err(not_report)?,
        ))
    };
    Ok(SavedFile {
        path: path.to_path_buf(),
        label: path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into(),
        ),
        raw,
        report,
    })
}

/// Flatten a JSON object into `path -> leaf` (arrays are leaves).
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        leaf => {
            out.insert(prefix.to_string(), leaf.clone());
        }
    }
}

/// The fields of a report that must agree for a comparison to be fair.
fn setup_fields(raw: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for key in ["schema_version", "tool", "host", "pinning", "config"] {
        if let Some(v) = raw.get(key) {
            flatten(key, v, &mut out);
        }
    }
    if let Some(Value::Object(slo)) = raw.get("slo") {
        for (k, v) in slo {
            let settings = !matches!(
                k.as_str(),
                "targets" | "comparisons" | "elapsed_s" | "stopped_early"
            );
            if settings {
                out.insert(format!("slo.{k}"), v.clone());
            }
        }
    }
    out
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "absent".into(),
        Some(Value::String(s)) => format!("'{s}'"),
        Some(v) => v.to_string(),
    }
}

/// One line per setup field that differs from the first file's; `files` are `(label, JSON)`.
pub fn setup_warnings(files: &[(&str, &Value)]) -> Vec<String> {
    let Some(((first, first_raw), rest)) = files.split_first() else {
        return Vec::new();
    };
    let base = setup_fields(first_raw);
    let mut lines = Vec::new();
    for (label, raw) in rest {
        let other = setup_fields(raw);
        let keys: std::collections::BTreeSet<&String> = base.keys().chain(other.keys()).collect();
        for k in keys {
            let (a, b) = (base.get(k), other.get(k));
            if a != b {
                let what = if k == "host.kernel" {
                    "the kernel differs".to_string()
                } else {
                    format!("{k} differs")
                };
                lines.push(format!(
                    "{what}: {first}: {}; {label}: {}",
                    show(a),
                    show(b)
                ));
            }
        }
    }
    lines
}

/// `key=value` pairs of a `features:` line.
pub fn parse_features(line: &str) -> BTreeMap<String, String> {
    line.strip_prefix(FEATURES_PREFIX)
        .unwrap_or(line)
        .split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

/// One line per server feature of a target that differs from the first target's.
pub fn feature_warnings(targets: &[(String, Option<String>)]) -> Vec<String> {
    let Some(((base_name, base), rest)) = targets.split_first() else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for (name, features) in rest {
        match (base, features) {
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => lines.push(format!(
                "server features: {base_name}: {}; {name}: {}",
                base.as_deref().unwrap_or("none printed"),
                features.as_deref().unwrap_or("none printed")
            )),
            (Some(a), Some(b)) => {
                let (fa, fb) = (parse_features(a), parse_features(b));
                let keys: std::collections::BTreeSet<&String> =
                    fa.keys().chain(fb.keys()).collect();
                for k in keys {
                    let (x, y) = (fa.get(k), fb.get(k));
                    if x != y {
                        let v =
                            |v: Option<&String>| v.map_or("absent".into(), |v| format!("{k}={v}"));
                        lines.push(format!(
                            "server feature {k} differs: {base_name}: {}; {name}: {}",
                            v(x),
                            v(y)
                        ));
                    }
                }
            }
        }
    }
    lines
}

/// Names for the targets of all files: the target name, prefixed with the file label where the
/// name occurs in several files.
fn names(per_file: &[(String, Vec<String>)]) -> Vec<String> {
    let all: Vec<&String> = per_file.iter().flat_map(|(_, n)| n.iter()).collect();
    let all = &all;
    per_file
        .iter()
        .flat_map(|(label, ns)| {
            ns.iter().map(move |n| {
                if all.iter().filter(|m| **m == n).count() > 1 {
                    format!("{label}:{n}")
                } else {
                    n.clone()
                }
            })
        })
        .collect()
}

/// Run `echo-bench compare`; returns the exit code.
pub fn run(args: &CompareArgs) -> anyhow::Result<u8> {
    let mut files = args
        .files
        .iter()
        .map(|p| read(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // File labels must tell files apart.
    for i in 0..files.len() {
        if files.iter().filter(|f| f.label == files[i].label).count() > 1 {
            files[i].label = files[i].path.display().to_string();
        }
    }
    let runs: Vec<&JsonReport> = files
        .iter()
        .filter_map(|f| match &f.report {
            Saved::Run(r) => Some(r.as_ref()),
            Saved::Slo(_) => None,
        })
        .collect();
    let slos: Vec<&SloReport> = files
        .iter()
        .filter_map(|f| match &f.report {
            Saved::Slo(r) => Some(r.as_ref()),
            Saved::Run(_) => None,
        })
        .collect();
    if !runs.is_empty() && !slos.is_empty() {
        bail!("cannot compare run reports with slo reports");
    }

    let mut out = std::io::stdout().lock();
    for f in &files {
        let h = match &f.report {
            Saved::Run(r) => &r.header,
            Saved::Slo(r) => &r.header,
        };
        writeln!(
            out,
            "{}: {} of {} by {} {}{}",
            f.label,
            h.command,
            h.start_time,
            h.tool.name,
            h.tool.version,
            h.label
                .as_ref()
                .map(|l| format!(", label '{l}'"))
                .unwrap_or_default()
        )?;
    }
    let mut warnings = setup_warnings(
        &files
            .iter()
            .map(|f| (f.label.as_str(), &f.raw))
            .collect::<Vec<_>>(),
    );

    if !runs.is_empty() {
        let per_file: Vec<(String, Vec<String>)> = files
            .iter()
            .zip(&runs)
            .map(|(f, r)| {
                (
                    f.label.clone(),
                    r.targets.iter().map(|t| t.info.name.clone()).collect(),
                )
            })
            .collect();
        let names = names(&per_file);
        let targets: Vec<_> = runs.iter().flat_map(|r| r.targets.iter()).collect();
        warnings.extend(feature_warnings(
            &names
                .iter()
                .zip(&targets)
                .map(|(n, t)| (n.clone(), t.info.server_features.clone()))
                .collect::<Vec<_>>(),
        ));
        for (n, t) in names.iter().zip(&targets) {
            let bound: Vec<String> = t
                .rounds
                .iter()
                .filter(|r| r.client.client_bound)
                .map(|r| r.round.to_string())
                .collect();
            if !bound.is_empty() {
                warnings.push(format!(
                    "{n}: the client was the bottleneck in round(s) {}: those figures measure echo-bench",
                    bound.join(", ")
                ));
            }
        }
        let series: Vec<Series<'_>> = names
            .iter()
            .zip(&targets)
            .map(|(n, t)| Series {
                name: n,
                rounds: &t.rounds,
            })
            .collect();
        let Some(cmp) = super::comparison(&series) else {
            bail!("nothing to compare: one target with one round");
        };
        for w in &warnings {
            writeln!(out, "WARNING: {w}")?;
        }
        if files.len() > 1 {
            writeln!(
                out,
                "note: targets from different files ran in different runs: their rounds are paired \
                 by number, which does not cancel drift between the runs as interleaving does"
            )?;
        }
        text::print_comparison(&mut out, &cmp)?;
    } else {
        let first = &slos[0].slo;
        let per_file: Vec<(String, Vec<String>)> = files
            .iter()
            .zip(&slos)
            .map(|(f, r)| {
                (
                    f.label.clone(),
                    r.slo.targets.iter().map(|t| t.info.name.clone()).collect(),
                )
            })
            .collect();
        let targets: Vec<SloTargetJson> = names(&per_file)
            .into_iter()
            .zip(slos.iter().flat_map(|r| r.slo.targets.iter()))
            .map(|(n, t)| {
                let mut t = t.clone();
                t.info.name = n;
                t
            })
            .collect();
        warnings.extend(feature_warnings(
            &targets
                .iter()
                .map(|t| (t.info.name.clone(), t.info.server_features.clone()))
                .collect::<Vec<_>>(),
        ));
        for w in &warnings {
            writeln!(out, "WARNING: {w}")?;
        }
        let mut slo = first.clone();
        slo.comparisons = compare_all(&targets, &slo_text(slo.quantile, slo.max_latency_us));
        slo.targets = targets;
        print_bounds(&mut out, &slo)?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_compared_key_by_key() {
        let lines = feature_warnings(&[
            (
                "a".into(),
                Some("features: engine=multishot bundle=yes zc=no".into()),
            ),
            (
                "b".into(),
                Some("features: engine=multishot bundle=no".into()),
            ),
            ("c".into(), None),
        ]);
        assert_eq!(
            lines,
            [
                "server feature bundle differs: a: bundle=yes; b: bundle=no",
                "server feature zc differs: a: zc=no; b: absent",
                "server features: a: features: engine=multishot bundle=yes zc=no; c: none printed",
            ]
        );
    }

    #[test]
    fn names_repeated_across_files_get_the_file_label() {
        let n = names(&[
            ("mon".into(), vec!["uring".into(), "epoll".into()]),
            ("tue".into(), vec!["uring".into(), "floor".into()]),
        ]);
        assert_eq!(n, ["mon:uring", "epoll", "tue:uring", "floor"]);
    }

    #[test]
    fn every_setup_difference_is_one_line() {
        let a = serde_json::json!({"schema_version": 2,
            "host": {"kernel": "Linux 6.18", "nproc": 2, "allowed_cpus": [0, 1]},
            "config": {"connections": 50, "rate": null, "histogram": {"unit": "ns"}},
            "targets": [{"name": "x"}]});
        let mut b = a.clone();
        b["host"]["kernel"] = "Linux 6.1".into();
        b["host"]["allowed_cpus"] = serde_json::json!([1]);
        b["config"]["connections"] = 100.into();
        b["targets"][0]["name"] = "y".into();
        let lines = setup_warnings(&[("a", &a), ("b", &a), ("c", &b)]);
        assert_eq!(
            lines,
            [
                "config.connections differs: a: 50; c: 100",
                "host.allowed_cpus differs: a: [0,1]; c: [1]",
                "the kernel differs: a: 'Linux 6.18'; c: 'Linux 6.1'",
            ]
        );
    }
}
