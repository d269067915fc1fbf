//! Copying named tensors into a `tch::nn::VarStore` by exact name, and reading them back out.
//!
//! Loading is exact by default: a missing, unexpected or wrongly shaped key is an error that
//! lists every problem, each with a "did you mean" from the other side. A partial load applies
//! what matches and reports the rest.

use std::collections::{HashMap, HashSet};
use std::fmt;
use tch::nn::VarStore;
use tch::Tensor;

/// How strictly [`apply_state_dict`] matches names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadMode {
    /// Every variable must receive a tensor of its shape and every tensor must find its
    /// variable; otherwise nothing is copied and an error lists the problems.
    #[default]
    Strict,
    /// Copy the tensors whose name and shape match; report missing, unexpected and mismatched
    /// keys in the [`LoadReport`].
    Partial,
}

/// A key whose tensor has a different shape than its variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The key.
    pub key: String,
    /// The variable's shape.
    pub expected: Vec<i64>,
    /// The given tensor's shape.
    pub found: Vec<i64>,
}

/// A key without a partner, with the nearest key from the other side if one is close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmatchedKey {
    /// The key.
    pub key: String,
    /// The closest key on the other side (by edit distance), if close enough to be a likely typo.
    pub did_you_mean: Option<String>,
}

impl fmt::Display for UnmatchedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key)?;
        if let Some(s) = &self.did_you_mean {
            write!(f, " (did you mean `{s}`?)")?;
        }
        Ok(())
    }
}

/// What [`apply_state_dict`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Keys copied into the var store.
    pub applied: Vec<String>,
    /// Variables of the var store that received no tensor.
    pub missing: Vec<UnmatchedKey>,
    /// Tensors whose key names no variable.
    pub unexpected: Vec<UnmatchedKey>,
    /// Keys present on both sides with different shapes (not copied).
    pub shape_mismatches: Vec<ShapeMismatch>,
}

impl LoadReport {
    /// Whether every variable was loaded and every tensor used.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape_mismatches.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} applied, {} missing, {} unexpected, {} with a different shape",
            self.applied.len(),
            self.missing.len(),
            self.unexpected.len(),
            self.shape_mismatches.len()
        )?;
        for m in &self.missing {
            write!(f, "\n  missing:    {m}")?;
        }
        for u in &self.unexpected {
            write!(f, "\n  unexpected: {u}")?;
        }
        for s in &self.shape_mismatches {
            write!(
                f,
                "\n  shape:      {}: model has {:?}, weights have {:?}",
                s.key, s.expected, s.found
            )?;
        }
        Ok(())
    }
}

/// Why weights could not be applied to a var store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Strict loading found keys that do not match; nothing was copied.
    #[error("the weights do not match the model: {0}")]
    Mismatch(LoadReport),
    /// The same key was given twice.
    #[error("the weights contain the key `{0}` twice")]
    DuplicateKey(String),
    /// libtorch failed to copy a tensor (e.g. an unsupported dtype conversion).
    #[error("copying `{key}` into the model failed: {source}")]
    Copy {
        /// The key being copied.
        key: String,
        /// The libtorch error.
        #[source]
        source: tch::TchError,
    },
}

