//! PEFT-format adapter I/O: `adapter_model.safetensors` + `adapter_config.json` directories
//! (what PEFT's `save_pretrained` writes and `PeftModel.from_pretrained` / vLLM's LoRA
//! support read), and the same tensors as in-memory safetensors bytes for the broadcast.
//!
//! The bytes carry the adapter config in the safetensors `__metadata__` (key
//! `adapter_config`, PEFT's JSON) next to PEFT's own `format: pt`, so a payload is
//! self-describing; PEFT ignores the extra key.
//!
//! safetensors is written and its header parsed here directly (the format is an 8-byte
//! little-endian header length, a JSON header, then raw little-endian data): candle pins a
//! different `safetensors` crate version than the workspace, and the format is tiny.

use crate::config::ModelConfig;
use crate::error::{CandleContext, PolicyError, Result};
use crate::lora::{LoraAdapter, LoraConfig, LoraTarget};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// File names PEFT uses.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// File names PEFT uses.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

/// PEFT's `adapter_config.json` for `config`, as PEFT 0.1x writes it.
pub fn adapter_config_json(
    config: &LoraConfig,
    base_model_name_or_path: &str,
) -> serde_json::Value {
    let targets: Vec<&str> = config
        .target_modules
        .iter()
        .map(|t| t.module_name())
        .collect();
    serde_json::json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": config.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": config.use_rslora,
    })
}

/// Parses a PEFT `adapter_config.json`; returns the LoRA config and
/// `base_model_name_or_path`. Features this crate does not implement (DoRA, per-module
/// rank/alpha patterns, layer subsets, trained biases, extra saved modules, regex targets)
/// are errors naming the field rather than silently wrong adapters.
pub fn parse_adapter_config(text: &str, source_name: &str) -> Result<(LoraConfig, Option<String>)> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|source| PolicyError::Json {
            path: source_name.into(),
            source,
        })?;
    let bad = |field: &str, message: String| PolicyError::config(source_name, field, message);
    let peft_type = json
        .get("peft_type")
        .and_then(|v| v.as_str())
        .unwrap_or("LORA");
    if peft_type != "LORA" {
        return Err(bad("peft_type", format!("`{peft_type}` is not LORA")));
    }
    let r = json
        .get("r")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| bad("r", "missing or not an integer".into()))?;
    let alpha = json
        .get("lora_alpha")
        .and_then(|v| v.as_f64())
        .unwrap_or(8.0);
    let dropout = json
        .get("lora_dropout")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    let use_rslora = json
        .get("use_rslora")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let target_modules = match json.get("target_modules") {
        Some(serde_json::Value::Array(items)) => {
            let mut targets = Vec::new();
            for item in items {
                let name = item.as_str().unwrap_or_default();
                let target = LoraTarget::parse(name).ok_or_else(|| {
                    bad(
                        "target_modules",
                        format!("`{name}` is not one of q/k/v/o/gate/up/down_proj"),
                    )
                })?;
                targets.push(target);
            }
            // PEFT stores a set: order carries no meaning; keep ours canonical.
            targets.sort();
            targets.dedup();
            targets
        }
        Some(other) => {
            return Err(bad(
                "target_modules",
                format!("{other} is not a list of module names"),
            ));
        }
        None => return Err(bad("target_modules", "missing".into())),
    };
    let non_empty = |field: &str| {
        json.get(field).is_some_and(|v| match v {
            serde_json::Value::Null => false,
            serde_json::Value::Object(m) => !m.is_empty(),
            serde_json::Value::Array(a) => !a.is_empty(),
            serde_json::Value::Bool(b) => *b,
            _ => true,
        })
    };
    for field in [
        "use_dora",
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
        "modules_to_save",
        "fan_in_fan_out",
    ] {
        if non_empty(field) {
            return Err(bad(field, "is set, which is not supported".into()));
        }
    }
    if let Some(bias) = json.get("bias").and_then(|v| v.as_str())
        && bias != "none"
    {
        return Err(bad("bias", format!("`{bias}` is not supported (none)")));
    }
    let config = LoraConfig {
        r: r as usize,
        alpha,
        dropout,
        target_modules,
        use_rslora,
    };
    config
        .validate()
        .map_err(|e| bad("(adapter config)", e.to_string()))?;
    let base = json
        .get("base_model_name_or_path")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Ok((config, base))
}

