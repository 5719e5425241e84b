//! Production-shaped model configurations with no weights behind them: benchmarks fill
//! them with seeded random weights ([`crate::tiny::random_weights`]), since what they
//! measure is the arithmetic of a shape, not what its weights say. One list, shared by the
//! learner's and the sampler's benchmarks, so both measure the same shapes.

use crate::config::{Family, ModelConfig};
use crate::tiny;

/// A model shape the benchmarks know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelShape {
    /// The policy crate's tiny Qwen2 (2 layers, hidden 64).
    Tiny,
    /// SmolLM2-135M (Llama: 30 layers, hidden 576, GQA 9/3, vocab 49152, tied head).
    Smollm2_135m,
    /// Qwen2.5-1.5B (Qwen2: 28 layers, hidden 1536, GQA 12/2, vocab 151936, tied head).
    Qwen25_1_5b,
}

impl ModelShape {
    /// Parses `tiny`, `smollm2-135m` or `qwen2.5-1.5b`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "tiny" => Some(Self::Tiny),
            "smollm2-135m" | "smollm2" => Some(Self::Smollm2_135m),
            "qwen2.5-1.5b" | "qwen" => Some(Self::Qwen25_1_5b),
            _ => None,
        }
    }

    /// The name it is parsed from.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Smollm2_135m => "smollm2-135m",
            Self::Qwen25_1_5b => "qwen2.5-1.5b",
        }
    }

    /// The decoder configuration of the shape.
    pub fn config(self) -> ModelConfig {
        match self {
            Self::Tiny => tiny::config(Family::Qwen2),
            Self::Smollm2_135m => ModelConfig {
                family: Family::Llama,
                vocab_size: 49_152,
                hidden_size: 576,
                intermediate_size: 1_536,
                num_hidden_layers: 30,
                num_attention_heads: 9,
                num_key_value_heads: 3,
                head_dim: 64,
                max_position_embeddings: 8_192,
                rope_theta: 100_000.0,
                rope_scaling: None,
                rms_norm_eps: 1e-5,
                tie_word_embeddings: true,
                qkv_bias: false,
                o_bias: false,
                bos_token_id: Some(1),
                eos_token_id: vec![2],
            },
            Self::Qwen25_1_5b => ModelConfig {
                family: Family::Qwen2,
                vocab_size: 151_936,
                hidden_size: 1_536,
                intermediate_size: 8_960,
                num_hidden_layers: 28,
                num_attention_heads: 12,
                num_key_value_heads: 2,
                head_dim: 128,
                max_position_embeddings: 32_768,
                rope_theta: 1_000_000.0,
                rope_scaling: None,
                rms_norm_eps: 1e-6,
                tie_word_embeddings: true,
                qkv_bias: true,
                o_bias: false,
                bos_token_id: None,
                eos_token_id: vec![151_645, 151_643],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_shapes_are_consistent() {
        for shape in [
            ModelShape::Tiny,
            ModelShape::Smollm2_135m,
            ModelShape::Qwen25_1_5b,
        ] {
            assert_eq!(ModelShape::parse(shape.name()), Some(shape));
            let cfg = shape.config();
            assert_eq!(
                cfg.num_attention_heads % cfg.num_key_value_heads,
                0,
                "{shape:?}"
            );
        }
        assert_eq!(ModelShape::parse("gpt"), None);
        let qwen = ModelShape::Qwen25_1_5b.config();
        assert_eq!(qwen.num_attention_heads * qwen.head_dim, qwen.hidden_size);
        assert!(qwen.qkv_bias && qwen.family == Family::Qwen2);
    }
}
