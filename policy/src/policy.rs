//! [`Policy`]: a loaded base model with its tokenizer, chat template and EOS ids, plus an
//! [`AdapterSlot`] holding the current LoRA adapter — what a rollout worker or the
//! evaluator holds.
//!
//! Swapping adapters is atomic: the slot holds an `Arc<LoraAdapter>` replaced whole under a
//! short lock, and every generation call takes one `Arc` snapshot at its start, so a
//! concurrent sampler sees either the old adapter or the new one, never a mix.

use crate::chat::{ChatTemplate, Message};
use crate::error::{PolicyError, Result};
use crate::loading::{LoadOptions, ModelFiles, ModelSource, load_model};
use crate::lora::{LoraAdapter, LoraConfig};
use crate::model::{ForwardMode, Model};
use crate::sampling::{Generation, GenerationRequest, TextDecoder};
use crate::scoring::{ScoreSequence, Scores};
use crate::tokenizer::Tokenizer;
use std::sync::{Arc, RwLock};

impl TextDecoder for Tokenizer {
    fn decode_text(&self, ids: &[u32]) -> Result<String> {
        Ok(self.decode(ids, true)?)
    }
}

/// The current adapter (or none), shared between the code that installs new versions and
/// the samplers. Cheap to clone; clones share the slot.
#[derive(Debug, Clone, Default)]
pub struct AdapterSlot {
    inner: Arc<RwLock<Option<VersionedAdapter>>>,
}

/// An installed adapter and its version.
type VersionedAdapter = (u64, Arc<LoraAdapter>);

impl AdapterSlot {
    /// An empty slot (the base model).
    pub fn new() -> Self {
        Self::default()
    }

    /// The current adapter and its version; hold the `Arc` for the duration of one call.
    pub fn current(&self) -> Option<(u64, Arc<LoraAdapter>)> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Installs `adapter` as `version` (or clears the slot with `None`), atomically.
    pub fn set(&self, adapter: Option<(u64, Arc<LoraAdapter>)>) {
        *self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = adapter;
    }

    /// The installed version, if any.
    pub fn version(&self) -> Option<u64> {
        self.current().map(|(v, _)| v)
    }
}

/// A base model ready to sample: weights, tokenizer, chat template, EOS ids, adapter slot.
#[derive(Debug, Clone)]
pub struct Policy {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    chat_template: Arc<ChatTemplate>,
    eos_token_ids: Vec<u32>,
    files: ModelFiles,
    base_model_name: String,
    adapter: AdapterSlot,
}

impl Policy {
    /// Loads model, tokenizer and chat template from one source (an HF dir, a hub repo, or
    /// a lone GGUF file whose metadata carries the tokenizer and template).
    pub fn load(source: &ModelSource, options: &LoadOptions) -> Result<Policy> {
        let (model, files) = load_model(source, options)?;
        let (tokenizer, chat_template) = match (&files.gguf, &files.dir) {
            (Some(gguf), _) => {
                let mut file = std::fs::File::open(gguf).map_err(|e| PolicyError::io(gguf, e))?;
                let content =
                    candle_core::quantized::gguf_file::Content::read(&mut file).map_err(|e| {
                        PolicyError::weights(
                            gguf.display().to_string(),
                            "(header)",
                            format!("invalid gguf: {e}"),
                        )
                    })?;
                (
                    Tokenizer::from_gguf(&content)?,
                    ChatTemplate::from_gguf(&content)?,
                )
            }
            (None, Some(dir)) => (
                Tokenizer::from_hf_dir(dir)?,
                ChatTemplate::from_hf_dir(dir)?,
            ),
            (None, None) => unreachable!("a loaded model has a directory or a gguf file"),
        };
        let base_model_name = match source {
            ModelSource::Hub(hub) => hub.repo_id.clone(),
            ModelSource::Dir(path) | ModelSource::Gguf(path) => path.display().to_string(),
        };
        Ok(Self::from_parts(
            model,
            tokenizer,
            chat_template,
            files,
            base_model_name,
        ))
    }

    /// Assembles a policy from already-loaded parts. EOS ids: the model config's and the
    /// tokenizer's (which include generation_config.json and end-of-turn tokens).
    pub fn from_parts(
        model: Model,
        tokenizer: Tokenizer,
        chat_template: ChatTemplate,
        files: ModelFiles,
        base_model_name: String,
    ) -> Policy {
        let mut eos_token_ids = model.config().eos_token_id.clone();
        for &id in tokenizer.eos_token_ids() {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
        Policy {
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            chat_template: Arc::new(chat_template),
            eos_token_ids,
            files,
            base_model_name,
            adapter: AdapterSlot::new(),
        }
    }

    /// The base model (shared, immutable).
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The chat template.
    pub fn chat_template(&self) -> &Arc<ChatTemplate> {
        &self.chat_template
    }

    /// Token ids that end a generation.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// The files the model came from.
    pub fn files(&self) -> &ModelFiles {
        &self.files
    }

    /// `base_model_name_or_path` for adapter configs (hub id, or the local path).
    pub fn base_model_name(&self) -> &str {
        &self.base_model_name
    }

    /// Overrides the name written into adapter configs (e.g. the hub id of a local copy).
    pub fn set_base_model_name(&mut self, name: impl Into<String>) {
        self.base_model_name = name.into();
    }

    /// The adapter slot (clone it to install adapters from another task).
    pub fn adapter_slot(&self) -> &AdapterSlot {
        &self.adapter
    }

    /// Parses adapter bytes (the broadcast payload) for this model and installs them as
    /// `version`. On error the old adapter stays.
    pub fn install_adapter_bytes(
        &self,
        version: u64,
        bytes: &[u8],
        config: Option<&LoraConfig>,
    ) -> Result<()> {
        let adapter = LoraAdapter::from_safetensors_bytes(
            bytes,
            self.model.config(),
            config,
            self.model.device(),
            self.model.dtype(),
        )?;
        self.adapter.set(Some((version, Arc::new(adapter))));
        Ok(())
    }

    /// Renders `messages` with the chat template (plus the assistant turn opener) and
    /// tokenizes them: the prompt tokens for [`Policy::generate`].
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        Ok(self.chat_template.encode(&self.tokenizer, messages, true)?)
    }

    /// Generates with the slot's current adapter (snapshotted once for the whole call).
    pub fn generate(
        &self,
        requests: &[GenerationRequest],
    ) -> Result<(Option<u64>, Vec<Generation>)> {
        let current = self.adapter.current();
        let adapter = current.as_ref().map(|(_, a)| a.as_ref());
        let out = self.model.generate(
            requests,
            adapter,
            Some(self.tokenizer.as_ref()),
            &self.eos_token_ids,
        )?;
        Ok((current.map(|(v, _)| v), out))
    }

    /// Generates with an explicit adapter (`None`: the base model).
    pub fn generate_with(
        &self,
        requests: &[GenerationRequest],
        adapter: Option<&LoraAdapter>,
    ) -> Result<Vec<Generation>> {
        self.model.generate(
            requests,
            adapter,
            Some(self.tokenizer.as_ref()),
            &self.eos_token_ids,
        )
    }

    /// Scores sequences with an explicit adapter at a sampling temperature (see
    /// [`Model::score`]).
    pub fn score(
        &self,
        sequences: &[ScoreSequence],
        adapter: Option<&LoraAdapter>,
        mode: ForwardMode,
        temperature: f64,
        with_entropy: bool,
    ) -> Result<Scores> {
        self.model
            .score(sequences, adapter, mode, temperature, with_entropy)
    }
}
