//! Training checkpoints: `latest/` and `best/` folders, each written atomically.
//!
//! A slot folder holds `model.safetensors` (the SAM state_dict keys, plus `decoder.*` for the
//! UNETR decoder), `optimizer.safetensors` (AdamW moments) and `state.json` ([`TrainState`]).
//! It is written into a temporary sibling folder, flushed, and swapped in by renames, so that a
//! kill at any moment leaves either the old or the new checkpoint, never a mix.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::schedule::{EarlyStopping, LrScheduler};
use crate::TrainError;

/// Which checkpoint of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Written after every epoch and on a requested stop; what `--resume` reads.
    Latest,
    /// The checkpoint with the best validation mSA so far; what gets exported.
    Best,
}

impl Slot {
    /// The folder name of the slot.
    pub fn name(self) -> &'static str {
        match self {
            Slot::Latest => "latest",
            Slot::Best => "best",
        }
    }
}

/// Loss-scaler state for fp16 training (`torch.amp.GradScaler` semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalerState {
    /// Current loss scale.
    pub scale: f64,
    /// Consecutive steps without overflow.
    pub growth_tracker: u32,
}

impl Default for ScalerState {
    fn default() -> Self {
        // torch.amp.GradScaler's init_scale.
        Self {
            scale: 65536.0,
            growth_tracker: 0,
        }
    }
}

/// Everything besides tensors that resuming needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Completed epochs.
    pub epoch: u64,
    /// Completed optimiser steps.
    pub iteration: u64,
    /// Best validation mSA so far.
    pub best_metric: Option<f64>,
    /// Box-prompted validation Dice of the best checkpoint (breaks mSA ties).
    #[serde(default)]
    pub best_dice: Option<f64>,
    /// The learning-rate scheduler.
    pub scheduler: LrScheduler,
    /// Early stopping.
    pub early_stopping: EarlyStopping,
    /// The fp16 loss scaler.
    pub scaler: ScalerState,
    /// The run's seed: every random draw is derived from it and the iteration counter, so
    /// this plus `iteration` is the whole RNG state.
    pub seed: u64,
    /// The validation mSA of the epoch this checkpoint was written at, if any.
    pub metric: Option<f64>,
    /// True when the run finished (resuming a finished run only re-exports).
    pub finished: bool,
    /// Running sums of the current epoch: loss, Dice loss, decoder loss, iterations.
    #[serde(default)]
    pub epoch_sums: [f64; 4],
    /// Consecutive steps skipped for a non-finite loss or gradients (fp32/bf16).
    #[serde(default)]
    pub nonfinite_streak: u32,
}

/// Tensors and state of one checkpoint.
pub struct Checkpoint {
    /// Model weights by state_dict key.
    pub model: Vec<(String, Tensor)>,
    /// Optimiser state ([`crate::AdamW::state_tensors`]).
    pub optimizer: Vec<(String, Tensor)>,
    /// The rest.
    pub state: TrainState,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("model", &self.model.len())
            .field("optimizer", &self.optimizer.len())
            .field("state", &self.state)
            .finish()
    }
}

/// The checkpoint folder of one run: `runs/<experiment>/checkpoints/<checkpoint_name>/`.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

const MODEL_FILE: &str = "model.safetensors";
const OPTIM_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "state.json";

fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io(format!("{}: {e}", path.display()))
}

