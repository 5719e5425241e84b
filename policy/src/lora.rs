//! LoRA adapters: low-rank updates `W x + (alpha / r) · B A x` on any subset of the seven
//! projections of every decoder layer.
//!
//! The base weights are never copied: an adapter is only its `A`/`B` tensors, passed to each
//! forward call (`None` runs the base model, which is the reference policy for the KL term).
//! A [`LoraAdapter`] is an immutable value — share it behind an `Arc` and replace the `Arc`
//! whole to swap adapters under concurrent samplers (see [`crate::AdapterSlot`]).
//! [`TrainableAdapter`] wraps one whose tensors are candle [`Var`]s, for the learner.
//!
//! Tensor names follow PEFT (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`),
//! with `A: (r, in_features)` and `B: (out_features, r)`, PEFT's own layout.

use crate::config::ModelConfig;
use crate::error::{CandleContext, PolicyError, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One of the seven adaptable projections of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LoraTarget {
    /// `self_attn.q_proj`
    #[serde(rename = "q_proj")]
    Q,
    /// `self_attn.k_proj`
    #[serde(rename = "k_proj")]
    K,
    /// `self_attn.v_proj`
    #[serde(rename = "v_proj")]
    V,
    /// `self_attn.o_proj`
    #[serde(rename = "o_proj")]
    O,
    /// `mlp.gate_proj`
    #[serde(rename = "gate_proj")]
    Gate,
    /// `mlp.up_proj`
    #[serde(rename = "up_proj")]
    Up,
    /// `mlp.down_proj`
    #[serde(rename = "down_proj")]
    Down,
}

impl LoraTarget {
    /// All seven, in the canonical order used for variable lists.
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// The module name (`q_proj`, …) as PEFT's `target_modules` spells it.
    pub fn module_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// The parent module inside a decoder layer (`self_attn` or `mlp`).
    pub fn parent(self) -> &'static str {
        match self {
            LoraTarget::Q | LoraTarget::K | LoraTarget::V | LoraTarget::O => "self_attn",
            LoraTarget::Gate | LoraTarget::Up | LoraTarget::Down => "mlp",
        }
    }

    /// Parses a module name.
    pub fn parse(name: &str) -> Option<LoraTarget> {
        LoraTarget::ALL
            .into_iter()
            .find(|t| t.module_name() == name)
    }

    /// `(in_features, out_features)` of this projection.
    pub fn dims(self, cfg: &ModelConfig) -> (usize, usize) {
        let q_dim = cfg.num_attention_heads * cfg.head_dim;
        let kv_dim = cfg.num_key_value_heads * cfg.head_dim;
        match self {
            LoraTarget::Q => (cfg.hidden_size, q_dim),
            LoraTarget::K | LoraTarget::V => (cfg.hidden_size, kv_dim),
            LoraTarget::O => (q_dim, cfg.hidden_size),
            LoraTarget::Gate | LoraTarget::Up => (cfg.hidden_size, cfg.intermediate_size),
            LoraTarget::Down => (cfg.intermediate_size, cfg.hidden_size),
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// LoRA hyperparameters (the `[lora]` config section). Defaults are production's:
/// r=64, alpha=128, dropout 0.05, all seven projections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of the update.
    pub r: usize,
    /// Scale numerator: the update is multiplied by `alpha / r` (or `alpha / sqrt(r)` with rsLoRA).
    pub alpha: f64,
    /// Dropout probability on the LoRA branch's input, in train mode.
    pub dropout: f64,
    /// Which projections carry an adapter.
    pub target_modules: Vec<LoraTarget>,
    /// rsLoRA scaling (`alpha / sqrt(r)`), as PEFT's `use_rslora`.
    #[serde(default)]
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 64,
            alpha: 128.0,
            dropout: 0.05,
            target_modules: LoraTarget::ALL.to_vec(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// Rejects impossible values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: String| Err(PolicyError::config("lora", field, msg));
        if self.r == 0 {
            return bad("r", "must be positive".into());
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return bad("alpha", format!("{} is not a positive number", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", format!("{} is not in [0, 1)", self.dropout));
        }
        if self.target_modules.is_empty() {
            return bad("target_modules", "is empty".into());
        }
        let mut seen = self.target_modules.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.target_modules.len() {
            return bad("target_modules", "lists a module twice".into());
        }
        Ok(())
    }

    /// The factor multiplying `B A x`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Whether `target` carries an adapter.
    pub fn targets(&self, target: LoraTarget) -> bool {
        self.target_modules.contains(&target)
    }
}

/// The `A` (r × in) and `B` (out × r) matrices of one adapted projection.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// Down-projection, `(r, in_features)`.
    pub a: Tensor,
    /// Up-projection, `(out_features, r)`.
    pub b: Tensor,
}

/// How [`LoraAdapter::init`] fills the matrices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoraInit {
    /// PEFT's default: `A` Kaiming-uniform (bound `1/sqrt(in)`), `B` zero, so the adapted
    /// model starts equal to the base model.
    Peft,
    /// Both `A` and `B` uniform in `±bound/sqrt(fan_in)`: a non-trivial adapter, for tests.
    Random {
        /// Uniform bound multiplier.
        bound: f64,
    },
}

/// An adapter's weights for every layer and target, plus its config. Immutable: clone is
/// cheap (tensors are reference-counted) and never copies data.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    config: LoraConfig,
    /// `layers[i][target.index()]`
    layers: Vec<[Option<LoraPair>; 7]>,
    scale: f64,
}

/// The PEFT tensor name of a target's `lora_A`/`lora_B` weight.
pub fn peft_tensor_name(layer: usize, target: LoraTarget, is_b: bool) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{}.lora_{}.weight",
        target.parent(),
        target.module_name(),
        if is_b { "B" } else { "A" }
    )
}

