//! Test support (feature `testing`): [`ToyPolicy`], a tiny differentiable policy — a
//! bigram table (next-token logits depend on the previous token only) plus a low-rank
//! adapter `A·B` on it, with seeded dropout on the adapter branch. It exercises every
//! part of [`TrainablePolicy`] in microseconds, for tests of the loop and the service
//! rules; tests about learning itself use the real decoder.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::{ScoreMode, TokenScores, TokenSequence, TrainablePolicy};
use crate::error::{LearnerError, Result};
use crate::loss::logprobs_from_logits;

/// Bigram logits plus a rank-`r` adapter.
pub struct ToyPolicy {
    base: Tensor,
    lora_a: Var,
    lora_b: Var,
    dropout: f64,
    seed: u64,
    counter: u64,
}

impl ToyPolicy {
    /// A random base table over `vocab` tokens, adapter `A` random and `B` zero (so the
    /// adapted policy starts equal to the base one, as with PEFT).
    pub fn new(vocab: usize, rank: usize, dropout: f64, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut uniform = |count: usize, bound: f32| -> Vec<f32> {
            (0..count)
                .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * bound)
                .collect()
        };
        let device = Device::Cpu;
        let base = Tensor::from_vec(uniform(vocab * vocab, 1.0), (vocab, vocab), &device).unwrap();
        let a = Tensor::from_vec(uniform(vocab * rank, 0.5), (vocab, rank), &device).unwrap();
        let lora_a = Var::from_tensor(&a).unwrap();
        let lora_b = Var::zeros((rank, vocab), DType::F32, &device).unwrap();
        Self {
            base,
            lora_a,
            lora_b,
            dropout,
            seed,
            counter: 0,
        }
    }

    /// Log-prob of `tokens[score_from..]` under the current adapted policy (no dropout).
    pub fn sequence_logprob(&mut self, tokens: &[u32], score_from: usize) -> f64 {
        let scores = self
            .score(
                &[TokenSequence {
                    tokens: tokens.to_vec(),
                    score_from,
                }],
                ScoreMode::Frozen,
                1.0,
                false,
            )
            .unwrap();
        scores
            .logprobs
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// The adapter's current values, flattened (to compare runs).
    pub fn adapter_values(&self) -> Vec<f32> {
        let mut values = self
            .lora_a
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        values.extend(
            self.lora_b
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        values
    }

    fn dropout_mask(&mut self, rows: usize, rank: usize) -> Result<Tensor> {
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed ^ (self.counter.wrapping_mul(0x9e37_79b9)));
        self.counter += 1;
        let keep = 1.0 / (1.0 - self.dropout) as f32;
        let values: Vec<f32> = (0..rows * rank)
            .map(|_| {
                if rng.random::<f64>() < self.dropout {
                    0.0
                } else {
                    keep
                }
            })
            .collect();
        Ok(Tensor::from_vec(values, (rows, rank), &Device::Cpu)?)
    }
}

impl TrainablePolicy for ToyPolicy {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn trainable_vars(&self) -> Vec<(String, Var)> {
        vec![
            ("lora_A".to_string(), self.lora_a.clone()),
            ("lora_B".to_string(), self.lora_b.clone()),
        ]
    }

    fn score(
        &mut self,
        sequences: &[TokenSequence],
        mode: ScoreMode,
        temperature: f64,
        with_entropy: bool,
    ) -> Result<TokenScores> {
        let columns = sequences
            .iter()
            .map(|sequence| sequence.tokens.len() - sequence.score_from)
            .max()
            .unwrap_or(0);
        let rows = sequences.len();
        let mut previous = vec![0u32; rows * columns];
        let mut targets = vec![0u32; rows * columns];
        let mut mask = vec![0f32; rows * columns];
        for (row, sequence) in sequences.iter().enumerate() {
            for (column, position) in (sequence.score_from..sequence.tokens.len()).enumerate() {
                previous[row * columns + column] = sequence.tokens[position - 1];
                targets[row * columns + column] = sequence.tokens[position];
                mask[row * columns + column] = 1.0;
            }
        }
        let device = Device::Cpu;
        let previous = Tensor::from_vec(previous, rows * columns, &device)?;
        let targets = Tensor::from_vec(targets, (rows, columns), &device)?;
        let mask = Tensor::from_vec(mask, (rows, columns), &device)?;
        let mut logits = self.base.index_select(&previous, 0)?;
        if mode != ScoreMode::Reference {
            let mut down = self.lora_a.as_tensor().index_select(&previous, 0)?;
            if mode == ScoreMode::Train && self.dropout > 0.0 {
                let (count, rank) = down.dims2()?;
                down = (down * self.dropout_mask(count, rank)?)?;
            }
            logits = (logits + down.matmul(self.lora_b.as_tensor())?)?;
        }
        if mode != ScoreMode::Train {
            logits = logits.detach();
        }
        if temperature != 1.0 {
            logits = logits.affine(1.0 / temperature, 0.0)?;
        }
        let vocab = self.base.dim(1)?;
        let logits = logits.reshape((rows, columns, vocab))?;
        let (logprobs, entropy) = logprobs_from_logits(&logits, &targets)?;
        Ok(TokenScores {
            logprobs: (logprobs * &mask)?,
            entropy: with_entropy.then(|| entropy.detach()),
            mask,
        })
    }

    fn rng_state(&self) -> serde_json::Value {
        serde_json::json!({ "seed": self.seed, "counter": self.counter })
    }

    fn set_rng_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let read = |key: &str| {
            state[key]
                .as_u64()
                .ok_or_else(|| LearnerError::Policy(format!("rng state lacks `{key}`")))
        };
        self.seed = read("seed")?;
        self.counter = read("counter")?;
        Ok(())
    }

    fn adapter_bytes(&self) -> Result<Vec<u8>> {
        let dir = tempfile::tempdir().map_err(|err| LearnerError::io("tempdir", err))?;
        self.save_adapter(dir.path())?;
        let path = dir.path().join("adapter_model.safetensors");
        std::fs::read(&path).map_err(|err| LearnerError::io(&path, err))
    }

    fn save_adapter(&self, dir: &Path) -> Result<()> {
        let tensors = std::collections::HashMap::from([
            ("lora_A".to_string(), self.lora_a.as_tensor().clone()),
            ("lora_B".to_string(), self.lora_b.as_tensor().clone()),
        ]);
        candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors"))?;
        Ok(())
    }

    fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        let tensors =
            candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)?;
        for (name, var) in [("lora_A", &self.lora_a), ("lora_B", &self.lora_b)] {
            let value = tensors
                .get(name)
                .ok_or_else(|| LearnerError::checkpoint(dir, format!("adapter lacks {name}")))?;
            var.set(value)?;
        }
        Ok(())
    }
}
