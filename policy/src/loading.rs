//! Loading base weights: an HF safetensors directory (single file or sharded with
//! `model.safetensors.index.json`), the Hugging Face hub through `hf-hub` (revision pinned,
//! served from the local cache and fully offline when asked), or a GGUF file dequantized
//! to the requested dtype.
//!
//! GGUF tensors are renamed to HF names; for the Llama family the q/k rows, which
//! llama.cpp's converter permutes for its interleaved RoPE, are permuted back so one
//! decoder (HF's half-split RoPE) serves every source and PEFT adapters line up.
//!
//! Everything is read with safe code: safetensors files are read into memory and converted
//! tensor by tensor (no mmap, so `unsafe` stays out of the crate).

use crate::config::{Family, ModelConfig};
use crate::error::{CandleContext, PolicyError, Result};
use crate::model::Model;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Where the base model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// An HF-format directory: `config.json`, `model.safetensors` or an index plus shards,
    /// usually `tokenizer.json` and `tokenizer_config.json`.
    Dir(PathBuf),
    /// A repository on the Hugging Face hub.
    Hub(HubSource),
    /// A single GGUF file (config, weights and tokenizer in one).
    Gguf(PathBuf),
}

impl ModelSource {
    /// Interprets a CLI/config string: an existing `.gguf` file, an existing directory, or
    /// `org/name[@revision]` on the hub (revision defaults to `main`).
    pub fn parse(spec: &str) -> ModelSource {
        let path = Path::new(spec);
        if path.is_file() && spec.ends_with(".gguf") {
            return ModelSource::Gguf(path.to_path_buf());
        }
        if path.is_dir() {
            return ModelSource::Dir(path.to_path_buf());
        }
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) => (repo, rev),
            None => (spec, "main"),
        };
        ModelSource::Hub(HubSource::new(repo, revision))
    }
}

/// A hub repository pinned to a revision.
#[derive(Debug, Clone, PartialEq)]
pub struct HubSource {
    /// `org/name`.
    pub repo_id: String,
    /// A commit hash (recommended: reproducible) or a branch/tag name.
    pub revision: String,
    /// The hub cache (layout `models--org--name/{refs,snapshots,blobs}`); `None` uses
    /// `$HF_HOME/hub` or `~/.cache/huggingface/hub`.
    pub cache_dir: Option<PathBuf>,
    /// Never touch the network: every file must already be in the cache.
    pub offline: bool,
    /// Another hub endpoint (a mirror); `None` is huggingface.co.
    pub endpoint: Option<String>,
}

impl HubSource {
    /// Online source with the default cache.
    pub fn new(repo_id: &str, revision: &str) -> Self {
        Self {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            cache_dir: None,
            offline: false,
            endpoint: None,
        }
    }
}

/// Device and dtype for the weights. Default: CPU, f32.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the weights go.
    pub device: Device,
    /// Weight/activation dtype (f32 on CPU; bf16 on CUDA).
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

/// The files a loaded model came from: what the tokenizer and chat template need next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelFiles {
    /// The HF directory (a hub snapshot directory for hub sources).
    pub dir: Option<PathBuf>,
    /// `tokenizer.json`, when present.
    pub tokenizer_json: Option<PathBuf>,
    /// `tokenizer_config.json` (chat template, special tokens), when present.
    pub tokenizer_config_json: Option<PathBuf>,
    /// `generation_config.json` (extra EOS ids), when present.
    pub generation_config_json: Option<PathBuf>,
    /// The GGUF file, for GGUF sources.
    pub gguf: Option<PathBuf>,
}

/// Loads a model from any source.
pub fn load_model(source: &ModelSource, options: &LoadOptions) -> Result<(Model, ModelFiles)> {
    match source {
        ModelSource::Dir(dir) => load_dir(dir, options),
        ModelSource::Hub(hub) => {
            let dir = resolve_hub(hub)?;
            load_dir(&dir, options)
        }
        ModelSource::Gguf(path) => load_gguf(path, options),
    }
}

fn optional_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let path = dir.join(name);
    path.is_file().then_some(path)
}

/// The safetensors files of an HF directory: the shards named by the index, or the single
/// `model.safetensors`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| PolicyError::io(&index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| PolicyError::Json {
                path: index.clone(),
                source,
            })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                PolicyError::config(
                    index.display().to_string(),
                    "weight_map",
                    "missing or not an object",
                )
            })?;
        let files: BTreeSet<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        if files.is_empty() {
            return Err(PolicyError::config(
                index.display().to_string(),
                "weight_map",
                "is empty",
            ));
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(PolicyError::io(
        dir,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no model.safetensors or model.safetensors.index.json (pytorch .bin checkpoints are not supported)",
        ),
    ))
}

