//! Training checkpoints: `latest/` and `best/` folders, each written atomically.
//!
//! A slot folder holds `model.safetensors` (the SAM state_dict keys, plus `decoder.*` for the
//! UNETR decoder), `optimizer.safetensors` (AdamW moments) and `state.json` ([`TrainState`]).
//! It is written into a temporary sibling folder, flushed, and swapped in by renames, so that a
//! kill at any moment leaves either the old or the new checkpoint, never a mix. A temporary
//! folder left by a writer that was killed mid-write is removed by the next run
//! ([`CheckpointStore::remove_stale_temporaries`]).
//!
//! Every number of `state.json` reads back bit for bit (see [`exact_f64`]): a resumed run
//! continues with exactly the learning rate, best scores and sums of the run it continues.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::scaler::ScalerState;
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

/// `f64` fields in JSON, exactly. Finite values are written as numbers in their shortest
/// round-trip form and parsed back exactly (serde_json's `float_roundtrip` feature: its default
/// parser is off by one unit in the last place for about one number in ten); NaN and the
/// infinities, which JSON numbers cannot hold and serde_json would write as `null`, are written
/// as the strings `"NaN"`, `"inf"` and `"-inf"`. `null` (what earlier versions wrote for them)
/// reads as NaN.
pub(crate) mod exact_f64 {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        d.deserialize_any(F64Visitor)
    }

    struct F64Visitor;

    impl Visitor<'_> for F64Visitor {
        type Value = f64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number, \"NaN\", \"inf\" or \"-inf\"")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
            Ok(f64::NAN)
        }
    }

    /// The same for `Option<f64>`: `null` is `None`.
    pub(crate) mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<f64>, D::Error> {
            #[derive(Deserialize)]
            struct Exact(#[serde(with = "super")] f64);
            Ok(Option::<Exact>::deserialize(d)?.map(|Exact(v)| v))
        }
    }
}

/// Running sums of the current epoch, for its log line and metrics row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSums {
    /// Sum of the step losses.
    #[serde(with = "exact_f64")]
    pub loss: f64,
    /// Sum of the steps' Dice losses.
    #[serde(with = "exact_f64")]
    pub dice_loss: f64,
    /// Sum of the steps' decoder losses.
    #[serde(with = "exact_f64")]
    pub decoder_loss: f64,
    /// Steps summed (skipped steps are not).
    #[serde(with = "exact_f64")]
    pub steps: f64,
}

/// Everything besides tensors that resuming needs. Every random draw of training is derived
/// from `seed` and the iteration counter (sample k of iteration i from `(seed, i, k)`, the
/// prompts from `(seed, i, k)`, torch's own generator reseeded from `(seed, i, rank)` before
/// each step), so `seed` and `iteration` are the whole random state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Completed epochs.
    pub epoch: u64,
    /// Completed optimiser steps.
    pub iteration: u64,
    /// Best validation mSA so far.
    #[serde(with = "exact_f64::option")]
    pub best_metric: Option<f64>,
    /// Box-prompted validation Dice of the best checkpoint (breaks mSA ties).
    #[serde(default, with = "exact_f64::option")]
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
    #[serde(with = "exact_f64::option")]
    pub metric: Option<f64>,
    /// True when the run finished (resuming a finished run only re-exports).
    pub finished: bool,
    /// Running sums of the current epoch (earlier versions wrote them as a list of four, which
    /// still reads).
    #[serde(default)]
    pub epoch_sums: EpochSums,
    /// Consecutive steps skipped for a non-finite loss or gradients (fp32/bf16).
    #[serde(default)]
    pub nonfinite_streak: u32,
    /// libtorch's intra-op threads of the process that wrote the checkpoint. On the CPU,
    /// another number of threads sums in another order: a resumed run then ends within
    /// rounding of the uninterrupted one instead of bit for bit (the trainer warns).
    #[serde(default)]
    pub intra_op_threads: Option<u32>,
    /// The square input side of a model fed its patches at their own size
    /// (`model.encoder_input: native`); absent for a model at its built side. An export
    /// records it in the file so that inference feeds the model the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_size: Option<i64>,
    /// With image-encoder adapters (`model.peft`): the digest of the frozen base encoder
    /// ([`crate::base_digest`]). The checkpoint then holds only the trainable weights, and a
    /// resume refuses a model whose base differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<String>,
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

/// The folder a slot is written into before it is swapped in: `.<slot>.tmp-<pid>`.
fn temporary_name(slot: Slot, pid: u32) -> String {
    format!(".{}.tmp-{pid}", slot.name())
}

/// The writer's process id of a temporary folder name, `None` for any other name.
fn temporary_pid(name: &str) -> Option<u32> {
    [Slot::Latest, Slot::Best].into_iter().find_map(|slot| {
        let pid = name.strip_prefix(&format!(".{}.tmp-", slot.name()))?;
        // Digits only: `+7` or ` 7` are not names we write.
        let pid = pid.bytes().all(|b| b.is_ascii_digit()).then_some(pid)?;
        pid.parse().ok()
    })
}

