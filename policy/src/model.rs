//! The decoder shared by the Qwen2 and Llama families (one file, a [`Family`] switch for
//! the few differences): token embedding, `num_hidden_layers` pre-norm blocks of grouped-
//! query attention with RoPE and a SwiGLU MLP, a final RMSNorm and the LM head (tied to the
//! embedding or not). References: HF `modeling_qwen2.py` / `modeling_llama.py`; candle's
//! `candle-transformers/src/models/{qwen2,llama}.rs`, whose logits the tests match.
//!
//! Two kinds of forward pass share this code:
//! - **inference** (sampling, reference log-probs): candle's fused RMSNorm, RoPE and
//!   softmax kernels;
//! - **train** ([`ForwardMode::Train`]): the same math from primitive ops, because in candle
//!   0.11 `ops::rms_norm`, `rotary_emb::rope` and `ops::softmax_last_dim` have no backward —
//!   gradients would silently stop there. LoRA dropout applies only in train mode.
//!
//! Base-model linears (the seven projections and the LM head) use a matmul whose backward
//! skips the frozen weight's gradient (`crate::frozen`): candle's own matmul would compute
//! and store it, a third of the backward's work spent on a constant.
//!
//! Attention never materialises repeated K/V heads: the queries of one KV group are folded
//! into the row dimension (`(B, n_kv, groups·L, d) @ (B, n_kv, d, T)`), which keeps the KV
//! cache un-copied at decode time.
//!
//! [`Family`]: crate::config::Family

use crate::config::{Family, ModelConfig, rope_inv_freq};
use crate::dropout::DropoutRng;
use crate::error::{CandleContext, PolicyError, Result};
use crate::lora::{LoraAdapter, LoraPair, LoraTarget};
use crate::{frozen, kernels};
use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;

/// Which formulation a forward pass uses.
#[derive(Debug)]
pub enum ForwardMode<'a> {
    /// Fused kernels, no dropout. Gradients may not flow through norms/RoPE/softmax.
    Inference,
    /// Differentiable formulation; LoRA dropout when an RNG is given (and the adapter's
    /// `dropout` is positive).
    Train {
        /// The dropout mask source; `None` runs train-mode math without dropout.
        dropout: Option<&'a mut DropoutRng>,
    },
}

impl ForwardMode<'_> {
    /// Train mode without dropout: differentiable and deterministic.
    pub fn train_no_dropout() -> ForwardMode<'static> {
        ForwardMode::Train { dropout: None }
    }
}

/// Per-call state threaded through the layers.
pub(crate) struct Pass<'a> {
    pub adapter: Option<&'a LoraAdapter>,
    pub dropout: Option<&'a mut DropoutRng>,
    pub differentiable: bool,
}

impl<'a> Pass<'a> {
    pub fn new(adapter: Option<&'a LoraAdapter>, mode: ForwardMode<'a>) -> Self {
        match mode {
            ForwardMode::Inference => Pass {
                adapter,
                dropout: None,
                differentiable: false,
            },
            ForwardMode::Train { dropout } => Pass {
                adapter,
                dropout,
                differentiable: true,
            },
        }
    }
}

/// `x @ w.T (+ bias)`, flattening leading dims so the CPU and CUDA backends run one plain
/// GEMM instead of a broadcast batched matmul. With `fast` (inference only: no backward),
/// few f32 rows on the CPU go through the streaming decode kernel instead. A `frozen`
/// weight (the base model's, never trained) gets no gradient: its backward computes only
/// the input's (see `crate::frozen`); LoRA matrices pass `false`.
fn linear_forward(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    fast: bool,
    frozen: bool,
) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_features = *dims.last().unwrap_or(&0);
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = if x.is_contiguous() {
        x.reshape((rows, in_features))?
    } else {
        x.contiguous()?.reshape((rows, in_features))?
    };
    let fused = if fast && rows <= kernels::MAX_ROWS && x2.device().is_cpu() {
        kernels::fused_linear(
            &x2,
            &[kernels::Segment {
                weight,
                bias,
                lora: None,
            }],
        )?
    } else {
        None
    };
    let y = match fused {
        Some(mut out) => out.remove(0),
        None => {
            let y = if frozen {
                frozen::frozen_linear(&x2, weight)?
            } else {
                x2.matmul(&weight.t()?)?
            };
            match bias {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            }
        }
    };
    let mut out_dims = dims;
    *out_dims.last_mut().unwrap() = y.dim(1)?;
    y.reshape(out_dims)
}