impl LoraAdapter {
    /// A freshly initialised adapter for a model of shape `model_cfg`.
    pub fn init(
        model_cfg: &ModelConfig,
        config: &LoraConfig,
        init: LoraInit,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut uniform = |rows: usize, cols: usize, bound: f64| -> Result<Tensor> {
            let values: Vec<f32> = (0..rows * cols)
                .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
                .collect();
            Tensor::from_vec(values, (rows, cols), device)
                .and_then(|t| t.to_dtype(dtype))
                .ctx(|| "lora init".to_string())
        };
        let mut layers = Vec::with_capacity(model_cfg.num_hidden_layers);
        for _ in 0..model_cfg.num_hidden_layers {
            let mut slots: [Option<LoraPair>; 7] = Default::default();
            for target in LoraTarget::ALL {
                if !config.targets(target) {
                    continue;
                }
                let (fan_in, fan_out) = target.dims(model_cfg);
                let (a, b) = match init {
                    LoraInit::Peft => (
                        uniform(config.r, fan_in, 1.0 / (fan_in as f64).sqrt())?,
                        Tensor::zeros((fan_out, config.r), dtype, device)
                            .ctx(|| "lora init".to_string())?,
                    ),
                    LoraInit::Random { bound } => (
                        uniform(config.r, fan_in, bound / (fan_in as f64).sqrt())?,
                        uniform(fan_out, config.r, bound / (config.r as f64).sqrt())?,
                    ),
                };
                slots[target.index()] = Some(LoraPair { a, b });
            }
            layers.push(slots);
        }
        Ok(Self {
            scale: config.scale(),
            config: config.clone(),
            layers,
        })
    }

