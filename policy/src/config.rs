//! Model configuration: the runtime [`ModelConfig`] shared by the Qwen2 and Llama families,
//! read from a Hugging Face `config.json` ([`HfConfig`], field names exactly as HF writes
//! them) or from GGUF metadata (`{arch}.block_count`, `{arch}.attention.head_count`, …).
//!
//! The raw HF struct keeps the checkpoint's format (options, untagged EOS ids, the free-form
//! `rope_scaling` dict) apart from the runtime config, which has every default resolved and
//! every unsupported feature rejected with an error naming the field.

use crate::error::{PolicyError, Result};
use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The decoder family. Both are pre-norm RMSNorm/RoPE/SwiGLU decoders with GQA; they differ
/// in biases (Qwen2 has q/k/v biases) and in how GGUF stores the q/k projections (llama.cpp
/// permutes Llama's rows for its interleaved RoPE; we undo that at load time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Qwen2 / Qwen2.5 (`model_type: "qwen2"`), the production family.
    Qwen2,
    /// Llama 2/3, SmolLM, TinyLlama, … (`model_type: "llama"`).
    Llama,
}

impl Family {
    /// The `model_type` / GGUF `general.architecture` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Qwen2 => "qwen2",
            Family::Llama => "llama",
        }
    }

    /// Parses a `model_type` / GGUF architecture string.
    pub fn parse(name: &str) -> Option<Family> {
        match name {
            "qwen2" => Some(Family::Qwen2),
            "llama" => Some(Family::Llama),
            _ => None,
        }
    }
}

/// RoPE frequency scaling, as supported: Llama-3 style and linear (position interpolation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Divide every inverse frequency by `factor`.
    Linear {
        /// The interpolation factor.
        factor: f64,
    },
    /// Llama 3.1's wavelength-dependent scaling.
    Llama3 {
        /// The scaling factor for low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled fully.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was pretrained with.
        original_max_position_embeddings: usize,
    },
}

/// The runtime configuration of a decoder, with every default resolved.
///
/// Field names follow HF `config.json`; `head_dim` is always set, and the bias flags are
/// explicit (Qwen2: q/k/v biases; Llama: `attention_bias` on q/k/v/o).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The architecture family (`model_type`).
    pub family: Family,
    /// Vocabulary size (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Longest supported sequence (sizes the RoPE tables).
    pub max_position_embeddings: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// Optional RoPE frequency scaling.
    pub rope_scaling: Option<RopeScaling>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Whether the LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (generation stops on any of them).
    pub eos_token_id: Vec<u32>,
}