impl CheckpointStore {
    /// A store rooted at `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The folder of a slot.
    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.dir.join(slot.name())
    }

    /// Whether a complete checkpoint exists in `slot` (also after an interrupted swap).
    pub fn exists(&self, slot: Slot) -> bool {
        self.readable_dir(slot).is_some()
    }

    fn readable_dir(&self, slot: Slot) -> Option<PathBuf> {
        let main = self.slot_dir(slot);
        let prev = self.dir.join(format!("{}.prev", slot.name()));
        [main, prev]
            .into_iter()
            .find(|d| d.join(STATE_FILE).is_file())
    }

    /// Writes `slot` atomically.
    pub fn save(
        &self,
        slot: Slot,
        model: &[(String, Tensor)],
        optimizer: &[(String, Tensor)],
        state: &TrainState,
    ) -> Result<(), TrainError> {
        fs::create_dir_all(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        let name = slot.name();
        let tmp = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        }
        fs::create_dir(&tmp).map_err(|e| io_err(&tmp, e))?;
        let write = || -> Result<(), TrainError> {
            let to_cpu = |v: &[(String, Tensor)]| -> Vec<(String, Tensor)> {
                v.iter()
                    .map(|(n, t)| {
                        (
                            n.clone(),
                            t.detach().to_device(tch::Device::Cpu).contiguous(),
                        )
                    })
                    .collect()
            };
            let model_path = tmp.join(MODEL_FILE);
            Tensor::write_safetensors(&to_cpu(model), &model_path)
                .map_err(|e| io_err(&model_path, e))?;
            let optim_path = tmp.join(OPTIM_FILE);
            Tensor::write_safetensors(&to_cpu(optimizer), &optim_path)
                .map_err(|e| io_err(&optim_path, e))?;
            let state_path = tmp.join(STATE_FILE);
            let json = serde_json::to_vec_pretty(state).map_err(|e| io_err(&state_path, e))?;
            fs::write(&state_path, json).map_err(|e| io_err(&state_path, e))?;
            for f in [MODEL_FILE, OPTIM_FILE, STATE_FILE] {
                let p = tmp.join(f);
                fs::File::open(&p)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io_err(&p, e))?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // Swap: main → prev, tmp → main, drop prev. A reader finds main or, in between, prev.
        let main = self.slot_dir(slot);
        let prev = self.dir.join(format!("{name}.prev"));
        if prev.exists() && main.join(STATE_FILE).is_file() {
            fs::remove_dir_all(&prev).map_err(|e| io_err(&prev, e))?;
        }
        if main.exists() {
            fs::rename(&main, &prev).map_err(|e| io_err(&main, e))?;
        }
        fs::rename(&tmp, &main).map_err(|e| io_err(&main, e))?;
        if prev.exists() {
            fs::remove_dir_all(&prev).map_err(|e| io_err(&prev, e))?;
        }
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&self.dir, e))?;
        Ok(())
    }

    /// Reads `slot`.
    pub fn load(&self, slot: Slot) -> Result<Checkpoint, TrainError> {
        let dir = self.readable_dir(slot).ok_or_else(|| {
            TrainError::MissingCheckpoint(format!(
                "no `{}` checkpoint in {} (nothing to resume; start without --resume)",
                slot.name(),
                self.dir.display()
            ))
        })?;
        Self::load_dir(&dir)
    }

    /// Reads a checkpoint folder written by [`CheckpointStore::save`].
    pub fn load_dir(dir: &Path) -> Result<Checkpoint, TrainError> {
        let state_path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&state_path).map_err(|e| io_err(&state_path, e))?;
        let state: TrainState = serde_json::from_str(&text).map_err(|e| io_err(&state_path, e))?;
        let model_path = dir.join(MODEL_FILE);
        let model = Tensor::read_safetensors(&model_path).map_err(|e| io_err(&model_path, e))?;
        let optim_path = dir.join(OPTIM_FILE);
        let optimizer =
            Tensor::read_safetensors(&optim_path).map_err(|e| io_err(&optim_path, e))?;
        Ok(Checkpoint {
            model,
            optimizer,
            state,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::schedule::ScheduleKind;

    fn state(epoch: u64) -> TrainState {
        TrainState {
            epoch,
            iteration: epoch * 10,
            best_metric: Some(0.5),
            best_dice: Some(0.6),
            scheduler: LrScheduler::new(ScheduleKind::Constant, 1e-4),
            early_stopping: EarlyStopping::new(Some(3)),
            scaler: ScalerState::default(),
            seed: 7,
            metric: None,
            finished: false,
            epoch_sums: [0.0; 4],
            nonfinite_streak: 0,
        }
    }

    #[test]
    fn save_load_round_trip_and_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path().join("ck"));
        assert!(!store.exists(Slot::Latest));
        let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        store
            .save(
                Slot::Latest,
                &[("a.weight".into(), w.shallow_clone())],
                &[],
                &state(1),
            )
            .unwrap();
        store
            .save(
                Slot::Latest,
                &[("a.weight".into(), &w * 2.0)],
                &[],
                &state(2),
            )
            .unwrap();
        let ck = store.load(Slot::Latest).unwrap();
        assert_eq!(ck.state.epoch, 2);
        let got: Vec<f32> = Vec::try_from(&ck.model[0].1).unwrap();
        assert_eq!(got, vec![2.0, 4.0, 6.0]);
        // Only the slot folder is left: no temporaries, no .prev.
        let names: Vec<String> = fs::read_dir(dir.path().join("ck"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["latest".to_string()]);
    }

    #[test]
    fn interrupted_swap_falls_back_to_prev() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        store
            .save(
                Slot::Best,
                &[("w".into(), Tensor::from_slice(&[1.0f32]))],
                &[],
                &state(4),
            )
            .unwrap();
        // Simulate a kill between the two renames.
        fs::rename(dir.path().join("best"), dir.path().join("best.prev")).unwrap();
        assert_eq!(store.load(Slot::Best).unwrap().state.epoch, 4);
    }

    #[test]
    fn missing_checkpoint_error_names_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let err = CheckpointStore::new(dir.path())
            .load(Slot::Latest)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("latest") && err.contains(&dir.path().display().to_string()),
            "{err}"
        );
    }
}