/// Serialises named tensors as safetensors bytes (names sorted, so the bytes are
/// deterministic), with string metadata.
pub fn safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).expect("string map"),
        );
    }
    let mut data: Vec<u8> = Vec::new();
    for (name, tensor) in sorted {
        let ctx = || format!("serialising {name}");
        let flat = tensor
            .detach()
            .to_device(&Device::Cpu)
            .and_then(|t| t.flatten_all())
            .ctx(ctx)?;
        let (dtype_name, bytes): (&str, Vec<u8>) = match flat.dtype() {
            DType::F32 => (
                "F32",
                flat.to_vec1::<f32>()
                    .ctx(ctx)?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::F64 => (
                "F64",
                flat.to_vec1::<f64>()
                    .ctx(ctx)?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::BF16 => (
                "BF16",
                flat.to_vec1::<half::bf16>()
                    .ctx(ctx)?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::F16 => (
                "F16",
                flat.to_vec1::<half::f16>()
                    .ctx(ctx)?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            other => {
                return Err(PolicyError::weights(
                    "adapter",
                    name,
                    format!("dtype {other:?} cannot be serialised"),
                ));
            }
        };
        let start = data.len();
        data.extend_from_slice(&bytes);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype_name, "shape": tensor.dims(), "data_offsets": [start, data.len()]}),
        );
    }
    let mut header_bytes = serde_json::to_vec(&serde_json::Value::Object(header)).expect("json");
    // Pad the header with spaces to 8-byte alignment, as the reference writer does.
    while !header_bytes.len().is_multiple_of(8) {
        header_bytes.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header_bytes.len() + data.len());
    out.extend_from_slice(&(header_bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Reads safetensors bytes into tensors (on `device`, original dtype) plus the metadata.
pub fn read_safetensors_bytes(
    bytes: &[u8],
    device: &Device,
    source_name: &str,
) -> Result<(HashMap<String, Tensor>, BTreeMap<String, String>)> {
    let bad = |message: String| PolicyError::weights(source_name, "(header)", message);
    if bytes.len() < 8 {
        return Err(bad(format!(
            "{} bytes is too short for safetensors",
            bytes.len()
        )));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = bytes
        .get(8..8usize.saturating_add(header_len))
        .ok_or_else(|| bad("truncated header".into()))?;
    let header: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| bad(format!("header is not json: {e}")))?;
    let metadata: BTreeMap<String, String> = header
        .get("__metadata__")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default();
    let st = candle_core::safetensors::SliceSafetensors::new(bytes)
        .map_err(|e| bad(format!("invalid safetensors: {e}")))?;
    let mut tensors = HashMap::new();
    for (name, _) in st.tensors() {
        let tensor = st
            .load(&name, device)
            .ctx(|| format!("{source_name}: tensor {name}"))?;
        tensors.insert(name, tensor);
    }
    Ok((tensors, metadata))
}

impl LoraAdapter {
    /// The adapter as safetensors bytes with PEFT names; the PEFT adapter config (naming
    /// `base_model_name_or_path`) rides in the metadata. This is the broadcast payload.
    pub fn to_safetensors_bytes(&self, base_model_name_or_path: &str) -> Result<Vec<u8>> {
        let mut metadata = BTreeMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        metadata.insert(
            "adapter_config".to_string(),
            adapter_config_json(self.config(), base_model_name_or_path).to_string(),
        );
        safetensors_bytes(&self.named_tensors(), &metadata)
    }

    /// Reads bytes written by [`LoraAdapter::to_safetensors_bytes`] (config from the
    /// metadata) or plain PEFT `adapter_model.safetensors` bytes (then `config` is required).
    pub fn from_safetensors_bytes(
        bytes: &[u8],
        model_cfg: &ModelConfig,
        config: Option<&LoraConfig>,
        device: &Device,
        dtype: DType,
    ) -> Result<LoraAdapter> {
        let source_name = "adapter bytes";
        let (tensors, metadata) = read_safetensors_bytes(bytes, device, source_name)?;
        let config = match (config, metadata.get("adapter_config")) {
            (Some(config), _) => config.clone(),
            (None, Some(text)) => parse_adapter_config(text, "adapter bytes metadata")?.0,
            (None, None) => {
                return Err(PolicyError::config(
                    source_name,
                    "__metadata__.adapter_config",
                    "missing, and no LoRA config was given",
                ));
            }
        };
        LoraAdapter::from_named_tensors(model_cfg, &config, tensors, device, dtype, source_name)
    }

    /// Writes a PEFT adapter directory (`adapter_model.safetensors`, `adapter_config.json`).
    pub fn save_peft(&self, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| PolicyError::io(dir, e))?;
        let weights = dir.join(ADAPTER_WEIGHTS_FILE);
        let bytes = self.to_safetensors_bytes(base_model_name_or_path)?;
        write_atomically(&weights, &bytes)?;
        let config = dir.join(ADAPTER_CONFIG_FILE);
        let text = serde_json::to_string_pretty(&adapter_config_json(
            self.config(),
            base_model_name_or_path,
        ))
        .expect("json");
        write_atomically(&config, text.as_bytes())
    }

    /// Loads a PEFT adapter directory (ours or one PEFT wrote) for a model of shape
    /// `model_cfg`. Returns the adapter and the config's `base_model_name_or_path`.
    pub fn load_peft(
        dir: &Path,
        model_cfg: &ModelConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<(LoraAdapter, Option<String>)> {
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| PolicyError::io(&config_path, e))?;
        let (config, base) = parse_adapter_config(&text, &config_path.display().to_string())?;
        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        let bytes = std::fs::read(&weights_path).map_err(|e| PolicyError::io(&weights_path, e))?;
        let source_name = weights_path.display().to_string();
        let (tensors, _) = read_safetensors_bytes(&bytes, device, &source_name)?;
        let adapter = LoraAdapter::from_named_tensors(
            model_cfg,
            &config,
            tensors,
            device,
            dtype,
            &source_name,
        )?;
        Ok((adapter, base))
    }
}

/// Writes via a temporary file and a rename, so a crash never leaves a half-written file
/// where a reader expects a complete one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| PolicyError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| PolicyError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_config_round_trips_and_rejects_unsupported() {
        let cfg = LoraConfig::default();
        let json = adapter_config_json(&cfg, "Qwen/Qwen2.5-Coder-1.5B-Instruct").to_string();
        let (back, base) = parse_adapter_config(&json, "t").unwrap();
        assert_eq!(back, cfg);
        assert_eq!(base.as_deref(), Some("Qwen/Qwen2.5-Coder-1.5B-Instruct"));
        let dora = json.replace("\"use_dora\":false", "\"use_dora\":true");
        assert!(
            parse_adapter_config(&dora, "t")
                .unwrap_err()
                .to_string()
                .contains("use_dora")
        );
        let regex = json.replace(
            "\"target_modules\":[\"q_proj\",\"k_proj\",\"v_proj\",\"o_proj\",\"gate_proj\",\"up_proj\",\"down_proj\"]",
            "\"target_modules\":\".*proj\"",
        );
        assert!(
            parse_adapter_config(&regex, "t")
                .unwrap_err()
                .to_string()
                .contains("target_modules")
        );
    }
}