impl ModelConfig {
    /// Checks the invariants the decoder relies on; the error names the field.
    pub fn validate(&self, source_name: &str) -> Result<()> {
        let bad =
            |field: &str, message: String| Err(PolicyError::config(source_name, field, message));
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return bad(field, "must be positive".into());
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(
                "head_dim",
                format!("{} is odd; RoPE needs an even head dim", self.head_dim),
            );
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return bad("rope_theta", format!("{} is not positive", self.rope_theta));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return bad(
                "rms_norm_eps",
                format!("{} is not positive", self.rms_norm_eps),
            );
        }
        Ok(())
    }

    /// Number of query heads sharing one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Reads and converts an HF `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::io(path, e))?;
        let raw: HfConfig = serde_json::from_str(&text).map_err(|source| PolicyError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        raw.into_config(&path.display().to_string())
    }

    /// Builds the config from GGUF metadata (llama.cpp key names) and the tensor directory
    /// (vocab size from `token_embd.weight`, tied head when `output.weight` is absent, q/k/v
    /// biases when `blk.0.attn_q.bias` exists).
    pub fn from_gguf(content: &gguf_file::Content, source_name: &str) -> Result<ModelConfig> {
        let md = |key: &str| content.metadata.get(key);
        let arch = md("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| PolicyError::config(source_name, "general.architecture", "missing"))?
            .clone();
        let family = Family::parse(&arch).ok_or_else(|| {
            PolicyError::config(
                source_name,
                "general.architecture",
                format!("`{arch}` is not supported (qwen2 or llama)"),
            )
        })?;
        let get_usize = |key: &str| -> Result<usize> {
            let full = format!("{arch}.{key}");
            let value =
                md(&full).ok_or_else(|| PolicyError::config(source_name, &full, "missing"))?;
            gguf_int(value).ok_or_else(|| PolicyError::config(source_name, &full, "not an integer"))
        };
        let get_f64 = |key: &str| -> Option<f64> {
            md(&format!("{arch}.{key}"))
                .and_then(|v| v.to_f32().ok().map(f64::from).or_else(|| v.to_f64().ok()))
        };
        let hidden_size = get_usize("embedding_length")?;
        let num_attention_heads = get_usize("attention.head_count")?;
        let num_key_value_heads =
            get_usize("attention.head_count_kv").unwrap_or(num_attention_heads);
        let head_dim = match md(&format!("{arch}.attention.key_length")).and_then(gguf_int) {
            Some(d) => d,
            None => match md(&format!("{arch}.rope.dimension_count")).and_then(gguf_int) {
                Some(d) => d,
                None => hidden_size / num_attention_heads.max(1),
            },
        };
        let embd = content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| PolicyError::weights(source_name, "token_embd.weight", "missing"))?;
        // candle reports GGUF shapes in row-major order: (vocab, hidden).
        let vocab_size = embd.shape.dims()[0];
        let tie_word_embeddings = !content.tensor_infos.contains_key("output.weight");
        let qkv_bias = content.tensor_infos.contains_key("blk.0.attn_q.bias");
        let o_bias = content.tensor_infos.contains_key("blk.0.attn_output.bias");
        let rope_scaling =
            match md(&format!("{arch}.rope.scaling.type")).and_then(|v| v.to_string().ok()) {
                None => None,
                Some(kind) if kind == "none" => None,
                Some(kind) if kind == "linear" => Some(RopeScaling::Linear {
                    factor: get_f64("rope.scaling.factor").unwrap_or(1.0),
                }),
                Some(kind) => {
                    return Err(PolicyError::config(
                        source_name,
                        format!("{arch}.rope.scaling.type"),
                        format!("`{kind}` is not supported (none or linear)"),
                    ));
                }
            };
        let token_id = |key: &str| md(key).and_then(gguf_int).map(|v| v as u32);
        let cfg = ModelConfig {
            family,
            vocab_size,
            hidden_size,
            intermediate_size: get_usize("feed_forward_length")?,
            num_hidden_layers: get_usize("block_count")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: get_usize("context_length").unwrap_or(4096),
            rope_theta: get_f64("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            rms_norm_eps: get_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            tie_word_embeddings,
            qkv_bias,
            o_bias,
            bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
            eos_token_id: token_id("tokenizer.ggml.eos_token_id")
                .into_iter()
                .collect(),
        };
        cfg.validate(source_name)?;
        Ok(cfg)
    }
}

/// Any GGUF integer value as usize.
fn gguf_int(value: &gguf_file::Value) -> Option<usize> {
    use gguf_file::Value as V;
    match value {
        V::U8(v) => Some(*v as usize),
        V::I8(v) => usize::try_from(*v).ok(),
        V::U16(v) => Some(*v as usize),
        V::I16(v) => usize::try_from(*v).ok(),
        V::U32(v) => Some(*v as usize),
        V::I32(v) => usize::try_from(*v).ok(),
        V::U64(v) => usize::try_from(*v).ok(),
        V::I64(v) => usize::try_from(*v).ok(),
        _ => None,
    }
}

