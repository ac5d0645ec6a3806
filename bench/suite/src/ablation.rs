//! The uring-multishot feature ablation: which variants to run, and the plain-words verdict.
//!
//! One echo-bench comparison per ablation cell holds the default engine (default flags) first
//! and one variant per optional feature, each flipping exactly one thing from the default, so
//! every figure is a per-round ratio against the default measured in the same round:
//! - the batching policy: every policy of `--batch-wait` other than the default (`inline`): `off`,
//!   `adaptive` and the fixed batch [`FIXED_BATCH`];
//! - every switchable `--feature` (`uring_echo::config::SWITCHABLE_FEATURES`, read at build time
//!   from the server's own library, so a feature added there is ablated without edits here),
//!   flipped from what the default does on this kernel, as the server's `features:` line says:
//!   in `in_use` → `NAME=off`, in `off` → `NAME=on`; in `missing` or not listed → not available
//!   on this kernel (no variant).
//!
//! A verdict is about a *subject* (a feature, or a batching policy) and compares the engine with
//! the subject against the engine without it, whichever of the two is the default.

use crate::plan::Cell;
use echo_bench::compare::{significance, Significance, Summary};

/// The fixed `--batch-wait` the ablation measures beside the default (the suite's former
/// `multishot-batch`: chosen from a sweep at 50 × 4 KiB, see bench/README.md).
pub const FIXED_BATCH: &str = "32,200us";

/// The `--batch-wait` policies the ablation knows.
pub const BATCH_POLICIES: [&str; 4] = ["off", "inline", "adaptive", FIXED_BATCH];

/// A server's `features:` line, split into its lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeaturesLine {
    /// `runtime=`.
    pub runtime: String,
    /// `kernel=`.
    pub kernel: String,
    /// `in_use=`: used in this run.
    pub in_use: Vec<String>,
    /// `missing=`: the engine would use it, the kernel lacks it (fallback).
    pub missing: Vec<String>,
    /// `off=`: the kernel has it, this run does not use it.
    pub off: Vec<String>,
}

/// Parses `features: runtime=R kernel=K in_use=a,b missing=- off=c` (lists comma-separated, `-`
/// for empty; unknown keys are ignored). `None` when the line is not a features line.
pub fn parse_features_line(line: &str) -> Option<FeaturesLine> {
    let rest = line.trim().strip_prefix("features:")?;
    let mut f = FeaturesLine::default();
    let list = |v: &str| -> Vec<String> {
        if v == "-" {
            Vec::new()
        } else {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        }
    };
    for token in rest.split_whitespace() {
        let (k, v) = token.split_once('=')?;
        match k {
            "runtime" => f.runtime = v.into(),
            "kernel" => f.kernel = v.into(),
            "in_use" => f.in_use = list(v),
            "missing" => f.missing = list(v),
            "off" => f.off = list(v),
            _ => {}
        }
    }
    Some(f)
}

/// One ablation target besides the default engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    /// echo-bench target name (no spaces, commas or slashes), e.g. `recv_budget=off`.
    pub name: String,
    /// uring-echo flags added to the default command.
    pub args: Vec<String>,
    /// What the verdict is about, e.g. `recv_budget` or `adaptive batching`.
    pub subject: String,
    /// The default engine has the subject and this variant removes it (the effect of the subject
    /// is then default ÷ variant); else the variant adds it (variant ÷ default).
    pub default_has_subject: bool,
    /// What the variant changes, in words.
    pub flips: String,
    /// `(feature, expected in use)`: what the variant's `features:` line must show.
    pub expect: Option<(String, bool)>,
}

