//! The `features:` line: which kernel features one server process uses, lacks, or leaves off.
//!
//! Format (a contract: echo-bench stores the line of the servers it spawns verbatim, scripts
//! parse it), printed once per process to stderr before the `listening on` line:
//!
//! ```text
//! features: runtime=<runtime> kernel=<uname -r> in_use=<list> missing=<list> off=<list>
//! ```
//!
//! Every list is comma-separated [`Feature::name`]s in [`Feature::ALL`] order, or `-` when
//! empty, so every value is one token. `in_use`: what this run uses. `missing`: what the engine
//! would use here but the kernel lacks (the engine takes its fallback). `off`: what the kernel
//! has but this run does not use (a flag or a default leaves it off, or the engine does not
//! implement it yet). A feature the kernel lacks and the engine would not use anyway is not
//! listed. The epoll runtime uses no io_uring feature: its lists are all `-`.
//!
//! The exit `summary:` line ends with the same information, shorter: ` kernel=<uname -r>
//! features=<in_use list>`.

use std::fmt;

use super::{kernel_release, Feature, Features};

/// What one engine does with each feature in this run (see the module docs for the meaning of
/// the three lists). Engines build it from [`Features`] with [`Usage::decide`] and take their
/// decisions from it, so the `features:` line cannot disagree with what runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    in_use: u32,
    missing: u32,
    off: u32,
}

impl Usage {
    /// Nothing decided yet.
    pub fn new() -> Usage {
        Usage::default()
    }

    /// The engine would use `feature` if `enabled` (by default or by a flag); records what
    /// happens on this kernel and returns whether it is used.
    pub fn decide(&mut self, feature: Feature, enabled: bool, features: &Features) -> bool {
        let available = features.has(feature);
        let list = match (enabled, available) {
            (true, true) => &mut self.in_use,
            (true, false) => &mut self.missing,
            (false, true) => &mut self.off,
            (false, false) => return false,
        };
        *list |= feature.bit();
        enabled && available
    }

    /// Whether this run uses `feature`.
    pub fn uses(&self, feature: Feature) -> bool {
        self.in_use & feature.bit() != 0
    }

    /// Features this run uses.
    pub fn in_use(&self) -> Vec<Feature> {
        list(self.in_use)
    }

    /// Features the engine would use but the kernel lacks.
    pub fn missing(&self) -> Vec<Feature> {
        list(self.missing)
    }

    /// Features the kernel has that this run does not use.
    pub fn off(&self) -> Vec<Feature> {
        list(self.off)
    }
}

fn list(bits: u32) -> Vec<Feature> {
    Feature::ALL
        .into_iter()
        .filter(|f| bits & f.bit() != 0)
        .collect()
}

/// A list as the line shows it: `a,b,c`, or `-` when empty.
fn show(features: &[Feature]) -> String {
    if features.is_empty() {
        return "-".into();
    }
    features
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(",")
}

/// The `features:` line of one server process; `Display` gives the whole line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureReport {
    /// `--runtime` value.
    pub runtime: String,
    /// `uname -r`.
    pub kernel: String,
    /// What the engine does with each feature (all empty for epoll).
    pub usage: Usage,
}

impl FeatureReport {
    /// The report of `runtime` with `usage`, on the running kernel.
    pub fn new(runtime: impl fmt::Display, usage: Usage) -> FeatureReport {
        FeatureReport {
            runtime: runtime.to_string(),
            kernel: kernel_release(),
            usage,
        }
    }

    /// What the exit `summary:` line appends: `kernel=<uname -r> features=<in_use list>
    /// missing=<missing list>`, so that a saved summary alone says what produced it.
    pub fn summary_suffix(&self) -> String {
        format!(
            "kernel={} features={} missing={}",
            self.kernel,
            show(&self.usage.in_use()),
            show(&self.usage.missing())
        )
    }
}

impl fmt::Display for FeatureReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "features: runtime={} kernel={} in_use={} missing={} off={}",
            self.runtime,
            self.kernel,
            show(&self.usage.in_use()),
            show(&self.usage.missing()),
            show(&self.usage.off())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_sorts_features_into_the_three_lists() {
        let mut kernel = Features::io_uring_only();
        kernel.set(Feature::RecvBudget, true);
        kernel.set(Feature::SendZc, true);
        kernel.set(Feature::Nodrop, true);
        let mut u = Usage::new();
        assert!(u.decide(Feature::RecvBudget, true, &kernel));
        assert!(!u.decide(Feature::MultishotTimeout, true, &kernel));
        assert!(!u.decide(Feature::SendZc, false, &kernel));
        assert!(!u.decide(Feature::Bundle, false, &kernel));
        assert!(u.decide(Feature::Nodrop, true, &kernel));
        assert!(u.uses(Feature::RecvBudget) && !u.uses(Feature::SendZc));
        // Listed in Feature::ALL order, whatever the order of the decisions.
        assert_eq!(u.in_use(), [Feature::Nodrop, Feature::RecvBudget]);
        assert_eq!(u.missing(), [Feature::MultishotTimeout]);
        assert_eq!(u.off(), [Feature::SendZc]);
        let report = FeatureReport {
            runtime: "uring-multishot".into(),
            kernel: "6.1.0-57-cloud-amd64".into(),
            usage: u,
        };
        assert_eq!(
            report.to_string(),
            "features: runtime=uring-multishot kernel=6.1.0-57-cloud-amd64 \
             in_use=nodrop,recv_budget missing=timeout_multishot off=send_zc"
        );
        assert_eq!(
            report.summary_suffix(),
            "kernel=6.1.0-57-cloud-amd64 features=nodrop,recv_budget missing=timeout_multishot"
        );
    }

    #[test]
    fn empty_lists_are_a_dash() {
        let report = FeatureReport {
            runtime: "epoll".into(),
            kernel: "6.18.0".into(),
            usage: Usage::new(),
        };
        assert_eq!(
            report.to_string(),
            "features: runtime=epoll kernel=6.18.0 in_use=- missing=- off=-"
        );
        assert_eq!(
            report.summary_suffix(),
            "kernel=6.18.0 features=- missing=-"
        );
    }
}
