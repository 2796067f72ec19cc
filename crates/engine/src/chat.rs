//! Chat templates: recognising a model's `tokenizer.chat_template` by its distinctive
//! markers and rendering a conversation to a prompt string, the way llama.cpp's built-in
//! (non-Jinja) `llama_chat_apply_template` does.

use alloc::string::String;
use core::fmt;

/// One chat message. `role` is usually `system`, `user` or `assistant`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

impl<'a> Message<'a> {
    pub fn new(role: &'a str, content: &'a str) -> Self {
        Self { role, content }
    }
    pub fn system(content: &'a str) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: &'a str) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: &'a str) -> Self {
        Self::new("assistant", content)
    }
}

/// Why a conversation could not be rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatTemplateError {
    /// The model has no `tokenizer.chat_template`.
    Missing,
    /// The template matches none of the known families.
    Unrecognised {
        /// The start of the template, for the message.
        excerpt: String,
    },
    /// The family is recognised (named as llama.cpp names it) but not rendered here.
    Unsupported { family: &'static str },
}

impl fmt::Display for ChatTemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatTemplateError::Missing => {
                f.write_str("the model has no chat template (tokenizer.chat_template)")
            }
            ChatTemplateError::Unrecognised { excerpt } => write!(
                f,
                "unrecognised chat template (known: chatml, llama2, llama3, mistral, zephyr, \
                 phi3, gemma, ...); it starts with: {excerpt:?}"
            ),
            ChatTemplateError::Unsupported { family } => write!(
                f,
                "chat template family `{family}` is recognised but not supported"
            ),
        }
    }
}

impl core::error::Error for ChatTemplateError {}

/// A chat template family, named as in llama.cpp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\n...<|im_end|>` (SmolLM2, Qwen, ...).
    ChatMl,
    /// ChatML with `<|im_sep|>` (Phi-4).
    Phi4,
    /// `[INST]` without a system block; `[INST]`/`<<SYS>>` variants follow.
    Llama2,
    Llama2Sys,
    Llama2SysBos,
    Llama2SysStrip,
    MistralV1,
    MistralV3,
    MistralV3Tekken,
    MistralV7,
    MistralV7Tekken,
    /// `<|user|>\n...<|end|>` (Phi-3).
    Phi3,
    Falcon3,
    /// `<|user|>\n...<|endoftext|>`.
    Zephyr,
    /// `<|user|>\n...` with no end marker (llama.cpp's reading of TinyLlama's template).
    GlmEdge,
    /// `<start_of_turn>` (Gemma).
    Gemma,
    /// `<|start_header_id|>` (Llama 3).
    Llama3,
    /// Recognised by llama.cpp but not rendered by this engine.
    Other(&'static str),
}

/// Built-in names llama.cpp accepts in place of a template, with their families.
const NAMES: &[(&str, ChatTemplate)] = &[
    ("chatml", ChatTemplate::ChatMl),
    ("llama2", ChatTemplate::Llama2),
    ("llama2-sys", ChatTemplate::Llama2Sys),
    ("llama2-sys-bos", ChatTemplate::Llama2SysBos),
    ("llama2-sys-strip", ChatTemplate::Llama2SysStrip),
    ("mistral-v1", ChatTemplate::MistralV1),
    ("mistral-v3", ChatTemplate::MistralV3),
    ("mistral-v3-tekken", ChatTemplate::MistralV3Tekken),
    ("mistral-v7", ChatTemplate::MistralV7),
    ("mistral-v7-tekken", ChatTemplate::MistralV7Tekken),
    ("phi3", ChatTemplate::Phi3),
    ("phi4", ChatTemplate::Phi4),
    ("falcon3", ChatTemplate::Falcon3),
    ("zephyr", ChatTemplate::Zephyr),
    ("glmedge", ChatTemplate::GlmEdge),
    ("gemma", ChatTemplate::Gemma),
    ("llama3", ChatTemplate::Llama3),
];

/// ASCII whitespace as C's `isspace` sees it.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{0b}' | '\u{0c}' | '\r')
}

fn trim(s: &str) -> &str {
    s.trim_matches(is_c_space)
}

impl ChatTemplate {
    /// The family for one of llama.cpp's built-in template names (`"chatml"`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        NAMES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }

    /// llama.cpp's name for the family.
    pub fn name(&self) -> &'static str {
        if let ChatTemplate::Other(n) = self {
            return n;
        }
        NAMES
            .iter()
            .find(|(_, t)| t == self)
            .map_or("unknown", |(n, _)| n)
    }

    /// Recognises a template (a Jinja source or a built-in name) by the same
    /// distinctive substrings, checked in the same order, as llama.cpp.
    pub fn detect(tmpl: &str) -> Result<Self, ChatTemplateError> {
        use ChatTemplate::*;
        if let Some(t) = Self::from_name(tmpl) {
            return Ok(t);
        }
        let has = |s: &str| tmpl.contains(s);
        let t = if has("<|im_start|>") {
            if has("<|im_sep|>") {
                Phi4
            } else if has("<end_of_utterance>") {
                Other("smolvlm")
            } else {
                ChatMl
            }
        } else if tmpl.starts_with("mistral") || has("[INST]") {
            if has("[SYSTEM_PROMPT]") {
                MistralV7
            } else if has("' [INST] ' + system_message") || has("[AVAILABLE_TOOLS]") {
                if has(" [INST]") {
                    MistralV1
                } else if has("\"[INST]\"") {
                    MistralV3Tekken
                } else {
                    MistralV3
                }
            } else if has("content.strip()") {
                Llama2SysStrip
            } else if has("bos_token + '[INST]") {
                Llama2SysBos
            } else if has("<<SYS>>") {
                Llama2Sys
            } else {
                Llama2
            }
        } else if has("<|assistant|>") && has("<|end|>") {
            Phi3
        } else if has("[gMASK]<sop>") {
            Other("chatglm4")
        } else if has("<|assistant|>") && has("<|user|>") {
            if has("<|tool_declare|>") {
                Other("exaone-moe")
            } else if has("</s>") {
                Falcon3
            } else {
                GlmEdge
            }
        } else if has("<|{{ item['role'] }}|>") && has("<|begin_of_image|>") {
            GlmEdge
        } else if has("<|user|>") && has("<|endoftext|>") {
            Zephyr
        } else if has("bos_token + message['role']") {
            Other("monarch")
        } else if has("<start_of_turn>") {
            Gemma
        } else if has("'\\n\\nAssistant: ' + eos_token") {
            Other("orion")
        } else if has("GPT4 Correct ") {
            Other("openchat")
        } else if has("USER: ") && has("ASSISTANT: ") {
            Other("vicuna")
        } else if has("### Instruction:") && has("<|EOT|>") {
            Other("deepseek")
        } else if has("<|START_OF_TURN_TOKEN|>") && has("<|USER_TOKEN|>") {
            Other("command-r")
        } else if has("<|start_header_id|>") && has("<|end_header_id|>") {
            Llama3
        } else {
            let excerpt: String = tmpl.chars().take(80).collect();
            return Err(ChatTemplateError::Unrecognised { excerpt });
        };
        Ok(t)
    }

    /// The template of a GGUF file (`tokenizer.chat_template`). Gemma files converted
    /// without one (the Gemma 3 270M GGUF has none) get the Gemma turn format, the only
    /// one their vocabulary's `<start_of_turn>` tokens fit; other files without one are
    /// [`ChatTemplateError::Missing`].
    pub fn from_gguf(file: &embodios_gguf::GgufFile<'_>) -> Result<Self, ChatTemplateError> {
        match file.get_str("tokenizer.chat_template") {
            Some(tmpl) => Self::detect(tmpl),
            None if file.architecture().is_some_and(|a| a.starts_with("gemma")) => {
                Ok(ChatTemplate::Gemma)
            }
            None => Err(ChatTemplateError::Missing),
        }
    }

    /// Renders `messages` to a prompt; with `add_generation_prompt` the text ends with
    /// the opening of an assistant turn (for families that have one).
    pub fn render(
        &self,
        messages: &[Message<'_>],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        use ChatTemplate::*;
        let mut s = String::new();
        match *self {
            ChatMl => {
                for m in messages {
                    push_all(
                        &mut s,
                        &["<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n"],
                    );
                }
                if add_generation_prompt {
                    s.push_str("<|im_start|>assistant\n");
                }
            }
            Phi4 => {
                for m in messages {
                    push_all(
                        &mut s,
                        &[
                            "<|im_start|>",
                            m.role,
                            "<|im_sep|>",
                            m.content,
                            "<|im_end|>",
                        ],
                    );
                }
                if add_generation_prompt {
                    s.push_str("<|im_start|>assistant<|im_sep|>");
                }
            }
            MistralV7 | MistralV7Tekken => {
                let sp = if *self == MistralV7 { " " } else { "" };
                for m in messages {
                    match m.role {
                        "system" => push_all(
                            &mut s,
                            &["[SYSTEM_PROMPT]", sp, m.content, "[/SYSTEM_PROMPT]"],
                        ),
                        "user" => push_all(&mut s, &["[INST]", sp, m.content, "[/INST]"]),
                        _ => push_all(&mut s, &[sp, m.content, "</s>"]),
                    }
                }
            }
            MistralV1 | MistralV3 | MistralV3Tekken => {
                let lead = if *self == MistralV1 { " " } else { "" };
                let trail = if *self == MistralV3Tekken { "" } else { " " };
                let trim_reply = *self == MistralV3;
                let mut in_turn = false;
                for m in messages {
                    if !in_turn {
                        push_all(&mut s, &[lead, "[INST]", trail]);
                        in_turn = true;
                    }
                    match m.role {
                        "system" => push_all(&mut s, &[m.content, "\n\n"]),
                        "user" => push_all(&mut s, &[m.content, lead, "[/INST]"]),
                        _ => {
                            let c = if trim_reply {
                                trim(m.content)
                            } else {
                                m.content
                            };
                            push_all(&mut s, &[trail, c, "</s>"]);
                            in_turn = false;
                        }
                    }
                }
            }
            Llama2 | Llama2Sys | Llama2SysBos | Llama2SysStrip => {
                let sys = *self != Llama2;
                let bos_inside = *self == Llama2SysBos;
                let strip = *self == Llama2SysStrip;
                // The first turn's BOS comes from the tokenizer, not the text.
                let mut in_turn = true;
                s.push_str("[INST] ");
                for m in messages {
                    let c = if strip { trim(m.content) } else { m.content };
                    if !in_turn {
                        in_turn = true;
                        s.push_str(if bos_inside { "<s>[INST] " } else { "[INST] " });
                    }
                    match m.role {
                        "system" if sys => push_all(&mut s, &["<<SYS>>\n", c, "\n<</SYS>>\n\n"]),
                        "system" => push_all(&mut s, &[c, "\n"]),
                        "user" => push_all(&mut s, &[c, " [/INST]"]),
                        _ => {
                            push_all(&mut s, &[c, "</s>"]);
                            in_turn = false;
                        }
                    }
                }
            }
            Phi3 => {
                for m in messages {
                    push_all(&mut s, &["<|", m.role, "|>\n", m.content, "<|end|>\n"]);
                }
                if add_generation_prompt {
                    s.push_str("<|assistant|>\n");
                }
            }
            Falcon3 => {
                for m in messages {
                    push_all(&mut s, &["<|", m.role, "|>\n", m.content, "\n"]);
                }
                if add_generation_prompt {
                    s.push_str("<|assistant|>\n");
                }
            }
            Zephyr => {
                for m in messages {
                    push_all(
                        &mut s,
                        &["<|", m.role, "|>\n", m.content, "<|endoftext|>\n"],
                    );
                }
                if add_generation_prompt {
                    s.push_str("<|assistant|>\n");
                }
            }
            GlmEdge => {
                for m in messages {
                    push_all(&mut s, &["<|", m.role, "|>\n", m.content]);
                }
                if add_generation_prompt {
                    s.push_str("<|assistant|>");
                }
            }
            Gemma => {
                // Gemma has no system role: the system text is prepended to the next
                // user turn.
                let mut system = String::new();
                for m in messages {
                    if m.role == "system" {
                        system.push_str(trim(m.content));
                        continue;
                    }
                    let role = if m.role == "assistant" {
                        "model"
                    } else {
                        m.role
                    };
                    push_all(&mut s, &["<start_of_turn>", role, "\n"]);
                    if !system.is_empty() && role != "model" {
                        push_all(&mut s, &[&system, "\n\n"]);
                        system.clear();
                    }
                    push_all(&mut s, &[trim(m.content), "<end_of_turn>\n"]);
                }
                if add_generation_prompt {
                    s.push_str("<start_of_turn>model\n");
                }
            }
            Llama3 => {
                for m in messages {
                    push_all(
                        &mut s,
                        &[
                            "<|start_header_id|>",
                            m.role,
                            "<|end_header_id|>\n\n",
                            trim(m.content),
                            "<|eot_id|>",
                        ],
                    );
                }
                if add_generation_prompt {
                    s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
                }
            }
            Other(family) => return Err(ChatTemplateError::Unsupported { family }),
        }
        Ok(s)
    }
}