/// One of the seven projections: a frozen base linear plus an optional LoRA branch
/// supplied per call.
#[derive(Debug, Clone)]
struct Proj {
    weight: Tensor,
    bias: Option<Tensor>,
    target: LoraTarget,
}

impl Proj {
    fn new(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        target: LoraTarget,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            target,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        lora: Option<&[Option<LoraPair>; 7]>,
        pass: &mut Pass,
    ) -> candle_core::Result<Tensor> {
        let fast = !pass.differentiable;
        let base = linear_forward(xs, &self.weight, self.bias.as_ref(), fast, true)?;
        let (Some(slots), Some(adapter)) = (lora, pass.adapter) else {
            return Ok(base);
        };
        let Some(pair) = &slots[self.target.index()] else {
            return Ok(base);
        };
        let lora_dtype = pair.a.dtype();
        let mut x = if xs.dtype() == lora_dtype {
            xs.clone()
        } else {
            xs.to_dtype(lora_dtype)?
        };
        let p = adapter.config().dropout;
        if pass.differentiable
            && p > 0.0
            && let Some(rng) = pass.dropout.as_deref_mut()
        {
            let mask = rng
                .mask(x.shape(), p, x.device(), lora_dtype)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            x = (x * mask)?;
        }
        let delta = linear_forward(
            &linear_forward(&x, &pair.a, None, fast, false)?,
            &pair.b,
            None,
            fast,
            false,
        )?;
        let delta = (delta * adapter.scale())?;
        let delta = if delta.dtype() == base.dtype() {
            delta
        } else {
            delta.to_dtype(base.dtype())?
        };
        base + delta
    }
}

/// Applies projections that share their input. In inference on the CPU with few rows, all
/// of them (base, bias and LoRA branch) run as two fused kernel passes — one for the LoRA
/// `A` matrices, one for everything else; otherwise each projection runs as candle ops.
fn project(
    projs: &[&Proj],
    xs: &Tensor,
    lora: Option<&[Option<LoraPair>; 7]>,
    pass: &mut Pass,
) -> candle_core::Result<Vec<Tensor>> {
    if let Some(out) = project_fused(projs, xs, lora, pass)? {
        return Ok(out);
    }
    projs.iter().map(|p| p.forward(xs, lora, pass)).collect()
}

fn project_fused(
    projs: &[&Proj],
    xs: &Tensor,
    lora: Option<&[Option<LoraPair>; 7]>,
    pass: &Pass,
) -> candle_core::Result<Option<Vec<Tensor>>> {
    let dims = xs.dims().to_vec();
    let in_features = *dims.last().unwrap_or(&0);
    let rows: usize = dims[..dims.len() - 1].iter().product();
    if pass.differentiable || rows > kernels::MAX_ROWS || !xs.device().is_cpu() {
        return Ok(None);
    }
    let x2 = xs.contiguous()?.reshape((rows, in_features))?;
    let pairs: Vec<Option<&LoraPair>> = projs
        .iter()
        .map(|p| match (lora, pass.adapter) {
            (Some(slots), Some(_)) => slots[p.target.index()].as_ref(),
            _ => None,
        })
        .collect();
    let a_segments: Vec<kernels::Segment> = pairs
        .iter()
        .flatten()
        .map(|pair| kernels::Segment {
            weight: &pair.a,
            bias: None,
            lora: None,
        })
        .collect();
    let mut hs = if a_segments.is_empty() {
        Vec::new()
    } else {
        match kernels::fused_linear(&x2, &a_segments)? {
            Some(hs) => hs,
            None => return Ok(None),
        }
    };
    let scale = pass.adapter.map(|a| a.scale() as f32).unwrap_or(0.0);
    hs.reverse();
    let hs: Vec<Option<Tensor>> = pairs.iter().map(|p| p.and_then(|_| hs.pop())).collect();
    let segments: Vec<kernels::Segment> = projs
        .iter()
        .zip(pairs.iter().zip(&hs))
        .map(|(p, (pair, h))| kernels::Segment {
            weight: &p.weight,
            bias: p.bias.as_ref(),
            lora: pair.zip(h.as_ref()).map(|(pair, h)| (h, &pair.b, scale)),
        })
        .collect();
    let Some(outs) = kernels::fused_linear(&x2, &segments)? else {
        return Ok(None);
    };
    outs.into_iter()
        .map(|y| {
            let mut out_dims = dims.clone();
            *out_dims.last_mut().expect("rank >= 1") = y.dim(1)?;
            y.reshape(out_dims)
        })
        .collect::<candle_core::Result<Vec<_>>>()
        .map(Some)
}