/// A feature (or variant) the ablation leaves out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    /// Feature or variant name.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// The ablation variants for a default engine whose `--batch-wait` default is `default_batch`
/// and whose features line is `features`, over the `switchable` feature names.
pub fn variants(
    features: &FeaturesLine,
    switchable: &[&str],
    default_batch: &str,
) -> (Vec<Variant>, Vec<Unavailable>) {
    let mut v = Vec::new();
    let mut unavailable = Vec::new();
    for policy in BATCH_POLICIES.into_iter().filter(|p| *p != default_batch) {
        let (subject, default_has_subject) = match (policy, default_batch) {
            ("off", d) => (format!("{d} batching"), true),
            (p, "off") => (format!("{} batching", batch_words(p)), false),
            (p, d) => (format!("{} batching instead of {d}", batch_words(p)), false),
        };
        v.push(Variant {
            name: format!("batch={}", policy.replace(',', "_")),
            args: vec!["--batch-wait".into(), policy.into()],
            subject,
            default_has_subject,
            flips: format!("--batch-wait {policy} (default {default_batch})"),
            expect: None,
        });
    }
    for &name in switchable {
        let (on, default_state) = if features.in_use.iter().any(|f| f == name) {
            (false, "on")
        } else if features.off.iter().any(|f| f == name) {
            (true, "off")
        } else {
            let reason = if features.missing.iter().any(|f| f == name) {
                "not available on this kernel (listed as missing: the engine runs its fallback)"
            } else {
                "not available on this kernel (not in the features: line)"
            };
            unavailable.push(Unavailable {
                name: name.into(),
                reason: reason.into(),
            });
            continue;
        };
        let value = if on { "on" } else { "off" };
        v.push(Variant {
            name: format!("{name}={value}"),
            args: vec!["--feature".into(), format!("{name}={value}")],
            subject: name.into(),
            default_has_subject: !on,
            flips: format!("--feature {name}={value} ({default_state} by default)"),
            expect: Some((name.into(), on)),
        });
    }
    (v, unavailable)
}

fn batch_words(policy: &str) -> String {
    match policy {
        "adaptive" | "inline" | "off" => policy.into(),
        fixed => format!("fixed {fixed}"),
    }
}

/// Checks a started variant's features line against what it was meant to flip.
pub fn check_flip(variant: &Variant, line: Option<&str>) -> Result<(), String> {
    let Some((feature, on)) = &variant.expect else {
        return Ok(());
    };
    let Some(f) = line.and_then(parse_features_line) else {
        return Err("printed no features: line".into());
    };
    let in_use = f.in_use.iter().any(|x| x == feature);
    if in_use == *on {
        Ok(())
    } else {
        Err(format!(
            "{} but its features: line has {feature} {}",
            variant.flips,
            if in_use { "in use" } else { "not in use" }
        ))
    }
}

/// The effect of a subject in one cell: per-round ratios *with ÷ without* the subject.
#[derive(Clone, Debug)]
pub struct Effect {
    /// The cell.
    pub cell: Cell,
    /// Server CPU per message (every round: stays valid when the client is the bottleneck).
    pub cpu: Summary,
    /// Messages per second (rounds in which neither side was client-bound).
    pub rate: Summary,
    /// Per-round p50 (same rounds as `rate`).
    pub p50: Summary,
    /// Per-round p99 (same rounds as `rate`).
    pub p99: Summary,
}

/// The plain-words verdict on a subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Word {
    /// Better somewhere, worse nowhere.
    Helps,
    /// Worse somewhere, better nowhere.
    Hurts,
    /// Better in some figures, worse in others.
    Mixed,
    /// Every interval contains 1.0.
    Noise,
    /// Too few rounds anywhere to tell.
    Undecided,
}

impl Word {
    /// As written in the tables.
    pub fn text(self) -> &'static str {
        match self {
            Word::Helps => "helps",
            Word::Hurts => "hurts",
            Word::Mixed => "mixed",
            Word::Noise => "inside the noise",
            Word::Undecided => "undecided (too few rounds)",
        }
    }
}

/// A verdict and the figures it rests on.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The word.
    pub word: Word,
    /// The significant figures, e.g. `CPU/msg 0.93× [0.90–0.95] at 50 × 128 B`.
    pub evidence: Vec<String>,
}

/// Judges a subject from its effects: a figure counts when its interval excludes 1.0 (CPU/msg
/// and latency better below 1, messages/s better above 1).
pub fn verdict(effects: &[Effect]) -> Verdict {
    let mut better = Vec::new();
    let mut worse = Vec::new();
    let mut decided = false;
    for e in effects {
        for (what, s, lower_is_better) in [
            ("CPU/msg", &e.cpu, true),
            ("msgs/s", &e.rate, false),
            ("p50", &e.p50, true),
            ("p99", &e.p99, true),
        ] {
            match significance(s) {
                Significance::TooFewRounds => continue,
                Significance::NotSignificant => decided = true,
                Significance::Significant => {
                    decided = true;
                    let text = format!(
                        "{what} {:.3}× [{:.3}–{:.3}] at {}",
                        s.median,
                        s.lo,
                        s.hi,
                        e.cell.label()
                    );
                    if (s.hi < 1.0) == lower_is_better {
                        better.push(text);
                    } else {
                        worse.push(text);
                    }
                }
            }
        }
    }
    let word = match (better.is_empty(), worse.is_empty()) {
        _ if !decided => Word::Undecided,
        (true, true) => Word::Noise,
        (false, true) => Word::Helps,
        (true, false) => Word::Hurts,
        (false, false) => Word::Mixed,
    };
    let mut evidence: Vec<String> = better.into_iter().map(|b| format!("better: {b}")).collect();
    evidence.extend(worse.into_iter().map(|w| format!("worse: {w}")));
    Verdict { word, evidence }
}

