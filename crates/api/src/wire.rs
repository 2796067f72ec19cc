//! The JSON request bodies of the Ollama and OpenAI endpoints, as sent by clients, and
//! their conversion into a backend [`GenRequest`]. Unknown fields are ignored (clients
//! send many we do not use); wrong types and missing required fields are errors.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::backend::{ChatMessage, GenRequest, Prompt, Sampling};

/// A request body that could not be used, with the message for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest(pub String);

/// Parses a JSON body into `T`, with messages that say what was wrong: syntax first
/// (the whole body must be JSON), then the shape (an object with the right fields).
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BadRequest("missing request body".into()));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BadRequest(format!("invalid JSON in request body: {e}")))?;
    if !value.is_object() {
        return Err(BadRequest(
            "invalid request: the body must be a JSON object".into(),
        ));
    }
    T::deserialize(value).map_err(|e| BadRequest(format!("invalid request: {e}")))
}

/// Ollama's `options` object (the subset this server honours).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct OllamaOptions {
    pub temperature: Option<f32>,
    pub top_k: Option<i64>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<i64>,
    /// `-1` (infinite) and `-2` (fill the context) both mean "no limit" here.
    pub num_predict: Option<i64>,
    pub stop: Option<Vec<String>>,
}

impl OllamaOptions {
    fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_k: self
                .top_k
                .map(|k| u32::try_from(k.max(0)).unwrap_or(u32::MAX)),
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            // Any i64 is a usable seed; negative values keep their bits.
            seed: self.seed.map(|s| s as u64),
        }
    }

    fn max_tokens(&self) -> Option<u32> {
        self.num_predict
            .filter(|n| *n >= 0)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    }
}

/// `POST /api/generate`.
#[derive(Clone, Debug, Deserialize)]
pub struct OllamaGenerate {
    pub model: String,
    #[serde(default)]
    pub prompt: Option<String>,
    pub stream: Option<bool>,
    pub options: Option<OllamaOptions>,
}

/// One message of `POST /api/chat`.
#[derive(Clone, Debug, Deserialize)]
pub struct OllamaMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
}

/// `POST /api/chat`.
#[derive(Clone, Debug, Deserialize)]
pub struct OllamaChat {
    pub model: String,
    #[serde(default)]
    pub messages: Option<Vec<OllamaMessage>>,
    pub stream: Option<bool>,
    pub options: Option<OllamaOptions>,
}

/// `POST /api/show` (`name` is the older spelling of `model`).
#[derive(Clone, Debug, Deserialize)]
pub struct OllamaShow {
    pub model: Option<String>,
    pub name: Option<String>,
}

impl OllamaGenerate {
    /// `None` when the prompt is empty: Ollama then only loads the model.
    pub fn to_request(&self, model: &str) -> Option<GenRequest> {
        let prompt = self.prompt.as_deref().unwrap_or("");
        if prompt.is_empty() {
            return None;
        }
        let options = self.options.clone().unwrap_or_default();
        Some(GenRequest {
            model: model.to_string(),
            prompt: Prompt::Raw(prompt.to_string()),
            max_tokens: options.max_tokens(),
            stop: options.stop.clone().unwrap_or_default(),
            sampling: options.sampling(),
        })
    }
}

impl OllamaChat {
    /// `None` when there are no messages: Ollama then only loads the model.
    pub fn to_request(&self, model: &str) -> Option<GenRequest> {
        let messages = self.messages.as_deref().unwrap_or(&[]);
        if messages.is_empty() {
            return None;
        }
        let options = self.options.clone().unwrap_or_default();
        Some(GenRequest {
            model: model.to_string(),
            prompt: Prompt::Chat(
                messages
                    .iter()
                    .map(|m| ChatMessage {
                        role: m.role.clone(),
                        content: m.content.clone().unwrap_or_default(),
                    })
                    .collect(),
            ),
            max_tokens: options.max_tokens(),
            stop: options.stop.clone().unwrap_or_default(),
            sampling: options.sampling(),
        })
    }
}