/// Reads safetensors files into one name → tensor map, converted to `options`' dtype and
/// device. A name present in two shards is an error naming both.
pub fn read_safetensors(
    files: &[PathBuf],
    options: &LoadOptions,
) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    let mut origin: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        let bytes = std::fs::read(file).map_err(|e| PolicyError::io(file, e))?;
        let st = candle_core::safetensors::SliceSafetensors::new(&bytes).map_err(|e| {
            PolicyError::weights(
                file.display().to_string(),
                "(header)",
                format!("invalid safetensors: {e}"),
            )
        })?;
        let mut names: Vec<String> = st.tensors().into_iter().map(|(name, _)| name).collect();
        names.sort();
        for name in names {
            let tensor = st
                .load(&name, &Device::Cpu)
                .and_then(|t| t.to_dtype(options.dtype))
                .and_then(|t| t.to_device(&options.device))
                .ctx(|| format!("{}: tensor {name}", file.display()))?;
            if let Some(first) = origin.insert(name.clone(), file.clone()) {
                return Err(PolicyError::weights(
                    file.display().to_string(),
                    &name,
                    format!("also present in {}", first.display()),
                ));
            }
            tensors.insert(name, tensor);
        }
    }
    Ok(tensors)
}

/// Loads an HF directory.
pub fn load_dir(dir: &Path, options: &LoadOptions) -> Result<(Model, ModelFiles)> {
    let config_path = dir.join("config.json");
    let cfg = ModelConfig::from_hf_file(&config_path)?;
    let files = safetensors_files(dir)?;
    let tensors = read_safetensors(&files, options)?;
    let model = model_from_tensors(&cfg, tensors, options, &dir.display().to_string())?;
    let model_files = ModelFiles {
        dir: Some(dir.to_path_buf()),
        tokenizer_json: optional_file(dir, "tokenizer.json"),
        tokenizer_config_json: optional_file(dir, "tokenizer_config.json"),
        generation_config_json: optional_file(dir, "generation_config.json"),
        gguf: None,
    };
    Ok((model, model_files))
}

/// Builds a model from HF-named tensors; missing or mis-shaped tensors are errors naming
/// the tensor and `source_name`.
pub fn model_from_tensors(
    cfg: &ModelConfig,
    tensors: HashMap<String, Tensor>,
    options: &LoadOptions,
    source_name: &str,
) -> Result<Model> {
    let vb = VarBuilder::from_tensors(tensors, options.dtype, &options.device);
    Model::new(cfg, vb).map_err(|e| match e {
        PolicyError::Candle { context, source } => PolicyError::Candle {
            context: format!("{source_name}: {context}"),
            source,
        },
        other => other,
    })
}

/// Finds (offline) or downloads (online) the files of a hub repo at the pinned revision and
/// returns the snapshot directory holding them.
pub fn resolve_hub(hub: &HubSource) -> Result<PathBuf> {
    let hub_err = |message: String| PolicyError::Hub {
        repo: hub.repo_id.clone(),
        revision: hub.revision.clone(),
        message,
    };
    let cache = match &hub.cache_dir {
        Some(dir) => hf_hub::Cache::new(dir.clone()),
        None => hf_hub::Cache::from_env(),
    };
    let repo = hf_hub::Repo::with_revision(
        hub.repo_id.clone(),
        hf_hub::RepoType::Model,
        hub.revision.clone(),
    );
    let required_first = "config.json";
    if hub.offline {
        let repo_dir = cache.path().join(repo.folder_name());
        let is_commit =
            hub.revision.len() == 40 && hub.revision.chars().all(|c| c.is_ascii_hexdigit());
        let commit = if is_commit {
            hub.revision.clone()
        } else {
            let ref_path = repo_dir.join("refs").join(&hub.revision);
            std::fs::read_to_string(&ref_path)
                .map_err(|e| {
                    hub_err(format!(
                        "offline and {} is unreadable: {e}",
                        ref_path.display()
                    ))
                })?
                .trim()
                .to_string()
        };
        let snapshot = repo_dir.join("snapshots").join(&commit);
        if !snapshot.join(required_first).is_file() {
            return Err(hub_err(format!(
                "offline and {} is not in the cache",
                snapshot.join(required_first).display()
            )));
        }
        // Shards named by the index must be there too.
        let shards = safetensors_files(&snapshot)
            .map_err(|e| hub_err(format!("offline cache incomplete: {e}")))?;
        for shard in shards {
            if !shard.is_file() {
                return Err(hub_err(format!(
                    "offline and {} is not in the cache",
                    shard.display()
                )));
            }
        }
        return Ok(snapshot);
    }
    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(cache).with_progress(false);
    if let Some(endpoint) = &hub.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder
        .build()
        .map_err(|e| hub_err(format!("client: {e}")))?;
    let api_repo = api.repo(repo);
    let get = |name: &str| {
        api_repo
            .get(name)
            .map_err(|e| hub_err(format!("{name}: {e}")))
    };
    let config_path = get(required_first)?;
    let snapshot = config_path
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| hub_err("config.json has no parent directory".into()))?;
    match api_repo.get("model.safetensors.index.json") {
        Ok(index_path) => {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| PolicyError::io(&index_path, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| PolicyError::Json {
                    path: index_path.clone(),
                    source,
                })?;
            let shards: BTreeSet<String> = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            for shard in shards {
                get(&shard)?;
            }
        }
        Err(_) => {
            get("model.safetensors")?;
        }
    }
    for optional in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        if let Err(e) = api_repo.get(optional) {
            tracing::debug!(repo = %hub.repo_id, file = optional, error = %e, "optional hub file unavailable");
        }
    }
    Ok(snapshot)
}