    /// Builds an adapter from PEFT-named tensors (as in `adapter_model.safetensors`),
    /// checking that every expected tensor is present with the right shape and that no
    /// unexpected `lora_` tensor is left over. `source_name` goes into errors.
    pub fn from_named_tensors(
        model_cfg: &ModelConfig,
        config: &LoraConfig,
        mut tensors: HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
        source_name: &str,
    ) -> Result<Self> {
        config.validate()?;
        let mut layers = Vec::with_capacity(model_cfg.num_hidden_layers);
        for layer in 0..model_cfg.num_hidden_layers {
            let mut slots: [Option<LoraPair>; 7] = Default::default();
            for target in LoraTarget::ALL {
                if !config.targets(target) {
                    continue;
                }
                let (fan_in, fan_out) = target.dims(model_cfg);
                let mut take = |is_b: bool, shape: (usize, usize)| -> Result<Tensor> {
                    let name = peft_tensor_name(layer, target, is_b);
                    // PEFT also writes names with the adapter name (`lora_A.default.weight`).
                    let alt = name.replace(".weight", ".default.weight");
                    let tensor = tensors
                        .remove(&name)
                        .or_else(|| tensors.remove(&alt))
                        .ok_or_else(|| PolicyError::weights(source_name, &name, "missing"))?;
                    if tensor.dims() != [shape.0, shape.1] {
                        return Err(PolicyError::weights(
                            source_name,
                            &name,
                            format!(
                                "shape {:?}, expected {:?}",
                                tensor.dims(),
                                [shape.0, shape.1]
                            ),
                        ));
                    }
                    tensor
                        .to_device(device)
                        .and_then(|t| t.to_dtype(dtype))
                        .ctx(|| format!("{source_name}: converting {name}"))
                };
                let a = take(false, (config.r, fan_in))?;
                let b = take(true, (fan_out, config.r))?;
                slots[target.index()] = Some(LoraPair { a, b });
            }
            layers.push(slots);
        }
        if let Some(extra) = tensors.keys().filter(|k| k.contains("lora_")).min() {
            return Err(PolicyError::weights(
                source_name,
                extra,
                "not expected by the adapter config (wrong target_modules or layer count?)",
            ));
        }
        Ok(Self {
            scale: config.scale(),
            config: config.clone(),
            layers,
        })
    }

    /// The adapter's hyperparameters.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The multiplier of `B A x`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Number of layers covered.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The pair for `target` in `layer`, if adapted.
    pub fn get(&self, layer: usize, target: LoraTarget) -> Option<&LoraPair> {
        self.layers
            .get(layer)
            .and_then(|slots| slots[target.index()].as_ref())
    }

    pub(crate) fn layer(&self, layer: usize) -> Option<&[Option<LoraPair>; 7]> {
        self.layers.get(layer)
    }

    /// All tensors with their PEFT names, in the stable order (layer, then q, k, v, o, gate,
    /// up, down, then A before B).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (layer, slots) in self.layers.iter().enumerate() {
            for target in LoraTarget::ALL {
                if let Some(pair) = &slots[target.index()] {
                    out.push((peft_tensor_name(layer, target, false), pair.a.clone()));
                    out.push((peft_tensor_name(layer, target, true), pair.b.clone()));
                }
            }
        }
        out
    }

    /// Total number of adapter parameters.
    pub fn num_parameters(&self) -> usize {
        self.named_tensors()
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum()
    }

    /// A deep copy on `device` in `dtype`, detached from any autograd graph: the value to
    /// publish while the original keeps training in place.
    pub fn snapshot(&self, device: &Device, dtype: DType) -> Result<Self> {
        let copy = |t: &Tensor| -> Result<Tensor> {
            // `copy` forces fresh storage even when device and dtype already match.
            t.detach()
                .to_device(device)
                .and_then(|t| t.to_dtype(dtype))
                .and_then(|t| t.copy())
                .ctx(|| "adapter snapshot".to_string())
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for slots in &self.layers {
            let mut new_slots: [Option<LoraPair>; 7] = Default::default();
            for (i, slot) in slots.iter().enumerate() {
                if let Some(pair) = slot {
                    new_slots[i] = Some(LoraPair {
                        a: copy(&pair.a)?,
                        b: copy(&pair.b)?,
                    });
                }
            }
            layers.push(new_slots);
        }
        Ok(Self {
            config: self.config.clone(),
            layers,
            scale: self.scale,
        })
    }
}