#[cfg(test)]
mod tests {
    use super::*;
    use echo_bench::compare::summarize;

    const LINE_618: &str = "features: runtime=uring-multishot kernel=6.18.44-fc-v1045 \
        in_use=single_issuer,defer_taskrun,submit_all,nodrop,fast_poll,buf_ring,recv_multishot,recv_budget,timeout_multishot \
        missing=- off=no_sqarray,ext_arg,min_wait,bundle,reg_reg_ring,ring_fd,buf_ring_inc,send_zc";
    const LINE_61: &str = "features: runtime=uring-multishot kernel=6.1.0-57-cloud-amd64 \
        in_use=single_issuer,defer_taskrun,submit_all,nodrop,fast_poll,buf_ring \
        missing=recv_budget,timeout_multishot off=ext_arg,ring_fd,recv_multishot,send_zc";
    const SWITCHABLE: [&str; 6] = [
        "recv_budget",
        "no_sqarray",
        "ring_fd",
        "bundle",
        "buf_ring_inc",
        "send_zc",
    ];

    /// The list these tests use is the server's own: every switchable feature, `buf_ring_inc`
    /// among them, gets an ablation variant.
    #[test]
    fn the_tests_switchable_list_is_the_servers() {
        let mut ours: Vec<&str> = SWITCHABLE.to_vec();
        let mut server: Vec<&str> = uring_echo::config::SWITCHABLE_FEATURES
            .iter()
            .map(|f| f.name())
            .collect();
        ours.sort_unstable();
        server.sort_unstable();
        assert_eq!(ours, server);
        assert!(server.contains(&"buf_ring_inc"));
    }

    #[test]
    fn parses_the_features_line() {
        let f = parse_features_line(LINE_61).unwrap();
        assert_eq!(f.runtime, "uring-multishot");
        assert_eq!(f.kernel, "6.1.0-57-cloud-amd64");
        assert_eq!(f.missing, ["recv_budget", "timeout_multishot"]);
        assert!(f.in_use.contains(&"buf_ring".to_string()));
        let epoll =
            parse_features_line("features: runtime=epoll kernel=6.1 in_use=- missing=- off=-")
                .unwrap();
        assert!(epoll.in_use.is_empty() && epoll.missing.is_empty() && epoll.off.is_empty());
        assert_eq!(parse_features_line("summary: 1 connection"), None);
    }