/// GGUF tensor name → HF name (`None` for tensors the decoder does not use, e.g. rope
/// frequency tables).
fn gguf_to_hf_name(name: &str) -> Option<String> {
    let simple = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = tail.rsplit_once('.')?;
    let hf = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Undoes llama.cpp's q/k row permutation: GGUF rows are `(heads, d/2, 2)`-ordered, HF's
/// `(heads, 2, d/2)`.
fn unpermute_rows(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let half = rows / heads / 2;
    match dims.len() {
        1 => t.reshape((heads, half, 2))?.transpose(1, 2)?.reshape(rows),
        _ => {
            let cols = dims[1];
            t.reshape((heads, half, 2, cols))?
                .transpose(1, 2)?
                .reshape((rows, cols))
        }
    }
}

/// Loads a GGUF file, dequantizing every tensor once.
pub fn load_gguf(path: &Path, options: &LoadOptions) -> Result<(Model, ModelFiles)> {
    let source_name = path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(|e| PolicyError::io(path, e))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| {
        PolicyError::weights(&source_name, "(header)", format!("invalid gguf: {e}"))
    })?;
    let cfg = ModelConfig::from_gguf(&content, &source_name)?;
    let mut tensors = HashMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let Some(hf_name) = gguf_to_hf_name(name) else {
            continue;
        };
        let ctx = || format!("{source_name}: tensor {name}");
        let qtensor = content.tensor(&mut file, name, &Device::Cpu).ctx(ctx)?;
        let mut tensor = qtensor.dequantize(&Device::Cpu).ctx(ctx)?;
        if cfg.family == Family::Llama {
            if name.contains(".attn_q.") {
                tensor = unpermute_rows(&tensor, cfg.num_attention_heads).ctx(ctx)?;
            } else if name.contains(".attn_k.") {
                tensor = unpermute_rows(&tensor, cfg.num_key_value_heads).ctx(ctx)?;
            }
        }
        let tensor = tensor
            .to_dtype(options.dtype)
            .and_then(|t| t.to_device(&options.device))
            .ctx(ctx)?;
        tensors.insert(hf_name, tensor);
    }
    let model = model_from_tensors(&cfg, tensors, options, &source_name)?;
    Ok((
        model,
        ModelFiles {
            gguf: Some(path.to_path_buf()),
            ..Default::default()
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_hf() {
        assert_eq!(
            gguf_to_hf_name("blk.3.attn_q.bias").unwrap(),
            "model.layers.3.self_attn.q_proj.bias"
        );
        assert_eq!(
            gguf_to_hf_name("blk.0.ffn_down.weight").unwrap(),
            "model.layers.0.mlp.down_proj.weight"
        );
        assert_eq!(gguf_to_hf_name("output.weight").unwrap(), "lm_head.weight");
        assert!(gguf_to_hf_name("rope_freqs.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: reshape(n, 2, d/2, in).swapaxes(1, 2).
        let (heads, hd, cols) = (2, 4, 3);
        let hf = Tensor::arange(0f32, (heads * hd * cols) as f32, &Device::Cpu)
            .unwrap()
            .reshape((heads * hd, cols))
            .unwrap();
        let gguf = hf
            .reshape((heads, 2, hd / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((heads * hd, cols))
            .unwrap();
        let back = unpermute_rows(&gguf, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
    }
}