/// `stream_options` of the OpenAI endpoints.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// The sampling fields OpenAI's two generation endpoints share.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct OpenAiCommon {
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    /// A string or an array of up to 4 strings.
    pub stop: Option<Value>,
    pub n: Option<u32>,
}

impl OpenAiCommon {
    fn stop(&self) -> Result<Vec<String>, BadRequest> {
        match &self.stop {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(alloc::vec![s.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(BadRequest(
                        "invalid request: `stop` must be a string or an array of strings".into(),
                    )),
                })
                .collect(),
            Some(_) => Err(BadRequest(
                "invalid request: `stop` must be a string or an array of strings".into(),
            )),
        }
    }

    fn check_n(&self) -> Result<(), BadRequest> {
        match self.n {
            None | Some(1) => Ok(()),
            Some(_) => Err(BadRequest("only n=1 is supported".into())),
        }
    }

    fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed.map(|s| s as u64),
            ..Sampling::default()
        }
    }
}

/// One message of `POST /v1/chat/completions`: `content` is a string, an array of
/// parts (only `text` parts are used), or null.
#[derive(Clone, Debug, Deserialize)]
pub struct OpenAiMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct OpenAiChat {
    pub model: String,
    pub messages: Vec<OpenAiMessage>,
    #[serde(flatten)]
    pub common: OpenAiCommon,
}

/// `POST /v1/completions`.
#[derive(Clone, Debug, Deserialize)]
pub struct OpenAiCompletion {
    pub model: String,
    /// A string, or an array holding one string.
    pub prompt: Value,
    #[serde(flatten)]
    pub common: OpenAiCommon,
}

/// Tokens `/v1/completions` generates when `max_tokens` is absent (OpenAI's default).
pub const COMPLETION_DEFAULT_MAX_TOKENS: u32 = 16;

fn message_text(content: &Option<Value>) -> Result<String, BadRequest> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (Some("text"), _) => {
                        return Err(BadRequest(
                            "invalid request: a text content part needs a string `text`".into(),
                        ))
                    }
                    _ => {
                        return Err(BadRequest(
                            "invalid request: only text content parts are supported".into(),
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(BadRequest(
            "invalid request: message `content` must be a string or an array of parts".into(),
        )),
    }
}

impl OpenAiChat {
    pub fn to_request(&self, model: &str) -> Result<GenRequest, BadRequest> {
        self.common.check_n()?;
        if self.messages.is_empty() {
            return Err(BadRequest("invalid request: `messages` is empty".into()));
        }
        let messages = self
            .messages
            .iter()
            .map(|m| {
                Ok(ChatMessage {
                    // OpenAI's newer name for the system role.
                    role: if m.role == "developer" {
                        "system".into()
                    } else {
                        m.role.clone()
                    },
                    content: message_text(&m.content)?,
                })
            })
            .collect::<Result<Vec<_>, BadRequest>>()?;
        Ok(GenRequest {
            model: model.to_string(),
            prompt: Prompt::Chat(messages),
            max_tokens: self.common.max_completion_tokens.or(self.common.max_tokens),
            stop: self.common.stop()?,
            sampling: self.common.sampling(),
        })
    }
}

impl OpenAiCompletion {
    pub fn to_request(&self, model: &str) -> Result<GenRequest, BadRequest> {
        self.common.check_n()?;
        let prompt = match &self.prompt {
            Value::String(s) => s.clone(),
            Value::Array(items) if items.len() == 1 && items[0].is_string() => {
                items[0].as_str().unwrap_or_default().to_string()
            }
            _ => {
                return Err(BadRequest(
                    "invalid request: `prompt` must be a string (or an array of one string)".into(),
                ))
            }
        };
        if prompt.is_empty() {
            return Err(BadRequest("invalid request: `prompt` is empty".into()));
        }
        Ok(GenRequest {
            model: model.to_string(),
            prompt: Prompt::Raw(prompt),
            max_tokens: Some(
                self.common
                    .max_tokens
                    .unwrap_or(COMPLETION_DEFAULT_MAX_TOKENS),
            ),
            stop: self.common.stop()?,
            sampling: self.common.sampling(),
        })
    }
}
