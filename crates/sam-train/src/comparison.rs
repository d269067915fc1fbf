//! The run's `logs/comparison.csv`: the validation scores of the starting model (before the
//! first step) beside those of the exported model (at the end), so that a run shows whether
//! fine-tuning helped.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::report::EpochRecord;
use crate::validation::ValidationScores;
use crate::TrainError;

/// When a row of `comparison.csv` was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComparisonStage {
    /// The starting model (`model.checkpoint`), before the first step.
    Start,
    /// The exported model (the best validation mSA), when the run finished.
    End,
}

/// One row of `comparison.csv`: the validation scores of one model, as `metrics.csv` records
/// them each epoch (the same patches and the same evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRecord {
    /// `start` or `end`.
    pub stage: ComparisonStage,
    /// The epoch after which the model was validated (0: the starting model).
    pub epoch: u64,
    /// Optimiser steps done then.
    pub iteration: u64,
    /// Mean segmentation accuracy of the merged box-prompted masks.
    #[serde(rename = "mSA")]
    pub msa: f64,
    /// SA at IoU 0.5.
    #[serde(rename = "SA50")]
    pub sa50: f64,
    /// Mean IoU of the box-prompted masks.
    pub box_iou: f64,
    /// Dice of the box-prompted masks.
    pub dice: f64,
}

impl ComparisonRecord {
    /// The row of `scores`.
    pub fn new(
        stage: ComparisonStage,
        epoch: u64,
        iteration: u64,
        scores: &ValidationScores,
    ) -> Self {
        Self {
            stage,
            epoch,
            iteration,
            msa: scores.msa,
            sa50: scores.sa50,
            box_iou: scores.box_iou,
            dice: scores.dice,
        }
    }

    /// The row of a `metrics.csv` epoch.
    pub fn from_epoch(stage: ComparisonStage, e: &EpochRecord) -> Self {
        Self {
            stage,
            epoch: e.epoch,
            iteration: e.iteration,
            msa: e.val_msa,
            sa50: e.val_sa50,
            box_iou: e.val_box_iou,
            dice: e.val_dice,
        }
    }
}

/// The epoch whose model is `best` (the exported one): the first whose validation mSA and
/// Dice are the best ones recorded in the state (`best` is written only when the scores beat
/// it, so later epochs with equal scores were not saved). Without a recorded Dice (a state of
/// an earlier version) the mSA alone decides.
pub fn best_epoch(
    rows: &[EpochRecord],
    best_msa: f64,
    best_dice: Option<f64>,
) -> Option<&EpochRecord> {
    rows.iter()
        .find(|r| r.val_msa == best_msa && best_dice.is_none_or(|d| r.val_dice == d))
}

/// The console line of a comparison: `validation mSA 0.41 -> 0.55 (+0.14)`.
pub fn comparison_line(start: &ComparisonRecord, end: &ComparisonRecord) -> String {
    format!(
        "validation mSA {:.2} -> {:.2} ({:+.2}) from the starting model to the exported one \
         (epoch {}); SA50 {:.2} -> {:.2}",
        start.msa,
        end.msa,
        end.msa - start.msa,
        end.epoch,
        start.sa50,
        end.sa50
    )
}

/// Reads and writes `logs/comparison.csv`: at most one `start` row (never replaced, so that
/// a resumed run keeps the scores of the model the run started from) and one `end` row
/// (replaced by each finish).
#[derive(Debug, Clone)]
pub struct ComparisonLog {
    csv: PathBuf,
}

impl ComparisonLog {
    /// The log of `dir/comparison.csv`.
    pub fn new(dir: &Path) -> Self {
        Self {
            csv: dir.join("comparison.csv"),
        }
    }

    /// Path of the CSV file.
    pub fn csv_path(&self) -> &Path {
        &self.csv
    }

    /// Every row written so far.
    pub fn read(&self) -> Result<Vec<ComparisonRecord>, TrainError> {
        crate::report::read_rows(&self.csv)
    }

    /// The row of `stage`, if written.
    pub fn get(&self, stage: ComparisonStage) -> Result<Option<ComparisonRecord>, TrainError> {
        Ok(self.read()?.into_iter().find(|r| r.stage == stage))
    }

    /// Writes `record`: a `start` row only when there is none yet (returns `false` when one
    /// was kept), an `end` row in place of an earlier one.
    pub fn record(&self, record: &ComparisonRecord) -> Result<bool, TrainError> {
        let mut rows = self.read()?;
        if record.stage == ComparisonStage::Start
            && rows.iter().any(|r| r.stage == ComparisonStage::Start)
        {
            return Ok(false);
        }
        rows.retain(|r| r.stage != record.stage);
        rows.push(*record);
        rows.sort_by_key(|r| r.stage == ComparisonStage::End);
        crate::report::write_rows(&self.csv, &rows)?;
        Ok(true)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scores(msa: f64) -> ValidationScores {
        ValidationScores {
            dice: 0.5,
            box_iou: 0.4,
            msa,
            sa50: 0.6,
        }
    }

    #[test]
    fn the_start_row_is_kept_and_the_end_row_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let log = ComparisonLog::new(dir.path());
        assert_eq!(log.get(ComparisonStage::Start).unwrap(), None);
        let start = ComparisonRecord::new(ComparisonStage::Start, 0, 0, &scores(0.25));
        assert!(log.record(&start).unwrap());
        // A resumed run validates a trained model: the start row stays.
        let again = ComparisonRecord::new(ComparisonStage::Start, 0, 3, &scores(0.5));
        assert!(!log.record(&again).unwrap());
        let end = ComparisonRecord::new(ComparisonStage::End, 2, 4, &scores(0.5));
        assert!(log.record(&end).unwrap());
        let end2 = ComparisonRecord::new(ComparisonStage::End, 3, 6, &scores(0.75));
        assert!(log.record(&end2).unwrap());
        assert_eq!(log.read().unwrap(), vec![start, end2]);
        let text = std::fs::read_to_string(log.csv_path()).unwrap();
        assert_eq!(
            text.lines().next().unwrap(),
            "stage,epoch,iteration,mSA,SA50,box_iou,dice"
        );
        assert!(text.lines().nth(1).unwrap().starts_with("start,0,0,0.25,"));
        assert_eq!(
            comparison_line(&start, &end2),
            "validation mSA 0.25 -> 0.75 (+0.50) from the starting model to the exported one \
             (epoch 3); SA50 0.60 -> 0.60"
        );
    }

    #[test]
    fn the_best_epoch_is_the_first_with_the_best_scores() {
        let rec = |epoch: u64, msa: f64, dice: f64| EpochRecord {
            epoch,
            iteration: epoch * 2,
            lr: 1e-4,
            train_loss: 1.0,
            train_dice_loss: 0.5,
            train_decoder_loss: 0.0,
            val_dice: dice,
            val_box_iou: 0.4,
            val_msa: msa,
            val_sa50: 0.6,
            seconds: 1.0,
        };
        let rows = [
            rec(1, 0.2, 0.5),
            rec(2, 0.3, 0.4),
            rec(3, 0.3, 0.6),
            rec(4, 0.3, 0.6),
        ];
        assert_eq!(best_epoch(&rows, 0.3, Some(0.6)).unwrap().epoch, 3);
        assert_eq!(best_epoch(&rows, 0.3, None).unwrap().epoch, 2);
        assert_eq!(best_epoch(&rows, 0.9, Some(0.6)), None);
    }
}
