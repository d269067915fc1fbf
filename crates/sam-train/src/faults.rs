//! Faults injected into one rank by tests, through `SAM_TRAIN_INJECT_FAULTS`.

use crate::checkpoint::Slot;
use crate::TrainError;

/// Faults a test can inject into one rank through `SAM_TRAIN_INJECT_FAULTS`, to prove that
/// ranks still decide together: `rank=R;validation_offset=X;nonfinite_at=I,J` makes rank R
/// add X to its validation mSA and Dice, and see a NaN loss and gradients at (0-based)
/// iterations I, J; and that a kill during a checkpoint write loses nothing:
/// `pause_checkpoint_write_at=N` makes the write of `latest` after iteration N stop half-way
/// for a minute (the test kills the process there). Unset in real runs.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct FaultInjection {
    rank: Option<usize>,
    validation_offset: f64,
    nonfinite_at: Vec<u64>,
    pause_checkpoint_write_at: Option<u64>,
}

/// How long a checkpoint write injected with `pause_checkpoint_write_at` stops.
const CHECKPOINT_PAUSE: std::time::Duration = std::time::Duration::from_secs(60);

/// The variable [`FaultInjection`] is read from.
const FAULTS_VAR: &str = "SAM_TRAIN_INJECT_FAULTS";

impl FaultInjection {
    pub(crate) fn from_env() -> Result<Self, TrainError> {
        match std::env::var(FAULTS_VAR) {
            Ok(v) => Self::parse(&v),
            Err(_) => Ok(Self::default()),
        }
    }

    fn parse(spec: &str) -> Result<Self, TrainError> {
        let bad = |part: &str| {
            TrainError::Usage(format!(
                "{FAULTS_VAR}: cannot read `{part}` (expected \
                 rank=R;validation_offset=X;nonfinite_at=I,J;pause_checkpoint_write_at=N)"
            ))
        };
        let mut f = Self::default();
        for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| bad(part))?;
            match key.trim() {
                "rank" => f.rank = Some(value.trim().parse().map_err(|_| bad(part))?),
                "validation_offset" => {
                    f.validation_offset = value.trim().parse().map_err(|_| bad(part))?
                }
                "nonfinite_at" => {
                    f.nonfinite_at = value
                        .split(',')
                        .map(|i| i.trim().parse().map_err(|_| bad(part)))
                        .collect::<Result<_, _>>()?
                }
                "pause_checkpoint_write_at" => {
                    f.pause_checkpoint_write_at = Some(value.trim().parse().map_err(|_| bad(part))?)
                }
                _ => return Err(bad(part)),
            }
        }
        Ok(f)
    }

    fn applies_to(&self, rank: usize) -> bool {
        self.rank.is_none_or(|r| r == rank)
    }

    pub(crate) fn validation_offset(&self, rank: usize) -> f64 {
        if self.applies_to(rank) {
            self.validation_offset
        } else {
            0.0
        }
    }

    pub(crate) fn nonfinite_at(&self, rank: usize, iteration: u64) -> bool {
        self.applies_to(rank) && self.nonfinite_at.contains(&iteration)
    }

    /// The pause of the write of `slot` after `iteration` completed steps.
    pub(crate) fn checkpoint_pause(
        &self,
        rank: usize,
        slot: Slot,
        iteration: u64,
    ) -> Option<std::time::Duration> {
        (self.applies_to(rank)
            && slot == Slot::Latest
            && self.pause_checkpoint_write_at == Some(iteration))
        .then_some(CHECKPOINT_PAUSE)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{FaultInjection, Slot, CHECKPOINT_PAUSE};

    #[test]
    fn fault_injection_spec() {
        let f = FaultInjection::parse(
            "rank=1; validation_offset=0.25;nonfinite_at=2,5;pause_checkpoint_write_at=4",
        )
        .unwrap();
        assert_eq!(f.validation_offset(1), 0.25);
        assert_eq!(
            f.checkpoint_pause(1, Slot::Latest, 4),
            Some(CHECKPOINT_PAUSE)
        );
        assert_eq!(f.checkpoint_pause(1, Slot::Best, 4), None);
        assert_eq!(f.checkpoint_pause(1, Slot::Latest, 3), None);
        assert_eq!(f.checkpoint_pause(0, Slot::Latest, 4), None);
        assert_eq!(f.validation_offset(0), 0.0);
        assert!(f.nonfinite_at(1, 5) && !f.nonfinite_at(1, 3) && !f.nonfinite_at(0, 5));
        assert_eq!(
            FaultInjection::parse("").unwrap(),
            FaultInjection::default()
        );
        let err = FaultInjection::parse("rank=one").unwrap_err().to_string();
        assert!(err.contains("rank=one"), "{err}");
        assert!(FaultInjection::parse("colour=red").is_err());
    }
}
