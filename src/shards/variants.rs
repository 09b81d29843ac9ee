//! Checkpoints whose names differ from a plain state_dict's in ways r2rc reads through: a
//! wrapper prefix on every name, batch norms without `num_batches_tracked`.

use std::collections::{BTreeSet, HashSet};

/// Prefixes PyTorch's wrappers put before every name of a model's state_dict:
/// DistributedDataParallel and DataParallel (`module.`), torch.compile (`_orig_mod.`).
pub const WRAPPER_PREFIXES: [&str; 2] = ["module.", "_orig_mod."];

/// How a checkpoint's tensor names differ from a plain state_dict's in ways PyTorch users
/// meet and r2rc reads through: a wrapper prefix on every name, and batch norms without
/// `num_batches_tracked` (checkpoints older than PyTorch 0.4.1, such as torchvision's
/// original ResNet weights; PyTorch's `load_state_dict` sets such counters to 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variants {
    /// The wrapper prefix every name carries (`module.`, or nested ones such as
    /// `module._orig_mod.`), read without it; empty when none.
    pub prefix: String,
    /// Counters `X.num_batches_tracked` (names without the prefix) the checkpoint lacks
    /// though it holds `X.running_mean` and `X.running_var`: read as 0.
    pub zero_counters: BTreeSet<String>,
}

impl Variants {
    /// The variants of a checkpoint holding tensors `names`.
    pub fn of(names: &[&str]) -> Variants {
        let mut prefix = String::new();
        // Peel wrappers while every name carries one (DDP around torch.compile nests).
        while let Some(p) = WRAPPER_PREFIXES.iter().find(|p| {
            !names.is_empty()
                && names.iter().all(|n| {
                    n.strip_prefix(prefix.as_str())
                        .is_some_and(|r| r.len() > p.len() && r.starts_with(**p))
                })
        }) {
            prefix.push_str(p);
        }
        let plain: HashSet<&str> = names.iter().map(|n| &n[prefix.len()..]).collect();
        let zero_counters = plain
            .iter()
            .filter_map(|n| n.strip_suffix(".running_mean"))
            .filter(|bn| {
                plain.contains(format!("{bn}.running_var").as_str())
                    && !plain.contains(format!("{bn}.num_batches_tracked").as_str())
            })
            .map(|bn| format!("{bn}.num_batches_tracked"))
            .collect();
        Variants {
            prefix,
            zero_counters,
        }
    }

    /// The name a tensor `name` of the network has in the checkpoint.
    pub fn file_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// What a command tells the user about reading `shown` this way (nothing for a plain
    /// state_dict).
    pub fn notes(&self, shown: &str) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.prefix.is_empty() {
            let what = match self.prefix.as_str() {
                "module." => "a DistributedDataParallel or DataParallel checkpoint",
                "_orig_mod." => "a torch.compile checkpoint",
                _ => "a checkpoint of a wrapped model",
            };
            notes.push(format!(
                "every tensor name in {shown} starts with `{}` ({what}): read without the prefix",
                self.prefix
            ));
        }
        if let Some(first) = self.zero_counters.iter().next() {
            let n = self.zero_counters.len();
            notes.push(format!(
                "{shown} lacks `num_batches_tracked` for {n} batch norm{} (`{first}`{}), as checkpoints older than PyTorch 0.4.1 do: read as 0, as PyTorch's load_state_dict does",
                if n == 1 { "" } else { "s" },
                if n == 1 { "" } else { " and others" },
            ));
        }
        notes
    }
}

/// A hint for a tensor `name` the checkpoint `shown` lacks when it holds it under a
/// wrapper prefix (`module.name`) that not every tensor name carries.
pub fn partial_prefix_hint(name: &str, has: impl Fn(&str) -> bool, shown: &str) -> Option<String> {
    let p = WRAPPER_PREFIXES
        .iter()
        .find(|p| has(&format!("{p}{name}")))?;
    Some(format!(
        "{shown} holds `{p}{name}`: some of its tensor names carry the `{p}` prefix of a wrapped model and others do not; r2rc strips a prefix only when every name has it (save the unwrapped model's state_dict, e.g. `model.module.state_dict()`)"
    ))
}
