//! Stop requests from the outside world: SIGTERM and SIGUSR1 (what SLURM sends before the time
//! limit, `--signal=USR1@<lead>`) set a flag that the training loop checks after every step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::TrainError;

/// A flag raised by SIGTERM or SIGUSR1 (or by hand, in tests).
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// A flag that nothing raises until [`StopFlag::install_signal_handlers`] or
    /// [`StopFlag::raise`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the flag on SIGTERM and SIGUSR1 from now on.
    pub fn install_signal_handlers(&self) -> Result<(), TrainError> {
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
            signal_hook::flag::register(sig, Arc::clone(&self.0)).map_err(|source| {
                TrainError::Signal {
                    signal: sig,
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Raises the flag.
    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sigusr1_raises_the_flag() {
        let flag = StopFlag::new();
        flag.install_signal_handlers().unwrap();
        assert!(!flag.is_raised());
        signal_hook::low_level::raise(signal_hook::consts::SIGUSR1).unwrap();
        assert!(flag.is_raised());
    }
}
