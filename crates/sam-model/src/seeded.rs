//! Seeded random weights while other threads of the process may draw too.
//!
//! libtorch keeps one random generator per process. Two threads that each seed it and then
//! build a model can interleave: the second seed, or the second model's draws, land between
//! the first one's, and its weights are no longer those of its seed. [`seeded`] holds one
//! process-wide lock while it seeds the generator and runs the closure, so every caller that
//! goes through it gets the weights of its seed, however many build models at once.

use std::sync::{Mutex, PoisonError};

static GENERATOR: Mutex<()> = Mutex::new(());

/// Seeds torch's generator with `seed` and runs `draw` (building a model, drawing tensors)
/// with no other `seeded` call in between. Draws made elsewhere without this function can
/// still interleave: route every seeded draw of a process through it.
pub fn seeded<T>(seed: i64, draw: impl FnOnce() -> T) -> T {
    let _generator = GENERATOR.lock().unwrap_or_else(PoisonError::into_inner);
    tch::manual_seed(seed);
    draw()
}

#[cfg(test)]
mod tests {
    use super::seeded;
    use tch::{Device, Kind, Tensor};

    fn draw(seed: i64) -> Vec<f32> {
        seeded(seed, || {
            // Several draws with yields between them, so that the threads overlap.
            let parts: Vec<Tensor> = (0..6)
                .map(|_| {
                    std::thread::yield_now();
                    Tensor::rand([64], (Kind::Float, Device::Cpu))
                })
                .collect();
            Vec::<f32>::try_from(Tensor::cat(&parts, 0)).expect("f32 values")
        })
    }

    #[test]
    fn parallel_callers_each_get_the_draws_of_their_seed() {
        let alone: Vec<Vec<f32>> = (0..4).map(draw).collect();
        let threads: Vec<_> = (0..4)
            .cycle()
            .take(64)
            .map(|s| std::thread::spawn(move || (s, draw(s))))
            .collect();
        for t in threads {
            let (s, got) = t.join().expect("thread");
            assert_eq!(got, alone[s as usize], "seed {s}");
        }
        assert_ne!(alone[0], alone[1]);
    }
}