/// The edit-distance threshold for a "did you mean": a third of the key, at least 2.
fn nearest<'a>(key: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    let limit = (key.len() / 3).max(2);
    candidates
        .map(|c| (strsim::levenshtein(key, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c.to_string())
}

/// Copies `tensors` into the variables of `vs` with the same name, without recording gradients.
///
/// Names are matched exactly (segment_anything's state_dict keys equal our variable paths).
/// Values are converted to the variable's dtype and device. In [`LoadMode::Strict`] any
/// missing, unexpected or wrongly shaped key makes this an error listing all of them, and the
/// var store is left untouched; in [`LoadMode::Partial`] matching tensors are copied and the
/// others reported.
pub fn apply_state_dict(
    vs: &VarStore,
    tensors: &[(String, Tensor)],
    mode: LoadMode,
) -> Result<LoadReport, LoadError> {
    let variables = vs.variables();
    let mut given: HashMap<&str, &Tensor> = HashMap::with_capacity(tensors.len());
    for (k, t) in tensors {
        if given.insert(k.as_str(), t).is_some() {
            return Err(LoadError::DuplicateKey(k.clone()));
        }
    }
    let mut report = LoadReport::default();
    let mut to_copy = Vec::new();
    let mut matched: HashSet<&str> = HashSet::new();
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort_by(|a, b| natural_cmp(a, b));
    for name in names {
        match given.get(name.as_str()) {
            Some(src) => {
                matched.insert(name.as_str());
                let dst = &variables[name];
                if dst.size() != src.size() {
                    report.shape_mismatches.push(ShapeMismatch {
                        key: name.clone(),
                        expected: dst.size(),
                        found: src.size(),
                    });
                } else {
                    to_copy.push((name, dst, *src));
                }
            }
            None => report.missing.push(UnmatchedKey {
                key: name.clone(),
                did_you_mean: None,
            }),
        }
    }
    for (k, _) in tensors {
        if !matched.contains(k.as_str()) {
            report.unexpected.push(UnmatchedKey {
                key: k.clone(),
                did_you_mean: None,
            });
        }
    }
    // Suggestions pair the two unmatched sides.
    let unexpected_keys: Vec<String> = report.unexpected.iter().map(|u| u.key.clone()).collect();
    let missing_keys: Vec<String> = report.missing.iter().map(|m| m.key.clone()).collect();
    for m in &mut report.missing {
        m.did_you_mean = nearest(&m.key, unexpected_keys.iter().map(String::as_str));
    }
    for u in &mut report.unexpected {
        u.did_you_mean = nearest(&u.key, missing_keys.iter().map(String::as_str));
    }
    if mode == LoadMode::Strict && !report.is_exact() {
        return Err(LoadError::Mismatch(report));
    }
    tch::no_grad(|| {
        for (name, dst, src) in to_copy {
            let mut dst = dst.shallow_clone();
            dst.f_copy_(src).map_err(|source| LoadError::Copy {
                key: name.clone(),
                source,
            })?;
            report.applied.push(name.clone());
        }
        Ok::<(), LoadError>(())
    })?;
    Ok(report)
}

/// All variables of `vs` with their names, in natural key order (block 10 after block 9),
/// sharing storage with the var store. Write them with
/// [`write_sam_state_dict`](crate::write_sam_state_dict).
pub fn named_tensors(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.detach()))
        .collect();
    sort_state_dict(&mut out);
    out
}

/// Sorts named tensors in natural key order.
pub(crate) fn sort_state_dict(tensors: &mut [(String, Tensor)]) {
    tensors.sort_by(|(a, _), (b, _)| natural_cmp(a, b));
}

