//! The OpenAI chat-completions wire format, as much of it as tgrpo sends and reads.
//!
//! Requests are typed and serialised in a fixed field order, which makes their JSON (and so
//! the cache key derived from it) deterministic. Responses are read leniently: servers
//! differ in which optional fields they send (vLLM's reasoning parser adds
//! `reasoning_content`, newer versions `reasoning`; llama.cpp omits `usage` on errors).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system".to_owned(),
            content: content.into(),
        }
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".to_owned(),
            content: content.into(),
        }
    }
}

/// Arguments for the server's chat template (vLLM and SGLang pass them to the template).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatTemplateKwargs {
    /// Qwen3's switch for the `<think>` block.
    pub enable_thinking: bool,
}

/// The body of a `POST /v1/chat/completions`: the seed's request shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The served model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus sampling mass.
    pub top_p: f64,
    /// Presence penalty.
    pub presence_penalty: f64,
    /// Completion token budget.
    pub max_tokens: u32,
    /// Always false: the proxy needs whole answers (and streaming would defeat the cache).
    pub stream: bool,
    /// Per-request seed, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Sent only when thinking is enabled, like the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_kwargs: Option<ChatTemplateKwargs>,
}

impl ChatRequest {
    /// The content-addressed key of (this request, sample index): hex SHA-256 over a
    /// versioned prefix, the request's JSON and the sample index. The sample index is part
    /// of the key because the 8 samples of one problem are byte-identical requests whose
    /// answers must nonetheless be cached apart. The endpoint URL and API key are not: the
    /// same model behind another address gives an equally valid answer.
    pub fn cache_key(&self, sample_index: u32) -> String {
        let body = serde_json::to_vec(self).expect("a ChatRequest always serialises");
        let mut hasher = Sha256::new();
        hasher.update(b"tgrpo-teacher-cache-v1\n");
        hasher.update(&body);
        hasher.update(format!("\nsample={sample_index}").as_bytes());
        hex::encode(hasher.finalize())
    }
}

/// A chat completion response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The server's id for the completion.
    #[serde(default)]
    pub id: Option<String>,
    /// The model that answered.
    #[serde(default)]
    pub model: Option<String>,
    /// The samples (tgrpo asks for one).
    pub choices: Vec<Choice>,
    /// Token counts, when the server reports them.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// One sampled answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// The assistant message.
    pub message: ResponseMessage,
    /// `stop`, `length`, ... (`length` means the token budget cut the answer).
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The assistant's message, with the reasoning fields reasoning parsers add.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseMessage {
    /// The answer (with an inline `<think>` block when no reasoning parser runs).
    #[serde(default)]
    pub content: Option<String>,
    /// vLLM/SGLang reasoning parser output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The same, under the name newer vLLM and OpenRouter use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

/// Token counts of one completion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the rendered prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated, thinking included.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Their sum.
    #[serde(default)]
    pub total_tokens: u64,
}

impl ChatResponse {
    /// Reads a response body; `Err` carries the reason a body is not a usable completion.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, String> {
        let response: ChatResponse =
            serde_json::from_value(value.clone()).map_err(|err| err.to_string())?;
        if response.choices.is_empty() {
            return Err("no choices in the response".to_owned());
        }
        Ok(response)
    }

    /// The first choice (a parsed response always has one).
    pub fn first(&self) -> &Choice {
        &self.choices[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            messages: vec![ChatMessage::user("hi")],
            temperature: 0.7,
            top_p: 0.8,
            presence_penalty: 1.5,
            max_tokens: 16,
            stream: false,
            seed: None,
            chat_template_kwargs: Some(ChatTemplateKwargs {
                enable_thinking: true,
            }),
        }
    }

    #[test]
    fn request_json_is_the_seed_shape() {
        let json = serde_json::to_value(request()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "temperature": 0.7,
                "top_p": 0.8,
                "presence_penalty": 1.5,
                "max_tokens": 16,
                "stream": false,
                "chat_template_kwargs": {"enable_thinking": true}
            })
        );
    }

    #[test]
    fn cache_key_depends_on_sample_and_every_field() {
        let base = request();
        assert_eq!(base.cache_key(0), request().cache_key(0));
        assert_eq!(base.cache_key(0).len(), 64);
        assert_ne!(base.cache_key(0), base.cache_key(1));
        let mut other = request();
        other.temperature = 0.6;
        assert_ne!(base.cache_key(0), other.cache_key(0));
        let mut other = request();
        other.messages[0].content.push('!');
        assert_ne!(base.cache_key(0), other.cache_key(0));
        let mut other = request();
        other.chat_template_kwargs = None;
        assert_ne!(base.cache_key(0), other.cache_key(0));
    }

    #[test]
    fn response_parsing_is_lenient_but_needs_a_choice() {
        let value = serde_json::json!({
            "choices": [{"message": {"content": "x", "reasoning_content": "r"}, "finish_reason": "stop", "index": 0}],
            "extra": 1
        });
        let response = ChatResponse::from_value(&value).unwrap();
        assert_eq!(
            response.first().message.reasoning_content.as_deref(),
            Some("r")
        );
        assert_eq!(response.usage, None);
        assert!(ChatResponse::from_value(&serde_json::json!({"choices": []})).is_err());
        assert!(ChatResponse::from_value(&serde_json::json!({"error": "x"})).is_err());
        assert!(ChatResponse::from_value(&serde_json::json!([1, 2])).is_err());
    }
}