/// Whether process `pid` may be running on this machine: it has a `/proc` entry, or there is
/// no `/proc` to ask (then it is assumed to run, so that nothing is removed).
fn process_may_be_running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

fn io_err(path: &Path, e: std::io::Error) -> TrainError {
    TrainError::io(path, e)
}

fn format_err(path: &Path, e: impl Into<crate::BoxError>) -> TrainError {
    TrainError::format(path, e)
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
        self.save_pausing(slot, model, optimizer, state, None)
    }

    /// [`CheckpointStore::save`] that, with `pause`, stops for that long half-way through
    /// the write (the model file written, the rest not), after logging that it does: tests
    /// kill the process there (see the trainer's `SAM_TRAIN_INJECT_FAULTS`).
    pub(crate) fn save_pausing(
        &self,
        slot: Slot,
        model: &[(String, Tensor)],
        optimizer: &[(String, Tensor)],
        state: &TrainState,
        pause: Option<Duration>,
    ) -> Result<(), TrainError> {
        fs::create_dir_all(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        let name = slot.name();
        let tmp = self.dir.join(temporary_name(slot, std::process::id()));
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
                .map_err(|e| format_err(&model_path, e))?;
            if let Some(pause) = pause {
                tracing::warn!(
                    "fault injection: pausing the write of {} for {} s (in {})",
                    name,
                    pause.as_secs(),
                    tmp.display()
                );
                std::thread::sleep(pause);
            }
            let optim_path = tmp.join(OPTIM_FILE);
            Tensor::write_safetensors(&to_cpu(optimizer), &optim_path)
                .map_err(|e| format_err(&optim_path, e))?;
            let state_path = tmp.join(STATE_FILE);
            let json = serde_json::to_vec_pretty(state).map_err(|e| format_err(&state_path, e))?;
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
                "no `{}` checkpoint in {}",
                slot.name(),
                self.dir.display()
            ))
        })?;
        Self::load_dir(&dir)
    }

    /// Removes the temporary folders (`.latest.tmp-<pid>`, `.best.tmp-<pid>`) that writers
    /// killed mid-write left behind: only folders of that exact name, and only when process
    /// `<pid>` no longer runs on this machine (on systems without `/proc`, none are removed).
    /// A kill during a write loses nothing: the slot itself is swapped in only once complete.
    /// Returns the folders removed.
    pub fn remove_stale_temporaries(&self) -> Result<Vec<PathBuf>, TrainError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir, e)),
        };
        let mut removed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&self.dir, e))?;
            let Some(pid) = entry.file_name().to_str().and_then(temporary_pid) else {
                continue;
            };
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir || pid == std::process::id() || process_may_be_running(pid) {
                continue;
            }
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(|e| io_err(&path, e))?;
            removed.push(path);
        }
        removed.sort();
        Ok(removed)
    }

    /// Reads a checkpoint folder written by [`CheckpointStore::save`].
    pub fn load_dir(dir: &Path) -> Result<Checkpoint, TrainError> {
        let state_path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&state_path).map_err(|e| io_err(&state_path, e))?;
        let state: TrainState =
            serde_json::from_str(&text).map_err(|e| format_err(&state_path, e))?;
        let model_path = dir.join(MODEL_FILE);
        let model =
            Tensor::read_safetensors(&model_path).map_err(|e| format_err(&model_path, e))?;
        let optim_path = dir.join(OPTIM_FILE);
        let optimizer =
            Tensor::read_safetensors(&optim_path).map_err(|e| format_err(&optim_path, e))?;
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
            epoch_sums: EpochSums::default(),
            nonfinite_streak: 0,
            intra_op_threads: None,
            input_size: None,
            base_model: None,
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

    /// Issue 16: `state.json` gives back every number bit for bit. serde_json's default
    /// parser is off by one unit in the last place for about one number in ten (the learning
    /// rate 2e-3 after two decays by 0.9 among them), and it writes NaN as `null`.
    #[test]
    fn state_numbers_survive_a_save_and_load_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        let mut s = state(3);
        s.scheduler = LrScheduler::new(
            ScheduleKind::ReduceOnPlateau {
                factor: 0.9,
                patience: 0,
            },
            2e-3,
        );
        for _ in 0..3 {
            s.scheduler.step(0.0);
        }
        assert_eq!(s.scheduler.lr(), 2e-3 * 0.9 * 0.9);
        s.best_metric = Some(0.000_205_891_132_094_649_06);
        s.best_dice = Some(f64::NAN);
        s.metric = Some(f64::INFINITY);
        s.scaler.scale = f64::NEG_INFINITY;
        store.save(Slot::Latest, &[], &[], &s).unwrap();
        let back = store.load(Slot::Latest).unwrap().state;
        let bits = |v: Option<f64>| v.map(f64::to_bits);
        assert_eq!(back.scheduler.lr().to_bits(), s.scheduler.lr().to_bits());
        assert_eq!(bits(back.best_metric), bits(s.best_metric));
        assert_eq!(bits(back.best_dice), bits(s.best_dice));
        assert_eq!(bits(back.metric), bits(s.metric));
        assert_eq!(back.scaler.scale.to_bits(), s.scaler.scale.to_bits());
        // Whatever the file holds, it reads back as written.
        assert_eq!(format!("{back:?}"), format!("{s:?}"));
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

    /// Issue 16: a kill during a checkpoint write left `.latest.tmp-<pid>/` behind forever.
    /// Only such folders of processes that are gone are removed.
    #[test]
    fn stale_temporary_folders_of_dead_writers_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path());
        // A process that has ended: its pid is not running (nothing reuses it this fast).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = dir.path().join(format!(".latest.tmp-{dead}"));
        let stale_best = dir.path().join(format!(".best.tmp-{dead}"));
        for d in [&stale, &stale_best] {
            fs::create_dir(d).unwrap();
            fs::write(d.join(MODEL_FILE), "partial").unwrap();
        }
        // Kept: a live writer (pid 1 always runs), this process, other names, a file.
        let kept = [
            ".latest.tmp-1".to_string(),
            format!(".latest.tmp-{}", std::process::id()),
            ".latest.tmp-x1".to_string(),
            format!("latest.tmp-{dead}"),
            "latest".to_string(),
        ];
        for k in &kept {
            fs::create_dir(dir.path().join(k)).unwrap();
        }
        fs::write(dir.path().join(format!(".best.tmp-{dead}0")), "a file").unwrap();
        let removed = store.remove_stale_temporaries().unwrap();
        assert_eq!(removed, vec![stale_best.clone(), stale.clone()]);
        assert!(!stale.exists() && !stale_best.exists());
        for k in &kept {
            assert!(dir.path().join(k).is_dir(), "{k} was removed");
        }
        assert!(dir.path().join(format!(".best.tmp-{dead}0")).is_file());
        // A store that was never written has nothing to clean.
        let none = CheckpointStore::new(dir.path().join("absent"));
        assert!(none.remove_stale_temporaries().unwrap().is_empty());
    }

    #[test]
    fn state_of_earlier_versions_still_reads() {
        // epoch_sums as a list of four; no intra_op_threads.
        let mut json = serde_json::to_value(state(2)).unwrap();
        json["epoch_sums"] = serde_json::json!([1.5, 0.5, 0.25, 3.0]);
        json.as_object_mut().unwrap().remove("intra_op_threads");
        json["best_dice"] = serde_json::Value::Null;
        let s: TrainState = serde_json::from_value(json).unwrap();
        assert_eq!(
            s.epoch_sums,
            EpochSums {
                loss: 1.5,
                dice_loss: 0.5,
                decoder_loss: 0.25,
                steps: 3.0
            }
        );
        assert_eq!((s.intra_op_threads, s.best_dice), (None, None));
    }

    /// `state.json` as this version and the one before it write it (fp16 run, epoch sums
    /// named, NaN as a string), literally: checkpoints written before the trainer was split
    /// into phases resume.
    #[test]
    fn state_json_of_the_current_format_reads() {
        let json = r#"{
  "epoch": 3,
  "iteration": 12,
  "best_metric": 0.25,
  "best_dice": "NaN",
  "scheduler": {
    "kind": {
      "kind": "reduce_on_plateau",
      "factor": 0.9,
      "patience": 2
    },
    "base_lr": 0.001,
    "lr": 0.0009,
    "best": 0.25,
    "bad_epochs": 1,
    "epochs": 3
  },
  "early_stopping": {
    "patience": 3,
    "best": 0.25,
    "bad_epochs": 1
  },
  "scaler": {
    "scale": 32768.0,
    "growth_tracker": 11
  },
  "seed": 7,
  "metric": 0.125,
  "finished": false,
  "epoch_sums": {
    "loss": 1.5,
    "dice_loss": 0.5,
    "decoder_loss": 0.25,
    "steps": 3.0
  },
  "nonfinite_streak": 0,
  "intra_op_threads": 2
}"#;
        let s: TrainState = serde_json::from_str(json).unwrap();
        assert_eq!((s.epoch, s.iteration, s.seed), (3, 12, 7));
        assert_eq!(
            s.epoch_sums,
            EpochSums {
                loss: 1.5,
                dice_loss: 0.5,
                decoder_loss: 0.25,
                steps: 3.0
            }
        );
        assert_eq!(
            s.scaler,
            ScalerState {
                scale: 32768.0,
                growth_tracker: 11
            }
        );
        assert!(s.best_dice.is_some_and(f64::is_nan));
        assert_eq!((s.best_metric, s.metric), (Some(0.25), Some(0.125)));
        assert_eq!(s.intra_op_threads, Some(2));
        assert_eq!(s.scheduler.lr(), 0.0009);
        // And it is written back exactly as it was read.
        let literal: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), literal);
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