/// One token id or several, as HF writes `eos_token_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// `"eos_token_id": 2`
    One(u32),
    /// `"eos_token_id": [128001, 128009]`
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// An HF `config.json` for the Qwen2 or Llama family, as written (unknown keys ignored:
/// HF configs carry many keys irrelevant to inference, such as `transformers_version`).
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    /// `"qwen2"` or `"llama"`.
    pub model_type: Option<String>,
    /// e.g. `["Qwen2ForCausalLM"]`; used when `model_type` is absent.
    pub architectures: Option<Vec<String>>,
    /// See [`ModelConfig::vocab_size`].
    pub vocab_size: usize,
    /// See [`ModelConfig::hidden_size`].
    pub hidden_size: usize,
    /// See [`ModelConfig::intermediate_size`].
    pub intermediate_size: usize,
    /// See [`ModelConfig::num_hidden_layers`].
    pub num_hidden_layers: usize,
    /// See [`ModelConfig::num_attention_heads`].
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (no GQA).
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    /// Defaults to 4096.
    pub max_position_embeddings: Option<usize>,
    /// Defaults to 10000.
    pub rope_theta: Option<f64>,
    /// `{"rope_type": "llama3", ...}`, `{"type": "linear", "factor": ...}` or null.
    pub rope_scaling: Option<serde_json::Value>,
    /// Defaults to 1e-6.
    pub rms_norm_eps: Option<f64>,
    /// Defaults to false (both families' HF defaults).
    pub tie_word_embeddings: Option<bool>,
    /// Llama: bias on q/k/v/o. Qwen2 always has q/k/v biases.
    pub attention_bias: Option<bool>,
    /// Llama: bias in the MLP (unsupported when true).
    pub mlp_bias: Option<bool>,
    /// Must be `"silu"`.
    pub hidden_act: Option<String>,
    /// Qwen2: unsupported when true.
    pub use_sliding_window: Option<bool>,
    /// See [`ModelConfig::bos_token_id`].
    pub bos_token_id: Option<u32>,
    /// See [`ModelConfig::eos_token_id`].
    pub eos_token_id: Option<TokenIds>,
}

impl HfConfig {
    /// Resolves defaults and rejects what the decoder does not implement.
    pub fn into_config(self, source_name: &str) -> Result<ModelConfig> {
        let family_name = self.model_type.clone().or_else(|| {
            self.architectures
                .as_ref()
                .and_then(|a| a.first())
                .map(|arch| {
                    if arch.starts_with("Qwen2") {
                        "qwen2".to_string()
                    } else if arch.starts_with("Llama") {
                        "llama".to_string()
                    } else {
                        arch.clone()
                    }
                })
        });
        let family_name =
            family_name.ok_or_else(|| PolicyError::config(source_name, "model_type", "missing"))?;
        let family = Family::parse(&family_name).ok_or_else(|| {
            PolicyError::config(
                source_name,
                "model_type",
                format!("`{family_name}` is not supported (qwen2 or llama)"),
            )
        })?;
        if let Some(act) = &self.hidden_act
            && act != "silu"
        {
            return Err(PolicyError::config(
                source_name,
                "hidden_act",
                format!("`{act}` is not supported (silu)"),
            ));
        }
        if self.mlp_bias == Some(true) {
            return Err(PolicyError::config(
                source_name,
                "mlp_bias",
                "true is not supported",
            ));
        }
        if self.use_sliding_window == Some(true) {
            return Err(PolicyError::config(
                source_name,
                "use_sliding_window",
                "true is not supported",
            ));
        }
        let rope_scaling = parse_rope_scaling(self.rope_scaling.as_ref(), source_name)?;
        let num_attention_heads = self.num_attention_heads;
        let attention_bias = self.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            Family::Llama => (attention_bias, attention_bias),
        };
        let cfg = ModelConfig {
            family,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / num_attention_heads.max(1)),
            max_position_embeddings: self.max_position_embeddings.unwrap_or(4096),
            rope_theta: self.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            bos_token_id: self.bos_token_id,
            eos_token_id: self.eos_token_id.map(|e| e.to_vec()).unwrap_or_default(),
        };
        cfg.validate(source_name)?;
        Ok(cfg)
    }
}

fn parse_rope_scaling(
    value: Option<&serde_json::Value>,
    source_name: &str,
) -> Result<Option<RopeScaling>> {
    let Some(value) = value else { return Ok(None) };
    if value.is_null() {
        return Ok(None);
    }
    let bad = |field: &str, message: String| {
        PolicyError::config(source_name, format!("rope_scaling.{field}"), message)
    };
    let kind = value
        .get("rope_type")
        .or_else(|| value.get("type"))
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("rope_type", "missing".into()))?;
    let num = |field: &str| -> Result<f64> {
        value
            .get(field)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| bad(field, "missing or not a number".into()))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: num("factor")?,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        })),
        other => Err(bad(
            "rope_type",
            format!("`{other}` is not supported (default, linear, llama3)"),
        )),
    }
}