    #[test]
    fn every_switchable_feature_is_flipped_from_its_default_on_6_18() {
        let f = parse_features_line(LINE_618).unwrap();
        let (v, unavailable) = variants(&f, &SWITCHABLE, "inline");
        assert!(unavailable.is_empty(), "{unavailable:?}");
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "batch=off",
                "batch=adaptive",
                "batch=32_200us",
                "recv_budget=off",
                "no_sqarray=on",
                "ring_fd=on",
                "bundle=on",
                "buf_ring_inc=on",
                "send_zc=on"
            ]
        );
        let budget = &v[3];
        assert_eq!(budget.args, ["--feature", "recv_budget=off"]);
        assert!(budget.default_has_subject);
        assert_eq!(budget.expect, Some(("recv_budget".into(), false)));
        let bundle = &v[6];
        assert_eq!(bundle.args, ["--feature", "bundle=on"]);
        assert!(!bundle.default_has_subject);
        assert_eq!(bundle.flips, "--feature bundle=on (off by default)");
        // Batching: off removes the default's inline batching; adaptive and the fixed batch
        // replace it.
        assert_eq!(v[0].args, ["--batch-wait", "off"]);
        assert_eq!(v[0].subject, "inline batching");
        assert!(v[0].default_has_subject);
        assert_eq!(v[1].args, ["--batch-wait", "adaptive"]);
        assert_eq!(v[1].subject, "adaptive batching instead of inline");
        assert!(!v[1].default_has_subject);
        assert_eq!(v[2].args, ["--batch-wait", "32,200us"]);
        assert_eq!(v[2].subject, "fixed 32,200us batching instead of inline");
        assert!(!v[2].default_has_subject);
        // echo-bench names: no commas, spaces or slashes.
        assert!(v
            .iter()
            .all(|v| !v.name.contains([',', ' ', '/']) && !v.name.is_empty()));
    }

    #[test]
    fn features_the_kernel_lacks_are_listed_not_run() {
        let f = parse_features_line(LINE_61).unwrap();
        let (v, unavailable) = variants(&f, &SWITCHABLE, "inline");
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "batch=off",
                "batch=adaptive",
                "batch=32_200us",
                "ring_fd=on",
                "send_zc=on"
            ]
        );
        let missing: Vec<(&str, bool)> = unavailable
            .iter()
            .map(|u| (u.name.as_str(), u.reason.contains("missing")))
            .collect();
        assert_eq!(
            missing,
            [
                ("recv_budget", true),
                ("no_sqarray", false),
                ("bundle", false),
                ("buf_ring_inc", false)
            ]
        );
        assert!(unavailable
            .iter()
            .all(|u| u.reason.starts_with("not available on this kernel")));
    }

    #[test]
    fn a_different_default_batch_policy_changes_the_batching_variants() {
        let f = parse_features_line(LINE_618).unwrap();
        let (v, _) = variants(&f, &[], "off");
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["batch=inline", "batch=adaptive", "batch=32_200us"]);
        assert_eq!(v[0].subject, "inline batching");
        assert!(!v[0].default_has_subject);
    }

    #[test]
    fn a_variant_whose_features_line_disagrees_is_caught() {
        let f = parse_features_line(LINE_618).unwrap();
        let (v, _) = variants(&f, &["recv_budget", "bundle"], "adaptive");
        let budget_off = v.iter().find(|v| v.name == "recv_budget=off").unwrap();
        let bundle_on = v.iter().find(|v| v.name == "bundle=on").unwrap();
        let without_budget = LINE_618.replace("recv_budget,", "");
        assert_eq!(check_flip(budget_off, Some(&without_budget)), Ok(()));
        let err = check_flip(budget_off, Some(LINE_618)).unwrap_err();
        assert!(err.contains("recv_budget in use"), "{err}");
        assert!(check_flip(bundle_on, Some(LINE_618)).is_err());
        let with_bundle = LINE_618.replace("in_use=", "in_use=bundle,");
        assert_eq!(check_flip(bundle_on, Some(&with_bundle)), Ok(()));
        assert!(check_flip(bundle_on, None).is_err());
        // Batching variants have nothing to check in the features line.
        assert_eq!(check_flip(&v[0], None), Ok(()));
    }

    fn effect(cpu: &[f64], rate: &[f64]) -> Effect {
        Effect {
            cell: Cell::new(50, 128),
            cpu: summarize(cpu),
            rate: summarize(rate),
            p50: summarize(&[1.0; 9]),
            p99: summarize(&[0.9, 1.1, 1.0, 0.95, 1.05, 1.0, 1.0, 0.98, 1.02]),
        }
    }

    #[test]
    fn verdicts_from_synthetic_effects() {
        let noise = [0.97, 1.02, 0.99, 1.01, 1.0, 0.98, 1.03, 0.99, 1.01];
        let lower = [0.90, 0.91, 0.92, 0.93, 0.90, 0.89, 0.91, 0.92, 0.90];
        let higher = [1.10, 1.09, 1.12, 1.08, 1.11, 1.10, 1.09, 1.13, 1.10];
        let v = verdict(&[effect(&noise, &noise)]);
        assert_eq!(v.word, Word::Noise);
        assert!(v.evidence.is_empty());

        let v = verdict(&[effect(&lower, &noise)]);
        assert_eq!(v.word, Word::Helps);
        assert_eq!(v.evidence.len(), 1);
        assert!(v.evidence[0].starts_with("better: CPU/msg 0.910×"), "{v:?}");
        assert!(v.evidence[0].ends_with("at 50 × 128 B"), "{v:?}");

        assert_eq!(verdict(&[effect(&higher, &noise)]).word, Word::Hurts);
        assert_eq!(verdict(&[effect(&noise, &higher)]).word, Word::Helps);
        assert_eq!(verdict(&[effect(&noise, &lower)]).word, Word::Hurts);
        let v = verdict(&[effect(&lower, &noise), effect(&noise, &lower)]);
        assert_eq!(v.word, Word::Mixed);
        assert_eq!(v.evidence.len(), 2);
        assert!(v.evidence[1].starts_with("worse: msgs/s"));

        // Two rounds decide nothing.
        let e = Effect {
            cell: Cell::new(1, 128),
            cpu: summarize(&[0.5, 0.6]),
            rate: summarize(&[]),
            p50: summarize(&[]),
            p99: summarize(&[]),
        };
        assert_eq!(verdict(&[e]).word, Word::Undecided);
    }
}