/// An adapter whose tensors are trainable [`Var`]s (the learner's). The forward passes read
/// the vars' tensors directly, so `loss.backward()` yields gradients for exactly
/// [`TrainableAdapter::vars`]; an optimizer updates them in place.
#[derive(Debug, Clone)]
pub struct TrainableAdapter {
    adapter: LoraAdapter,
    vars: Vec<(String, Var)>,
}

impl TrainableAdapter {
    /// PEFT-initialised trainable adapter (B = 0: the model starts as the base model).
    pub fn new(
        model_cfg: &ModelConfig,
        config: &LoraConfig,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Self::from_adapter(&LoraAdapter::init(
            model_cfg,
            config,
            LoraInit::Peft,
            seed,
            device,
            dtype,
        )?)
    }

    /// Trainable copy of an existing adapter (e.g. one loaded to resume training).
    pub fn from_adapter(adapter: &LoraAdapter) -> Result<Self> {
        let mut vars = Vec::new();
        let mut layers = Vec::with_capacity(adapter.layers.len());
        for (layer, slots) in adapter.layers.iter().enumerate() {
            let mut new_slots: [Option<LoraPair>; 7] = Default::default();
            for target in LoraTarget::ALL {
                if let Some(pair) = &slots[target.index()] {
                    let a = Var::from_tensor(
                        &pair.a.detach().copy().ctx(|| "adapter var".to_string())?,
                    )
                    .ctx(|| "adapter var".to_string())?;
                    let b = Var::from_tensor(
                        &pair.b.detach().copy().ctx(|| "adapter var".to_string())?,
                    )
                    .ctx(|| "adapter var".to_string())?;
                    new_slots[target.index()] = Some(LoraPair {
                        a: a.as_tensor().clone(),
                        b: b.as_tensor().clone(),
                    });
                    vars.push((peft_tensor_name(layer, target, false), a));
                    vars.push((peft_tensor_name(layer, target, true), b));
                }
            }
            layers.push(new_slots);
        }
        Ok(Self {
            adapter: LoraAdapter {
                config: adapter.config.clone(),
                layers,
                scale: adapter.scale,
            },
            vars,
        })
    }

    /// The adapter to pass to forward calls; its tensors are the vars themselves.
    pub fn adapter(&self) -> &LoraAdapter {
        &self.adapter
    }

    /// The trainable variables with their PEFT names, in the stable order of
    /// [`LoraAdapter::named_tensors`].
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Just the variables (what `candle_nn::AdamW::new` takes).
    pub fn all_vars(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    /// Overwrites every var in place with the matching tensor of `source` (same config and
    /// shapes), e.g. when resuming from a checkpoint.
    pub fn assign(&self, source: &LoraAdapter) -> Result<()> {
        let values: HashMap<String, Tensor> = source.named_tensors().into_iter().collect();
        for (name, var) in &self.vars {
            let value = values.get(name).ok_or_else(|| {
                PolicyError::weights("adapter", name, "missing in the source adapter")
            })?;
            let value = value
                .to_device(var.device())
                .and_then(|t| t.to_dtype(var.dtype()))
                .ctx(|| format!("assigning {name}"))?;
            var.set(&value).ctx(|| format!("assigning {name}"))?;
        }
        Ok(())
    }

    /// A detached deep copy of the current values (to publish or save while training goes on).
    pub fn snapshot(&self) -> Result<LoraAdapter> {
        let first = self
            .vars
            .first()
            .map(|(_, v)| (v.device().clone(), v.dtype()));
        let (device, dtype) = first.unwrap_or((Device::Cpu, DType::F32));
        self.adapter.snapshot(&device, dtype)
    }
}