/// Compares dotted keys segment by segment, numbers numerically (`blocks.2` < `blocks.10`).
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(p), Some(q)) => {
                let ord = match (p.parse::<u64>(), q.parse::<u64>()) {
                    (Ok(i), Ok(j)) => i.cmp(&j),
                    _ => p.cmp(q),
                };
                if ord.is_ne() {
                    return ord;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn store() -> VarStore {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = (&root / "a").zeros("weight", &[2, 3]);
        let _ = (&root / "blocks" / 10).zeros("bias", &[2]);
        let _ = (&root / "blocks" / 2).zeros("bias", &[2]);
        let _ = root.zeros_no_train("buffer", &[1]);
        vs
    }

    fn t(shape: &[i64], value: f64) -> Tensor {
        Tensor::full(shape, value, (Kind::Float, Device::Cpu))
    }

    #[test]
    fn strict_load_copies_everything_without_grad() {
        let vs = store();
        let weights = vec![
            ("a.weight".to_string(), t(&[2, 3], 1.5)),
            ("blocks.10.bias".to_string(), t(&[2], 2.0)),
            ("blocks.2.bias".to_string(), t(&[2], 3.0)),
            ("buffer".to_string(), Tensor::from_slice(&[7.0f64])), // f64 into an f32 buffer
        ];
        let report = apply_state_dict(&vs, &weights, LoadMode::Strict).unwrap();
        assert_eq!(
            report.applied,
            ["a.weight", "blocks.2.bias", "blocks.10.bias", "buffer"]
        );
        let vars = vs.variables();
        assert_eq!(vars["a.weight"].sum(Kind::Float).double_value(&[]), 9.0);
        assert_eq!(vars["blocks.10.bias"].double_value(&[1]), 2.0);
        assert_eq!(vars["buffer"].double_value(&[0]), 7.0);
        assert_eq!(vars["buffer"].kind(), Kind::Float);
        assert!(
            vars["a.weight"].requires_grad(),
            "variables stay trainable after the copy"
        );
    }

    #[test]
    fn strict_load_lists_every_problem_and_copies_nothing() {
        let vs = store();
        let weights = vec![
            ("a.weigth".to_string(), t(&[2, 3], 1.0)),    // typo
            ("blocks.10.bias".to_string(), t(&[3], 1.0)), // wrong shape
            ("blocks.2.bias".to_string(), t(&[2], 1.0)),
            ("buffer".to_string(), t(&[1], 1.0)),
            ("extra".to_string(), t(&[1], 1.0)),
        ];
        let err = apply_state_dict(&vs, &weights, LoadMode::Strict).unwrap_err();
        let LoadError::Mismatch(report) = &err else {
            panic!("{err}")
        };
        assert_eq!(
            report.missing,
            [UnmatchedKey {
                key: "a.weight".into(),
                did_you_mean: Some("a.weigth".into())
            }]
        );
        assert_eq!(report.unexpected.len(), 2);
        assert_eq!(
            report.unexpected[0].did_you_mean.as_deref(),
            Some("a.weight")
        );
        assert_eq!(
            report.unexpected[1],
            UnmatchedKey {
                key: "extra".into(),
                did_you_mean: None
            }
        );
        assert_eq!(
            report.shape_mismatches,
            [ShapeMismatch {
                key: "blocks.10.bias".into(),
                expected: vec![2],
                found: vec![3]
            }]
        );
        let text = err.to_string();
        assert!(
            text.contains("missing:    a.weight (did you mean `a.weigth`?)"),
            "{text}"
        );
        assert!(
            text.contains("blocks.10.bias: model has [2], weights have [3]"),
            "{text}"
        );
        // Nothing was copied, not even the matching keys.
        assert_eq!(
            vs.variables()["blocks.2.bias"]
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
    }

    #[test]
    fn partial_load_applies_matches_and_reports_the_rest() {
        let vs = store();
        let weights = vec![
            ("blocks.2.bias".to_string(), t(&[2], 4.0)),
            ("x".to_string(), t(&[1], 1.0)),
        ];
        let report = apply_state_dict(&vs, &weights, LoadMode::Partial).unwrap();
        assert_eq!(report.applied, ["blocks.2.bias"]);
        assert_eq!(report.missing.len(), 3);
        assert_eq!(report.unexpected[0].key, "x");
        assert_eq!(vs.variables()["blocks.2.bias"].double_value(&[0]), 4.0);
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let vs = store();
        let weights = vec![
            ("buffer".to_string(), t(&[1], 1.0)),
            ("buffer".to_string(), t(&[1], 2.0)),
        ];
        assert!(matches!(
            apply_state_dict(&vs, &weights, LoadMode::Partial),
            Err(LoadError::DuplicateKey(k)) if k == "buffer"
        ));
    }

    #[test]
    fn named_tensors_are_in_natural_order_and_share_storage() {
        let vs = store();
        let named = named_tensors(&vs);
        let keys: Vec<_> = named.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["a.weight", "blocks.2.bias", "blocks.10.bias", "buffer"]
        );
        let _ = tch::no_grad(|| vs.variables()["buffer"].shallow_clone().fill_(5.0));
        assert_eq!(named[3].1.double_value(&[0]), 5.0);
    }
}