/// RMSNorm with a fused (inference) and a differentiable (train) path.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            eps,
        })
    }

    fn forward(&self, xs: &Tensor, differentiable: bool) -> candle_core::Result<Tensor> {
        if !differentiable && xs.is_contiguous() {
            return candle_nn::ops::rms_norm(xs, &self.weight, self.eps as f32);
        }
        // HF: x * rsqrt(mean(x^2) + eps) in f32, cast back, times the weight.
        let dtype = xs.dtype();
        let internal = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let x = xs.to_dtype(internal)?;
        let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_mul(&(mean_sq + self.eps)?.sqrt()?.recip()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}

/// The cos/sin rows for the positions of one forward call, shared by all layers.
pub(crate) struct RopeSlice {
    /// `(L, d/2)` or `(B, L, d/2)`, contiguous (fused kernel layout).
    cos: Tensor,
    sin: Tensor,
    /// Full-width `(1|B, 1, L, d)` variants for the differentiable path.
    cos_full: Option<Tensor>,
    sin_full: Option<Tensor>,
}

/// Positions of the tokens of one forward call.
pub(crate) enum Positions<'a> {
    /// Every row uses `offset, offset+1, …`.
    Offset(usize),
    /// Per-row positions `(B, L)` as u32 (left-padded batches).
    PerRow(&'a Tensor),
}

fn rotate_half(xs: &Tensor) -> candle_core::Result<Tensor> {
    let half = xs.dim(D::Minus1)? / 2;
    let x1 = xs.narrow(D::Minus1, 0, half)?;
    let x2 = xs.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

impl RopeSlice {
    fn apply(&self, xs: &Tensor, differentiable: bool) -> candle_core::Result<Tensor> {
        match (&self.cos_full, &self.sin_full) {
            (Some(cos), Some(sin)) if differentiable => {
                xs.broadcast_mul(cos)? + rotate_half(xs)?.broadcast_mul(sin)?
            }
            _ => candle_nn::rotary_emb::rope(&xs.contiguous()?, &self.cos, &self.sin),
        }
    }
}

/// Grouped-query self-attention.
#[derive(Debug, Clone)]
struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    o_proj: Proj,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

/// Numerically stable softmax over the last dim from primitive (differentiable) ops. The
/// max is detached: softmax is shift-invariant, so its gradient through the max is zero.
pub(crate) fn softmax_differentiable(xs: &Tensor) -> candle_core::Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = xs.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    exp.broadcast_div(&sum)
}

impl Attention {
    fn new(cfg: &ModelConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        let q_dim = cfg.num_attention_heads * cfg.head_dim;
        let kv_dim = cfg.num_key_value_heads * cfg.head_dim;
        Ok(Self {
            q_proj: Proj::new(h, q_dim, cfg.qkv_bias, LoraTarget::Q, vb.pp("q_proj"))?,
            k_proj: Proj::new(h, kv_dim, cfg.qkv_bias, LoraTarget::K, vb.pp("k_proj"))?,
            v_proj: Proj::new(h, kv_dim, cfg.qkv_bias, LoraTarget::V, vb.pp("v_proj"))?,
            o_proj: Proj::new(q_dim, h, cfg.o_bias, LoraTarget::O, vb.pp("o_proj"))?,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        xs: &Tensor,
        rope: &RopeSlice,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
        lora: Option<&[Option<LoraPair>; 7]>,
        pass: &mut Pass,
    ) -> candle_core::Result<Tensor> {
        let (b_sz, q_len, _) = xs.dims3()?;
        let diff = pass.differentiable;
        let mut qkv = project(&[&self.q_proj, &self.k_proj, &self.v_proj], xs, lora, pass)?;
        let v = qkv.pop().expect("three projections");
        let k = qkv.pop().expect("three projections");
        let q = qkv.pop().expect("three projections");
        let q = q
            .reshape((b_sz, q_len, self.num_heads, self.head_dim))?
            .transpose(1, 2)?;
        let k = k
            .reshape((b_sz, q_len, self.num_kv_heads, self.head_dim))?
            .transpose(1, 2)?;
        let v = v
            .reshape((b_sz, q_len, self.num_kv_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = rope.apply(&q.contiguous()?, diff)?;
        let k = rope.apply(&k.contiguous()?, diff)?.contiguous()?;
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, &k, &v)?,
            None => (k, v),
        };
        let kv_len = k.dim(2)?;
        let groups = self.num_heads / self.num_kv_heads;
        // Heads h = kv·groups + j share kv head `kv`: fold j into the query-row dimension.
        let q =
            q.contiguous()?
                .reshape((b_sz, self.num_kv_heads, groups * q_len, self.head_dim))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?;
        let att = match mask {
            None => att,
            Some(mask) => att
                .reshape((b_sz, self.num_kv_heads, groups, q_len, kv_len))?
                .broadcast_add(mask)?
                .reshape((b_sz, self.num_kv_heads, groups * q_len, kv_len))?,
        };
        let in_dtype = att.dtype();
        let att = if in_dtype == DType::F32 || in_dtype == DType::F64 {
            att
        } else {
            att.to_dtype(DType::F32)?
        };
        let att = if diff {
            softmax_differentiable(&att)?
        } else {
            candle_nn::ops::softmax_last_dim(&att)?
        };
        let att = att.to_dtype(in_dtype)?;
        let y = att.matmul(&v)?;
        let y = y
            .reshape((b_sz, self.num_heads, q_len, self.head_dim))?
            .transpose(1, 2)?
            .reshape((b_sz, q_len, self.num_heads * self.head_dim))?;
        Ok(project(&[&self.o_proj], &y, lora, pass)?.remove(0))
    }
}

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Proj,
    up_proj: Proj,
    down_proj: Proj,
}

impl Mlp {
    fn new(cfg: &ModelConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Proj::new(h, i, false, LoraTarget::Gate, vb.pp("gate_proj"))?,
            up_proj: Proj::new(h, i, false, LoraTarget::Up, vb.pp("up_proj"))?,
            down_proj: Proj::new(i, h, false, LoraTarget::Down, vb.pp("down_proj"))?,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        lora: Option<&[Option<LoraPair>; 7]>,
        pass: &mut Pass,
    ) -> candle_core::Result<Tensor> {
        let mut gate_up = project(&[&self.gate_proj, &self.up_proj], xs, lora, pass)?;
        let up = gate_up.pop().expect("two projections");
        let gate = gate_up.pop().expect("two projections").silu()?;
        Ok(project(&[&self.down_proj], &(gate * up)?, lora, pass)?.remove(0))
    }
}

/// One pre-norm decoder block.
#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(cfg: &ModelConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
        })
    }
}

