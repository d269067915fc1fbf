//! Learning-rate schedules, early stopping and checkpoint decisions: small pure state machines
//! whose state is saved in checkpoints.

use serde::{Deserialize, Serialize};

/// Which learning-rate schedule to run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Multiply the rate by `factor` when the validation metric has not improved for `patience`
    /// epochs (`torch.optim.lr_scheduler.ReduceLROnPlateau`, mode "max", relative threshold 1e-4).
    ReduceOnPlateau {
        /// Multiplicative decay.
        #[serde(with = "crate::checkpoint::exact_f64")]
        factor: f64,
        /// Epochs without improvement before decaying.
        patience: u32,
    },
    /// Cosine annealing from the base rate to `min_lr` over `total_epochs`.
    Cosine {
        /// Number of epochs of the cosine half-period.
        total_epochs: u32,
        /// Final learning rate.
        #[serde(with = "crate::checkpoint::exact_f64")]
        min_lr: f64,
    },
    /// The base rate throughout.
    Constant,
}

/// A learning-rate scheduler stepped once per epoch with the validation metric (higher is better).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrScheduler {
    kind: ScheduleKind,
    #[serde(with = "crate::checkpoint::exact_f64")]
    base_lr: f64,
    #[serde(with = "crate::checkpoint::exact_f64")]
    lr: f64,
    #[serde(with = "crate::checkpoint::exact_f64::option")]
    best: Option<f64>,
    bad_epochs: u32,
    epochs: u32,
}

impl LrScheduler {
    /// A scheduler starting at `base_lr`.
    pub fn new(kind: ScheduleKind, base_lr: f64) -> Self {
        Self {
            kind,
            base_lr,
            lr: base_lr,
            best: None,
            bad_epochs: 0,
            epochs: 0,
        }
    }

    /// The learning rate to use now.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Records the end of an epoch with its validation metric; returns the new learning rate.
    pub fn step(&mut self, metric: f64) -> f64 {
        self.epochs += 1;
        match self.kind {
            ScheduleKind::ReduceOnPlateau { factor, patience } => {
                // torch's rel threshold in max mode: improved when metric > best * (1 + 1e-4).
                let improved = match self.best {
                    None => true,
                    Some(best) => metric > best * (1.0 + 1e-4),
                };
                if improved {
                    self.best = Some(metric);
                    self.bad_epochs = 0;
                } else {
                    self.bad_epochs += 1;
                    if self.bad_epochs > patience {
                        self.lr *= factor;
                        self.bad_epochs = 0;
                    }
                }
            }
            ScheduleKind::Cosine {
                total_epochs,
                min_lr,
            } => {
                let t = (self.epochs.min(total_epochs.max(1)) as f64) / total_epochs.max(1) as f64;
                self.lr = min_lr
                    + 0.5 * (self.base_lr - min_lr) * (1.0 + (std::f64::consts::PI * t).cos());
            }
            ScheduleKind::Constant => {}
        }
        self.lr
    }
}

/// Stops training when the validation metric has not improved for `patience` epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    patience: Option<u32>,
    #[serde(with = "crate::checkpoint::exact_f64::option")]
    best: Option<f64>,
    bad_epochs: u32,
}

impl EarlyStopping {
    /// `None` disables early stopping.
    pub fn new(patience: Option<u32>) -> Self {
        Self {
            patience,
            best: None,
            bad_epochs: 0,
        }
    }

    /// Records an epoch's metric (higher is better); returns true when training should stop.
    pub fn update(&mut self, metric: f64) -> bool {
        if self.best.is_none_or(|b| metric > b) {
            self.best = Some(metric);
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        self.patience.is_some_and(|p| self.bad_epochs >= p)
    }
}

/// What to write after a validation: a pure decision, tested on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointDecision {
    /// Overwrite `latest`.
    pub save_latest: bool,
    /// Overwrite `best` (the metric beat every earlier one).
    pub save_best: bool,
}

/// Decides which checkpoints to write: `latest` always, `best` when the validation scores
/// `(mSA, Dice)` beat `best_so_far` (or there is none yet): a strictly higher mSA, or the same
/// mSA with a strictly higher box-prompted Dice. The tie-break matters early in training, when
/// no object is matched at IoU ≥ 0.5 and mSA is 0 for several epochs while the masks improve.
/// NaN scores never become best.
pub fn checkpoint_decision(
    scores: (f64, f64),
    best_so_far: Option<(f64, f64)>,
) -> CheckpointDecision {
    let (msa, dice) = scores;
    let save_best = !msa.is_nan()
        && !dice.is_nan()
        && best_so_far.is_none_or(|(best_msa, best_dice)| {
            msa > best_msa || (msa == best_msa && dice > best_dice)
        });
    CheckpointDecision {
        save_latest: true,
        save_best,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plateau_decays_after_patience_bad_epochs() {
        let mut s = LrScheduler::new(
            ScheduleKind::ReduceOnPlateau {
                factor: 0.9,
                patience: 3,
            },
            1.0,
        );
        assert_eq!(s.step(0.5), 1.0); // first: best
        assert_eq!(s.step(0.5), 1.0); // bad 1
        assert_eq!(s.step(0.4), 1.0); // bad 2
        assert_eq!(s.step(0.5), 1.0); // bad 3 (not above best * 1.0001)
        assert!((s.step(0.5) - 0.9).abs() < 1e-15); // bad 4 > patience → decay, counter reset
        assert!((s.step(0.6) - 0.9).abs() < 1e-15); // improvement
    }

    #[test]
    fn cosine_reaches_min_at_the_end() {
        let mut s = LrScheduler::new(
            ScheduleKind::Cosine {
                total_epochs: 4,
                min_lr: 0.0,
            },
            1.0,
        );
        let lrs: Vec<f64> = (0..4).map(|_| s.step(0.0)).collect();
        assert!((lrs[1] - 0.5).abs() < 1e-12, "{lrs:?}"); // half way: (1 + cos(pi/2)) / 2
        assert!(lrs[3].abs() < 1e-12, "{lrs:?}");
    }

    #[test]
    fn early_stopping_counts_epochs_without_improvement() {
        let mut e = EarlyStopping::new(Some(2));
        assert!(!e.update(0.1));
        assert!(!e.update(0.05));
        assert!(e.update(0.1)); // equal is not an improvement
        let mut off = EarlyStopping::new(None);
        assert!((0..10).all(|_| !off.update(0.0)));
    }

    #[test]
    fn best_checkpoint_only_on_strict_improvement() {
        assert!(checkpoint_decision((0.3, 0.5), None).save_best);
        assert!(checkpoint_decision((0.4, 0.1), Some((0.3, 0.5))).save_best);
        assert!(!checkpoint_decision((0.3, 0.5), Some((0.3, 0.5))).save_best);
        assert!(!checkpoint_decision((0.2, 0.9), Some((0.3, 0.5))).save_best);
        // Equal mSA (e.g. still 0): better Dice wins, worse does not.
        assert!(checkpoint_decision((0.0, 0.3), Some((0.0, 0.2))).save_best);
        assert!(!checkpoint_decision((0.0, 0.1), Some((0.0, 0.2))).save_best);
        assert!(!checkpoint_decision((f64::NAN, 0.5), None).save_best);
        assert!(checkpoint_decision((0.1, 0.0), Some((0.3, 0.5))).save_latest);
    }
}
