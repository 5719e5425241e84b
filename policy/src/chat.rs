//! Chat prompts rendered with the model's own Jinja chat template.
//!
//! A chat model is only good at what it was tuned on, so prompts go through the exact
//! template its authors ship: `chat_template` in `tokenizer_config.json` (or
//! `chat_template.jinja` beside it) or `tokenizer.chat_template` in a GGUF file. The template
//! runs in minijinja set up the way Hugging Face's `apply_chat_template` sets up Jinja2:
//! `trim_blocks` and `lstrip_blocks`, loop controls, `raise_exception`, a `tojson` that
//! writes JSON the way Python's `json.dumps` does, Python string/dict methods (`.strip()`,
//! `.startswith()`, `.items()`, …), and the variables `messages`, `add_generation_prompt`,
//! `tools` (none), `documents` (none) and the special tokens (`bos_token`, `eos_token`, …).
//!
//! Qwen2.5's template is the production case: it adds the default system prompt "You are
//! Qwen, created by Alibaba Cloud. You are a helpful assistant." when the messages have
//! none. A model without a template gets [`CHATML_TEMPLATE`], the plain ChatML format that
//! Qwen and SmolLM use, with no default system prompt.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use minijinja::value::Kwargs;
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::tokenizer::{Tokenizer, TokenizerError, gguf_int, read_json_if_present, token_content};

/// The fallback template for models that ship none: ChatML
/// (`<|im_start|>{role}\n{content}<|im_end|>\n` per message, then `<|im_start|>assistant\n`
/// when a generation prompt is asked for). No system prompt is invented.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages %}\
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// Name of the one template in the environment.
const TEMPLATE_NAME: &str = "chat_template";

/// Why a chat template could not be loaded or rendered; names the template's origin.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template has a Jinja syntax error.
    #[error("chat template from {origin} does not compile: {source:#}")]
    Syntax {
        origin: String,
        source: minijinja::Error,
    },
    /// Rendering failed (including `raise_exception` in the template).
    #[error("rendering chat template from {origin}: {source:#}")]
    Render {
        origin: String,
        source: minijinja::Error,
    },
    /// `chat_template` in `tokenizer_config.json` has an unusable shape.
    #[error("{path}: `chat_template` {message}")]
    Config { path: PathBuf, message: String },
    /// `chat_template.jinja` could not be read.
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `tokenizer.chat_template` in a GGUF is not a string.
    #[error("gguf metadata `tokenizer.chat_template` is not a string")]
    GgufTemplate,
    /// Reading `tokenizer_config.json` or encoding the prompt failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// Result alias of this module.
pub type Result<T, E = ChatError> = std::result::Result<T, E>;

/// One chat message. `role` is `system`, `user` or `assistant` (templates may reject others).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks.
    pub role: String,
    /// What they say.
    pub content: String,
}

impl Message {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template with the special-token strings it may refer to.
/// Cheap to clone and `Send + Sync`.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    source: Arc<str>,
    origin: String,
    special_tokens: BTreeMap<String, String>,
    is_fallback: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("special_tokens", &self.special_tokens)
            .field("is_fallback", &self.is_fallback)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `origin` names where it came from (for error messages);
    /// `special_tokens` are the template variables such as `bos_token` → `<|endoftext|>`.
    pub fn new(
        source: impl Into<String>,
        origin: impl Into<String>,
        special_tokens: BTreeMap<String, String>,
    ) -> Result<Self> {
        let source: Arc<str> = source.into().into();
        let origin = origin.into();
        let env = hf_environment(&source).map_err(|source| ChatError::Syntax {
            origin: origin.clone(),
            source,
        })?;
        Ok(Self {
            env: Arc::new(env),
            source,
            origin,
            special_tokens,
            is_fallback: false,
        })
    }

    /// The ChatML fallback ([`CHATML_TEMPLATE`]).
    pub fn chatml() -> Self {
        let mut template = Self::new(
            CHATML_TEMPLATE,
            "the built-in ChatML fallback",
            BTreeMap::new(),
        )
        .expect("the built-in ChatML template compiles");
        template.is_fallback = true;
        template
    }