fn push_all(s: &mut String, parts: &[&str]) {
    for p in parts {
        s.push_str(p);
    }
}

impl fmt::Display for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Renders with the template text of a model (convenience for [`ChatTemplate::detect`]
/// followed by [`ChatTemplate::render`]).
pub fn apply_template(
    tmpl: &str,
    messages: &[Message<'_>],
    add_generation_prompt: bool,
) -> Result<String, ChatTemplateError> {
    ChatTemplate::detect(tmpl)?.render(messages, add_generation_prompt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn unrecognised_template_is_a_clear_error() {
        let e = ChatTemplate::detect("{{ messages }} nothing known here").unwrap_err();
        assert!(matches!(e, ChatTemplateError::Unrecognised { .. }));
        assert!(e.to_string().contains("unrecognised chat template"));
    }

    #[test]
    fn names_round_trip() {
        for (n, t) in NAMES {
            assert_eq!(ChatTemplate::from_name(n), Some(*t));
            assert_eq!(t.name(), *n);
        }
        assert_eq!(ChatTemplate::detect("llama3"), Ok(ChatTemplate::Llama3));
    }

    #[test]
    fn unsupported_family_errors_on_render() {
        let t = ChatTemplate::detect("{{ bos_token + message['role'] }}").unwrap();
        assert_eq!(t, ChatTemplate::Other("monarch"));
        assert_eq!(
            t.render(&[Message::user("hi")], true),
            Err(ChatTemplateError::Unsupported { family: "monarch" })
        );
        assert_eq!(t.to_string(), "monarch");
    }
}