/// The RoPE inverse frequencies for `cfg`, scaling applied (HF's `_compute_*_parameters`).
pub(crate) fn rope_inv_freq(cfg: &ModelConfig) -> Vec<f64> {
    let dim = cfg.head_dim;
    let base: Vec<f64> = (0..dim)
        .step_by(2)
        .map(|i| 1.0 / cfg.rope_theta.powf(i as f64 / dim as f64))
        .collect();
    match &cfg.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.into_iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let old_len = *original_max_position_embeddings as f64;
            let low_freq_wavelen = old_len / low_freq_factor;
            let high_freq_wavelen = old_len / high_freq_factor;
            base.into_iter()
                .map(|freq| {
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    if wavelen < high_freq_wavelen {
                        freq
                    } else if wavelen > low_freq_wavelen {
                        freq / factor
                    } else {
                        let smooth = (old_len / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    }
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen_config_resolves_defaults_and_biases() {
        let json = r#"{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","vocab_size":151936,
            "hidden_size":1536,"intermediate_size":8960,"num_hidden_layers":28,"num_attention_heads":12,
            "num_key_value_heads":2,"max_position_embeddings":32768,"rope_theta":1000000.0,
            "rms_norm_eps":1e-06,"tie_word_embeddings":true,"hidden_act":"silu","use_sliding_window":false,
            "sliding_window":32768,"bos_token_id":151643,"eos_token_id":151645,"rope_scaling":null,
            "torch_dtype":"bfloat16"}"#;
        let raw: HfConfig = serde_json::from_str(json).unwrap();
        let cfg = raw.into_config("config.json").unwrap();
        assert_eq!(cfg.family, Family::Qwen2);
        assert_eq!(cfg.head_dim, 128);
        assert_eq!(cfg.kv_groups(), 6);
        assert!(cfg.qkv_bias && !cfg.o_bias && cfg.tie_word_embeddings);
        assert_eq!(cfg.eos_token_id, vec![151645]);
    }

    #[test]
    fn llama3_rope_scaling_and_eos_list() {
        let json = r#"{"model_type":"llama","vocab_size":128256,"hidden_size":2048,"intermediate_size":8192,
            "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"rms_norm_eps":1e-5,
            "rope_theta":500000.0,"max_position_embeddings":131072,"eos_token_id":[128001,128008,128009],
            "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"}}"#;
        let cfg = serde_json::from_str::<HfConfig>(json)
            .unwrap()
            .into_config("c")
            .unwrap();
        assert_eq!(cfg.eos_token_id, vec![128001, 128008, 128009]);
        let inv = rope_inv_freq(&cfg);
        // Highest frequency kept, lowest divided by the factor.
        assert_eq!(inv[0], 1.0);
        let unscaled_last = 1.0 / 500000f64.powf(62.0 / 64.0);
        assert!((inv[31] - unscaled_last / 32.0).abs() < 1e-15);
    }

    #[test]
    fn unsupported_fields_are_named() {
        let json = r#"{"model_type":"mistral","vocab_size":1,"hidden_size":2,"intermediate_size":2,
            "num_hidden_layers":1,"num_attention_heads":1}"#;
        let err = serde_json::from_str::<HfConfig>(json)
            .unwrap()
            .into_config("x/config.json")
            .unwrap_err();
        assert!(err.to_string().contains("model_type"), "{err}");
        let json = r#"{"model_type":"qwen2","vocab_size":8,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":3}"#;
        let err = serde_json::from_str::<HfConfig>(json)
            .unwrap()
            .into_config("x/config.json")
            .unwrap_err();
        assert!(err.to_string().contains("num_key_value_heads"), "{err}");
        let json = r#"{"model_type":"qwen2","vocab_size":8,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"rope_scaling":{"type":"yarn","factor":4.0}}"#;
        let err = serde_json::from_str::<HfConfig>(json)
            .unwrap()
            .into_config("x/config.json")
            .unwrap_err();
        assert!(err.to_string().contains("rope_scaling.rope_type"), "{err}");
    }
}
