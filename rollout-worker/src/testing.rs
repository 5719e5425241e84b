//! Test support (feature `testing`): a tiny model that answers every prompt with a chosen
//! program, so tests of sampling, scoring and the worker see real code, real verdicts and
//! rewards that differ between problems — a random tiny model only ever writes noise,
//! which the executor never sees.
//!
//! [`write_scripted_model`] writes a complete tiny Llama-family HF directory (the policy
//! crate's tiny tokenizer and chat template) whose weights make a *bigram chain*: every
//! decoder layer's output projections are zero, so the hidden state at a position is the
//! embedding of its token, and the (untied) LM head maps the embedding of each token of
//! the chain to a logit of `sharpness` on its successor:
//!
//! ```text
//! last prompt token ("\n" after "<|im_start|>assistant") → answer tokens … → <|im_end|>
//! ```
//!
//! Greedy decoding writes the answer exactly; at temperature 1 each step follows the
//! chain with probability ≈ `e^s / (e^s + vocab)`, so `sharpness` tunes how often a sample
//! is the program, a mangled program (a syntax error or a wrong answer) or noise. LoRA
//! adapters act on the zeroed projections, so an adapter visibly changes the answers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tgrpo_policy::chat::{ChatTemplate, Message};
use tgrpo_policy::tokenizer::Tokenizer;
use tgrpo_policy::{Family, PolicyError, Result, tiny};

/// A written scripted model.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptedModel {
    /// The HF directory (load it with `ModelSource::Dir`).
    pub dir: PathBuf,
    /// The answer's tokens, as the model emits them (before the end-of-turn token).
    pub answer_tokens: Vec<u32>,
    /// The end-of-turn token that follows the answer.
    pub end_token: u32,
}

fn candle_error(context: &str) -> impl FnOnce(candle_core::Error) -> PolicyError + '_ {
    move |source| PolicyError::Candle {
        context: format!("scripted model: {context}"),
        source,
    }
}

/// Writes a tiny model into `dir` that answers any chat prompt with `answer` (see the
/// module docs). The answer's tokens must all differ from each other and from the
/// prompt's last token (a bigram chain cannot revisit a token); a one-line program
/// such as `def f(x): return 1` usually qualifies, and the error names a repeated token.
pub fn write_scripted_model(
    dir: &Path,
    answer: &str,
    sharpness: f32,
    seed: u64,
) -> Result<ScriptedModel> {
    let bad = |message: String| PolicyError::Config {
        source_name: "scripted model".to_string(),
        field: "answer".to_string(),
        message,
    };
    tiny::write_hf_dir(dir, Family::Llama, seed)?;
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    let template = ChatTemplate::from_hf_dir(dir)?;
    let prompt = template.encode(&tokenizer, &[Message::user("any question")], true)?;
    let start = *prompt
        .last()
        .ok_or_else(|| bad("the chat template renders an empty prompt".into()))?;
    let end_token =
        tiny::special_token_id("<|im_end|>").expect("the tiny tokenizer has <|im_end|>");
    let answer_tokens = tokenizer.encode(answer, false)?;
    if answer_tokens.is_empty() {
        return Err(bad("is empty".into()));
    }
    let mut chain = vec![start];
    chain.extend(&answer_tokens);
    for (position, token) in chain.iter().enumerate() {
        if chain[..position].contains(token) {
            let text = tokenizer.decode(&[*token], false).unwrap_or_default();
            return Err(bad(format!(
                "token {token} ({text:?}) occurs twice in the chain (the prompt's last token, then the answer)"
            )));
        }
    }
    chain.push(end_token);

    let config = tiny::config(Family::Llama);
    let mut weights: HashMap<String, Tensor> = tiny::random_weights(&config, seed)?;
    let hidden = config.hidden_size;
    for layer in 0..config.num_hidden_layers {
        let prefix = format!("model.layers.{layer}");
        for (name, rows, cols) in [
            (
                "self_attn.o_proj",
                hidden,
                config.num_attention_heads * config.head_dim,
            ),
            ("mlp.down_proj", hidden, config.intermediate_size),
        ] {
            let zeros = Tensor::zeros((rows, cols), candle_core::DType::F32, &Device::Cpu)
                .map_err(candle_error("zero projection"))?;
            weights.insert(format!("{prefix}.{name}.weight"), zeros);
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            weights.insert(format!("{prefix}.{norm}.weight"), ones(hidden)?);
        }
    }
    weights.insert("model.norm.weight".to_string(), ones(hidden)?);

    let embeddings: Vec<Vec<f32>> = weights["model.embed_tokens.weight"]
        .to_vec2()
        .map_err(candle_error("embeddings"))?;
    let mut head = vec![0f32; config.vocab_size * hidden];
    for pair in chain.windows(2) {
        let (token, next) = (pair[0] as usize, pair[1] as usize);
        // What the final RMSNorm (weight 1) makes of the token's embedding.
        let embedding = &embeddings[token];
        let rms = (embedding.iter().map(|x| x * x).sum::<f32>() / hidden as f32
            + config.rms_norm_eps as f32)
            .sqrt();
        // |normed|² = hidden, so the successor's logit is `sharpness`.
        for (slot, value) in head[next * hidden..(next + 1) * hidden]
            .iter_mut()
            .zip(embedding)
        {
            *slot += sharpness * value / rms / hidden as f32;
        }
    }
    let head = Tensor::from_vec(head, (config.vocab_size, hidden), &Device::Cpu)
        .map_err(candle_error("lm head"))?;
    weights.insert("lm_head.weight".to_string(), head);
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&weights, &path)
        .map_err(candle_error("writing model.safetensors"))?;
    Ok(ScriptedModel {
        dir: dir.to_path_buf(),
        answer_tokens,
        end_token,
    })
}

fn ones(size: usize) -> Result<Tensor> {
    Tensor::ones(size, candle_core::DType::F32, &Device::Cpu).map_err(candle_error("norm weight"))
}
