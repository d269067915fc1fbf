//! Dynamic loss scaling for fp16 training, as `torch.amp.GradScaler` does it.
//!
//! In fp16 small gradients underflow to zero; the loss is multiplied by a large factor before
//! back-propagation and the gradients divided by it again before the optimiser step. A step
//! whose loss or gradients are not finite (the scale was too large) is skipped and the scale
//! halved; after [`GROWTH_INTERVAL`] clean steps in a row the scale is doubled. The scaler never
//! stops a run. Its [`ScalerState`] is saved in every checkpoint, so a resumed run continues
//! with the same scale.

use serde::{Deserialize, Serialize};

use crate::checkpoint::exact_f64;

/// Clean steps after which the scale doubles (`GradScaler`'s `growth_interval`).
pub const GROWTH_INTERVAL: u32 = 2000;

/// Loss-scaler state for fp16 training (`torch.amp.GradScaler` semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalerState {
    /// Current loss scale.
    #[serde(with = "exact_f64")]
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

/// What the scaler decided after a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScalerUpdate {
    /// Loss scaling is off (fp32, bf16): the step is not the scaler's business.
    Off,
    /// The step was clean: multiply the gradients by `unscale` (the inverse of the scale the
    /// loss was multiplied by) and take the step.
    Apply {
        /// The factor that undoes the loss scale on the gradients.
        unscale: f64,
    },
    /// The step was not finite: skip it; the scale was halved to `new_scale`.
    Skip {
        /// The lowered scale.
        new_scale: f64,
    },
}

/// The fp16 loss scaler: the factor the loss is multiplied by, and its update after each step.
/// A scaler that is off multiplies by 1 and leaves its state as it was.
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    enabled: bool,
    state: ScalerState,
}

impl LossScaler {
    /// A scaler that is on (`enabled`, fp16) or off, continuing from `state`.
    pub fn new(enabled: bool, state: ScalerState) -> Self {
        Self { enabled, state }
    }

    /// Whether loss scaling is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The factor to multiply this step's loss by (1 when off).
    pub fn scale(&self) -> f64 {
        if self.enabled {
            self.state.scale
        } else {
            1.0
        }
    }

    /// The state to save in a checkpoint.
    pub fn state(&self) -> &ScalerState {
        &self.state
    }

    /// Updates the scale after a step whose loss and gradients were `finite` (on every rank)
    /// and says what to do with the step.
    pub fn update(&mut self, finite: bool) -> ScalerUpdate {
        if !self.enabled {
            return ScalerUpdate::Off;
        }
        let s = &mut self.state;
        if finite {
            let unscale = 1.0 / s.scale;
            s.growth_tracker += 1;
            if s.growth_tracker >= GROWTH_INTERVAL {
                s.scale *= 2.0;
                s.growth_tracker = 0;
            }
            ScalerUpdate::Apply { unscale }
        } else {
            s.scale *= 0.5;
            s.growth_tracker = 0;
            ScalerUpdate::Skip { new_scale: s.scale }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn grows_after_the_growth_interval_of_clean_steps() {
        let mut s = LossScaler::new(true, ScalerState::default());
        assert_eq!(s.scale(), 65536.0);
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert_eq!(
                s.update(true),
                ScalerUpdate::Apply {
                    unscale: 1.0 / 65536.0
                }
            );
        }
        assert_eq!(s.scale(), 65536.0);
        assert_eq!(s.state().growth_tracker, GROWTH_INTERVAL - 1);
        // The step that completes the interval is unscaled by the scale it was taken with.
        assert_eq!(
            s.update(true),
            ScalerUpdate::Apply {
                unscale: 1.0 / 65536.0
            }
        );
        assert_eq!(
            s.state(),
            &ScalerState {
                scale: 131072.0,
                growth_tracker: 0
            }
        );
    }

    #[test]
    fn a_non_finite_step_is_skipped_and_halves_the_scale() {
        let mut s = LossScaler::new(
            true,
            ScalerState {
                scale: 1024.0,
                growth_tracker: 1999,
            },
        );
        assert_eq!(s.update(false), ScalerUpdate::Skip { new_scale: 512.0 });
        assert_eq!(
            s.state(),
            &ScalerState {
                scale: 512.0,
                growth_tracker: 0
            }
        );
        assert_eq!(s.update(false), ScalerUpdate::Skip { new_scale: 256.0 });
        assert_eq!(s.scale(), 256.0);
        // Counting toward growth starts again from zero.
        assert_eq!(
            s.update(true),
            ScalerUpdate::Apply {
                unscale: 1.0 / 256.0
            }
        );
        assert_eq!(s.state().growth_tracker, 1);
    }

    #[test]
    fn off_scales_by_one_and_keeps_its_state() {
        let state = ScalerState {
            scale: 8.0,
            growth_tracker: 3,
        };
        let mut s = LossScaler::new(false, state.clone());
        assert!(!s.enabled());
        assert_eq!(s.scale(), 1.0);
        assert_eq!(s.update(true), ScalerUpdate::Off);
        assert_eq!(s.update(false), ScalerUpdate::Off);
        assert_eq!(s.state(), &state);
    }

    #[test]
    fn state_round_trips_through_json_and_a_new_scaler() {
        let mut s = LossScaler::new(true, ScalerState::default());
        s.update(false);
        for _ in 0..7 {
            s.update(true);
        }
        let json = serde_json::to_string(s.state()).unwrap();
        assert_eq!(json, r#"{"scale":32768.0,"growth_tracker":7}"#);
        let back: ScalerState = serde_json::from_str(&json).unwrap();
        let mut resumed = LossScaler::new(true, back);
        assert_eq!(resumed, s);
        assert_eq!(resumed.update(true), s.update(true));
        assert_eq!(resumed, s);
    }
}