    /// From a Hugging Face model directory: `chat_template` in `tokenizer_config.json`
    /// (a string, or a list of `{name, template}` where `default` is taken), else
    /// `chat_template.jinja`, else the ChatML fallback (logged). Special tokens come from
    /// `tokenizer_config.json` (`bos_token`, `eos_token`, `pad_token`, `unk_token`).
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json_if_present(&config_path)?;
        let special_tokens: BTreeMap<String, String> =
            ["bos_token", "eos_token", "pad_token", "unk_token"]
                .into_iter()
                .filter_map(|key| {
                    let token = token_content(config.as_ref()?.get(key)?)?;
                    Some((key.to_string(), token))
                })
                .collect();
        if let Some(source) = config
            .as_ref()
            .and_then(|config| config.get("chat_template"))
        {
            let source = template_in_config(source).map_err(|message| ChatError::Config {
                path: config_path.clone(),
                message,
            })?;
            if let Some(source) = source {
                return Self::new(source, config_path.display().to_string(), special_tokens);
            }
        }
        let jinja_path = dir.join("chat_template.jinja");
        match std::fs::read_to_string(&jinja_path) {
            Ok(source) => Self::new(source, jinja_path.display().to_string(), special_tokens),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %dir.display(), "model has no chat template; using ChatML");
                let mut template = Self::chatml();
                template.special_tokens = special_tokens;
                Ok(template)
            }
            Err(source) => Err(ChatError::Io {
                path: jinja_path,
                source,
            }),
        }
    }

    /// From a GGUF file's `tokenizer.chat_template` (ChatML fallback, logged, when absent).
    /// `bos_token` / `eos_token` are the strings of `tokenizer.ggml.bos_token_id` /
    /// `eos_token_id` in `tokenizer.ggml.tokens`.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let metadata = &content.metadata;
        let tokens = metadata
            .get("tokenizer.ggml.tokens")
            .and_then(|tokens| tokens.to_vec().ok());
        let token_string = |key: &str| {
            let id = usize::try_from(gguf_int(metadata.get(key)?)?).ok()?;
            tokens?.get(id)?.to_string().ok().cloned()
        };
        let special_tokens: BTreeMap<String, String> = [
            ("bos_token", "tokenizer.ggml.bos_token_id"),
            ("eos_token", "tokenizer.ggml.eos_token_id"),
            ("pad_token", "tokenizer.ggml.padding_token_id"),
            ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ]
        .into_iter()
        .filter_map(|(name, key)| Some((name.to_string(), token_string(key)?)))
        .collect();
        match metadata.get("tokenizer.chat_template") {
            Some(source) => {
                let source = source.to_string().map_err(|_| ChatError::GgufTemplate)?;
                Self::new(
                    source.clone(),
                    "gguf tokenizer.chat_template",
                    special_tokens,
                )
            }
            None => {
                tracing::warn!("gguf has no tokenizer.chat_template; using ChatML");
                let mut template = Self::chatml();
                template.special_tokens = special_tokens;
                Ok(template)
            }
        }
    }

    /// Renders `messages` into the prompt text. With `add_generation_prompt` the text ends
    /// with the opening of an assistant turn (`<|im_start|>assistant\n` in ChatML).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut context: BTreeMap<String, Value> = self
            .special_tokens
            .iter()
            .map(|(name, token)| (name.clone(), Value::from(token.as_str())))
            .collect();
        context.insert("messages".into(), Value::from_serialize(messages));
        context.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        // `apply_chat_template` passes these as None when absent; templates test them.
        context.insert("tools".into(), Value::from(()));
        context.insert("documents".into(), Value::from(()));
        let render_error = |source| ChatError::Render {
            origin: self.origin.clone(),
            source,
        };
        let template = self.env.get_template(TEMPLATE_NAME).map_err(render_error)?;
        template.render(context).map_err(render_error)
    }

    /// Renders and encodes a prompt for generation (no extra BOS: the template writes what
    /// the model expects, as `apply_chat_template(tokenize=True)` does).
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let prompt = self.render(messages, add_generation_prompt)?;
        Ok(tokenizer.encode(&prompt, false)?)
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether this is the ChatML fallback because the model has no template.
    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }

    /// The special-token variables (`bos_token`, `eos_token`, …) passed to the template.
    pub fn special_tokens(&self) -> &BTreeMap<String, String> {
        &self.special_tokens
    }
}

/// `chat_template` in tokenizer_config.json: a string, a list of named templates (take
/// `default`, else the first), or null.
fn template_in_config(value: &serde_json::Value) -> std::result::Result<Option<String>, String> {
    match value {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(source) => Ok(Some(source.clone())),
        serde_json::Value::Array(named) => {
            let template_of =
                |entry: &serde_json::Value| entry.get("template")?.as_str().map(str::to_string);
            let default = named
                .iter()
                .find(|entry| entry.get("name").and_then(|n| n.as_str()) == Some("default"));
            match default.or(named.first()) {
                Some(entry) => template_of(entry)
                    .map(Some)
                    .ok_or_else(|| "list entry has no string `template`".to_string()),
                None => Ok(None),
            }
        }
        _ => Err("is neither a string nor a list of named templates".to_string()),
    }
}

/// A minijinja environment configured like transformers' chat-template Jinja2 sandbox,
/// holding `source` as its only template.
fn hf_environment(source: &str) -> std::result::Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_filter("tojson", python_tojson);
    env.add_template_owned(TEMPLATE_NAME, source.to_string())?;
    Ok(env)
}

/// `raise_exception(message)`: templates call it to reject bad conversations.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("template raised: {message}"),
    ))
}

/// `tojson` as transformers defines it: `json.dumps(value, ensure_ascii=False, indent=…)`,
/// i.e. `", "` and `": "` separators (or pretty-printed with `indent`) and no HTML escaping
/// (minijinja's own `tojson` is compact and HTML-escapes `<`, which would change prompts).
fn python_tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json_error = |err: serde_json::Error| {
        minijinja::Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON")
            .with_source(err)
    };
    let mut out = Vec::new();
    match indent {
        Some(width) => {
            let spaces = " ".repeat(width);
            let formatter = serde_json::ser::PrettyFormatter::with_indent(spaces.as_bytes());
            let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
            value.serialize(&mut serializer).map_err(json_error)?;
        }
        None => {
            let mut serializer =
                serde_json::Serializer::with_formatter(&mut out, PythonJsonFormatter);
            value.serialize(&mut serializer).map_err(json_error)?;
        }
    }
    let text = String::from_utf8(out).map_err(|err| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson produced bad UTF-8: {err}"),
        )
    })?;
    Ok(Value::from_safe_string(text))
}

/// Python `json.dumps` default separators: `", "` between items, `": "` after keys.
struct PythonJsonFormatter;

impl serde_json::ser::Formatter for PythonJsonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}