/// A per-generation KV cache: one preallocated `(B, n_kv, capacity, head_dim)` buffer per
/// layer and for K and V, written in place; attention reads a narrowed view, so a decode
/// step copies only the new token's K/V.
pub(crate) struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(
        cfg: &ModelConfig,
        batch: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let shape = (batch, cfg.num_key_value_heads, capacity, cfg.head_dim);
        let mut k = Vec::with_capacity(cfg.num_hidden_layers);
        let mut v = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            k.push(Tensor::zeros(shape, dtype, device)?);
            v.push(Tensor::zeros(shape, dtype, device)?);
        }
        Ok(Self {
            k,
            v,
            len: 0,
            capacity,
        })
    }

    /// Filled positions.
    pub fn len(&self) -> usize {
        self.len
    }

    fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let new = k.dim(2)?;
        if self.len + new > self.capacity {
            candle_core::bail!(
                "kv cache overflow: {} + {new} > capacity {}",
                self.len,
                self.capacity
            )
        }
        self.k[layer].slice_set(&k.contiguous()?, 2, self.len)?;
        self.v[layer].slice_set(&v.contiguous()?, 2, self.len)?;
        let total = self.len + new;
        Ok((
            self.k[layer].narrow(2, 0, total)?,
            self.v[layer].narrow(2, 0, total)?,
        ))
    }

    /// Marks `n` more positions as filled (after every layer appended them).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Keeps only `rows` (in that order) and drops the first `drop_front` positions of
    /// every row: finished sequences stop costing compute, and columns that are padding in
    /// every remaining row disappear.
    pub fn compact(&mut self, rows: &[u32], drop_front: usize) -> candle_core::Result<()> {
        let device = self.k[0].device().clone();
        let index = Tensor::from_slice(rows, rows.len(), &device)?;
        let keep = self.capacity - drop_front;
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            // index_select needs a contiguous source: select rows first, then drop columns.
            let selected = buf.index_select(&index, 0)?;
            *buf = if drop_front > 0 {
                selected.narrow(2, drop_front, keep)?.contiguous()?
            } else {
                selected
            };
        }
        self.len -= drop_front;
        self.capacity = keep;
        Ok(())
    }

    /// Writes a single-row cache (from a separate prefill) into row `row`, right-aligned so
    /// that it ends at position `self.len` (left padding before it).
    pub fn write_row(&mut self, row: usize, source: &KvCache) -> candle_core::Result<()> {
        let offset = self.len - source.len;
        for (dst, src) in self
            .k
            .iter()
            .zip(&source.k)
            .chain(self.v.iter().zip(&source.v))
        {
            let src = src.narrow(2, 0, source.len)?;
            // slice_set writes along one dim of a contiguous destination: build the whole
            // padded row (zeros left of the prompt and after it), then set it.
            let padded = src.pad_with_zeros(2, offset, self.capacity - self.len)?;
            dst.slice_set(&padded.contiguous()?, 0, row)?;
        }
        Ok(())
    }
}

