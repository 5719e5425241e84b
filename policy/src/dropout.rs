//! LoRA dropout masks from an explicit, seeded, resumable RNG.
//!
//! candle's own `dropout` draws from an unseedable thread RNG, so a resumed run would not
//! reproduce the masks it would have drawn. Here each mask gets its own sub-seed derived from
//! `(seed, counter)`; the whole state is those two integers ([`DropoutRngState`]), which the
//! learner checkpoints. On CPU the mask comes from ChaCha8; on CUDA from the device's curand
//! generator seeded with the sub-seed (a device-specific but equally deterministic stream:
//! masks for 1.5B-scale activations are far too large to draw on the host).

use crate::error::{CandleContext, Result};
use candle_core::{DType, Device, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The complete state of a [`DropoutRng`]: restore it with [`DropoutRng::from_state`] to
/// draw exactly the masks the original would have drawn next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropoutRngState {
    /// The run's dropout seed.
    pub seed: u64,
    /// How many masks have been drawn so far.
    pub counter: u64,
}

/// A seeded dropout-mask generator whose state can be saved and restored.
#[derive(Debug, Clone)]
pub struct DropoutRng {
    state: DropoutRngState,
}

impl DropoutRng {
    /// A fresh generator.
    pub fn new(seed: u64) -> Self {
        Self {
            state: DropoutRngState { seed, counter: 0 },
        }
    }

    /// Resumes from a saved state.
    pub fn from_state(state: DropoutRngState) -> Self {
        Self { state }
    }

    /// The state to checkpoint.
    pub fn state(&self) -> DropoutRngState {
        self.state
    }

    /// Draws an inverted-dropout mask: each element is 0 with probability `p`, else
    /// `1 / (1 - p)`, so `x * mask` keeps the expectation of `x`.
    pub fn mask(&mut self, shape: &Shape, p: f64, device: &Device, dtype: DType) -> Result<Tensor> {
        let sub_seed =
            splitmix64(self.state.seed ^ splitmix64(self.state.counter.wrapping_add(0x9e37_79b9)));
        self.state.counter += 1;
        let keep_scale = 1.0 / (1.0 - p);
        let ctx = || format!("dropout mask {shape:?}");
        if device.is_cpu() {
            let mut rng = ChaCha8Rng::seed_from_u64(sub_seed);
            let n = shape.elem_count();
            let p32 = p as f32;
            let scale32 = keep_scale as f32;
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    if rng.random::<f32>() < p32 {
                        0.0
                    } else {
                        scale32
                    }
                })
                .collect();
            Tensor::from_vec(values, shape, device)
                .and_then(|t| t.to_dtype(dtype))
                .ctx(ctx)
        } else {
            device.set_seed(sub_seed).ctx(ctx)?;
            let uniform = Tensor::rand(0f32, 1f32, shape, device).ctx(ctx)?;
            (uniform
                .ge(p)
                .and_then(|keep| keep.to_dtype(DType::F32))
                .ctx(ctx)?
                * keep_scale)
                .and_then(|t| t.to_dtype(dtype))
                .ctx(ctx)
        }
    }
}

/// SplitMix64's finalizer: decorrelates consecutive counters into independent seeds.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_resume_exactly_and_have_the_right_rate() {
        let shape = Shape::from((64, 128));
        let mut rng = DropoutRng::new(7);
        let _first = rng.mask(&shape, 0.25, &Device::Cpu, DType::F32).unwrap();
        let saved = rng.state();
        let second = rng.mask(&shape, 0.25, &Device::Cpu, DType::F32).unwrap();
        let mut resumed = DropoutRng::from_state(saved);
        let again = resumed
            .mask(&shape, 0.25, &Device::Cpu, DType::F32)
            .unwrap();
        let a: Vec<f32> = second.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = again.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b);
        let c: Vec<f32> = _first.flatten_all().unwrap().to_vec1().unwrap();
        assert_ne!(a, c, "consecutive masks must differ");
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.25).abs() < 0.03, "drop rate {dropped}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        // A different seed gives a different mask.
        let other = DropoutRng::new(8)
            .mask(&shape, 0.25, &Device::Cpu, DType::F32)
            .unwrap();
        let d: Vec<f32> = other.flatten_all().unwrap().to_vec1().unwrap();
        assert_ne!(c, d);
    }
}