/// The decoder with its LM head. Immutable after construction and cheap to clone (tensors
/// are reference-counted): any number of samplers and learners can share one base model.
#[derive(Debug, Clone)]
pub struct Model {
    cfg: ModelConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `None` when tied to `embed_tokens`.
    lm_head: Option<Tensor>,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    dtype: DType,
}

impl Model {
    /// Builds the model from weights named as in HF checkpoints (`model.embed_tokens.weight`,
    /// `model.layers.N.self_attn.q_proj.weight`, …, `lm_head.weight` unless tied).
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate("model config")?;
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let ctx = |what: &str| format!("loading {what}");
        let vb_m = vb.pp("model");
        let embed_tokens = vb_m
            .pp("embed_tokens")
            .get((cfg.vocab_size, cfg.hidden_size), "weight")
            .ctx(|| ctx("model.embed_tokens"))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            layers.push(
                DecoderLayer::new(cfg, vb_m.pp("layers").pp(i))
                    .ctx(|| ctx(&format!("model.layers.{i}")))?,
            );
        }
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb_m.pp("norm"))
            .ctx(|| ctx("model.norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(
                vb.pp("lm_head")
                    .get((cfg.vocab_size, cfg.hidden_size), "weight")
                    .ctx(|| ctx("lm_head"))?,
            )
        };
        let (cos, sin) = rope_tables(cfg, dtype, &device)?;
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            device,
            dtype,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Where the weights live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The weights' dtype (activations and KV cache use it too).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn rope_slice(
        &self,
        positions: &Positions,
        b_sz: usize,
        len: usize,
        differentiable: bool,
    ) -> candle_core::Result<RopeSlice> {
        let (cos, sin) = match positions {
            Positions::Offset(offset) => (
                self.cos.narrow(0, *offset, len)?,
                self.sin.narrow(0, *offset, len)?,
            ),
            Positions::PerRow(pos) => {
                let flat = pos.flatten_all()?;
                let half = self.cfg.head_dim / 2;
                (
                    self.cos
                        .index_select(&flat, 0)?
                        .reshape((b_sz, len, half))?,
                    self.sin
                        .index_select(&flat, 0)?
                        .reshape((b_sz, len, half))?,
                )
            }
        };
        let (cos_full, sin_full) = if differentiable {
            let full = |t: &Tensor| -> candle_core::Result<Tensor> {
                let t = Tensor::cat(&[t, t], D::Minus1)?;
                match t.rank() {
                    2 => t.unsqueeze(0)?.unsqueeze(0),
                    _ => t.unsqueeze(1),
                }
            };
            (Some(full(&cos)?), Some(full(&sin)?))
        } else {
            (None, None)
        };
        Ok(RopeSlice {
            cos: cos.contiguous()?,
            sin: sin.contiguous()?,
            cos_full,
            sin_full,
        })
    }

    /// The final-norm hidden states `(B, L, hidden)` of `tokens` `(B, L)`.
    ///
    /// `mask` is additive, broadcastable to `(B, 1, 1, L, kv_len)` (0 or -inf); `None` means
    /// no masking at all (a single query token). With a cache, keys/values are appended
    /// to it and attention covers the cache.
    pub(crate) fn forward_hidden(
        &self,
        tokens: &Tensor,
        positions: &Positions,
        mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        pass: &mut Pass,
    ) -> candle_core::Result<Tensor> {
        let (b_sz, len) = tokens.dims2()?;
        let rope = self.rope_slice(positions, b_sz, len, pass.differentiable)?;
        let mut xs = self
            .embed_tokens
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b_sz, len, self.cfg.hidden_size))?;
        if let Some(adapter) = pass.adapter
            && adapter.num_layers() != self.layers.len()
        {
            candle_core::bail!(
                "adapter has {} layers, the model {}",
                adapter.num_layers(),
                self.layers.len()
            )
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let lora = pass.adapter.and_then(|a| a.layer(i));
            let residual = &xs;
            let h = layer.input_layernorm.forward(&xs, pass.differentiable)?;
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            let h = layer
                .self_attn
                .forward(&h, &rope, mask, layer_cache, lora, pass)?;
            let xs_mid = (h + residual)?;
            let h = layer
                .post_attention_layernorm
                .forward(&xs_mid, pass.differentiable)?;
            let h = layer.mlp.forward(&h, lora, pass)?;
            xs = (xs_mid + h)?;
        }
        if let Some(cache) = cache {
            cache.advance(len);
        }
        self.norm.forward(&xs, pass.differentiable)
    }

    /// Logits `(…, vocab)` of final hidden states `(…, hidden)` (differentiable).
    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        let weight = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        linear_forward(hidden, weight, None, false, true).ctx(|| "lm head".to_string())
    }

    /// The LM head for sampling: no backward, the decode kernel for few rows.
    pub(crate) fn lm_head_inference(&self, hidden: &Tensor) -> Result<Tensor> {
        let weight = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        linear_forward(hidden, weight, None, true, true).ctx(|| "lm head".to_string())
    }

    /// Logits `(B, L, vocab)` for unpadded token rows `(B, L)` (u32), positions from 0,
    /// causal attention. `adapter: None` is the base (reference) model.
    pub fn forward(
        &self,
        tokens: &Tensor,
        adapter: Option<&LoraAdapter>,
        mode: ForwardMode,
    ) -> Result<Tensor> {
        let (_, len) = tokens
            .dims2()
            .ctx(|| "forward: tokens must be (batch, len)".to_string())?;
        let mut pass = Pass::new(adapter, mode);
        let mask =
            causal_mask(len, 0, self.dtype, &self.device).ctx(|| "forward mask".to_string())?;
        let hidden = self
            .forward_hidden(tokens, &Positions::Offset(0), Some(&mask), None, &mut pass)
            .ctx(|| "forward".to_string())?;
        self.lm_head(&hidden)
    }

    /// A copy of this model with `adapter` folded into the base weights
    /// (`W + scale · B A`), for export. Untouched weights stay shared.
    pub fn merge_adapter(&self, adapter: &LoraAdapter) -> Result<Model> {
        if adapter.num_layers() != self.layers.len() {
            return Err(PolicyError::config(
                "adapter",
                "num_layers",
                format!(
                    "{} layers, the model has {}",
                    adapter.num_layers(),
                    self.layers.len()
                ),
            ));
        }
        let mut merged = self.clone();
        for (i, layer) in merged.layers.iter_mut().enumerate() {
            let projs: [&mut Proj; 7] = [
                &mut layer.self_attn.q_proj,
                &mut layer.self_attn.k_proj,
                &mut layer.self_attn.v_proj,
                &mut layer.self_attn.o_proj,
                &mut layer.mlp.gate_proj,
                &mut layer.mlp.up_proj,
                &mut layer.mlp.down_proj,
            ];
            for proj in projs {
                if let Some(pair) = adapter.get(i, proj.target) {
                    let ctx = || format!("merging layer {i} {}", proj.target.module_name());
                    let delta = pair
                        .b
                        .detach()
                        .to_dtype(DType::F32)
                        .and_then(|b| b.matmul(&pair.a.detach().to_dtype(DType::F32)?))
                        .and_then(|d| d * adapter.scale())
                        .ctx(ctx)?;
                    let weight = (proj.weight.to_dtype(DType::F32).ctx(ctx)?
                        + delta.to_device(&self.device).ctx(ctx)?)
                    .and_then(|w| w.to_dtype(self.dtype))
                    .ctx(ctx)?;
                    proj.weight = weight;
                }
            }
        }
        Ok(merged)
    }

    /// Every weight with its HF checkpoint name (the tied LM head is not repeated).
    pub fn named_weights(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let attn = &layer.self_attn;
            let mlp = &layer.mlp;
            for proj in [
                &attn.q_proj,
                &attn.k_proj,
                &attn.v_proj,
                &attn.o_proj,
                &mlp.gate_proj,
                &mlp.up_proj,
                &mlp.down_proj,
            ] {
                let name = format!("{p}.{}.{}", proj.target.parent(), proj.target.module_name());
                out.push((format!("{name}.weight"), proj.weight.clone()));
                if let Some(b) = &proj.bias {
                    out.push((format!("{name}.bias"), b.clone()));
                }
            }
            out.push((
                format!("{p}.input_layernorm.weight"),
                layer.input_layernorm.weight.clone(),
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.weight.clone(),
            ));
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight.clone()));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), head.clone()));
        }
        out
    }

    /// Number of base parameters (tied head counted once).
    pub fn num_parameters(&self) -> usize {
        self.named_weights()
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum()
    }

    /// Whether the family is Llama (GGUF q/k rows are permuted for it).
    pub fn family(&self) -> Family {
        self.cfg.family
    }
}

/// `cos`/`sin` tables `(max_position_embeddings, head_dim/2)`, computed in f64.
fn rope_tables(cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let inv_freq = rope_inv_freq(cfg);
    let half = inv_freq.len();
    let n = cfg.max_position_embeddings;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for pos in 0..n {
        for f in &inv_freq {
            // f32 product like HF (positions × inv_freq in float32), then cos/sin.
            let angle = (pos as f32 * *f as f32) as f64;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let build = |v: Vec<f64>| {
        Tensor::from_vec(v, (n, half), device)
            .and_then(|t| t.to_dtype(dtype))
            .ctx(|| "rope tables".to_string())
    };
    Ok((build(cos)?, build(sin)?))
}

/// Additive causal mask `(1, 1, 1, len, offset + len)`: query i (at position offset+i)
/// sees keys 0..=offset+i.
pub(crate) fn causal_mask(
    len: usize,
    offset: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let total = offset + len;
    let values: Vec<f32> = (0..len)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(values, (1, 1, 1, len, total), device)?.to_dtype(dtype)
}
