//! Chat templates: the model's own Jinja template rendered with minijinja, and the
//! post-instruction positions (template tokens after the user's text) of every prompt.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;

use crate::error::{ModelError, Result};
use crate::tokenizer::Tok;

/// A chat message.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Which system prompt a rendered conversation gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SystemPrompt {
    /// Whatever the template does when no system message is given (often a default prompt).
    #[default]
    Default,
    /// This system message.
    Custom(String),
    /// No system text: an empty system message, so templates with a built-in default prompt
    /// do not insert it.
    None,
}

/// A compiled chat template plus the tokens it refers to.
#[derive(Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

/// A prompt ready for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub text: String,
    pub ids: Vec<u32>,
    /// Number of trailing tokens that come from the template after the user's text.
    pub post_instruction: usize,
}

const SENTINEL: &str = "\u{1}steerkit-user\u{1}";

impl ChatTemplate {
    /// Wraps a template source; it is compiled (and checked) here.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let t = ChatTemplate {
            source: source.to_string(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        };
        t.render(&[Message::new("user", "hi")], true)?;
        Ok(t)
    }

    /// The ChatML template, for models that ship none.
    pub fn chatml() -> Self {
        ChatTemplate {
            source: "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into(),
            bos_token: String::new(),
            eos_token: "<|im_end|>".into(),
        }
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation. Templates that can let the model think before it answers
    /// (Qwen3's `enable_thinking`) are told not to: steerkit reads and judges the answer
    /// itself, in a budget of a few dozen tokens, and Qwen3's template then opens the answer
    /// with an empty `<think>` block, as `enable_thinking=False` does in transformers.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.set_trim_blocks(false);
        env.set_lstrip_blocks(false);
        let tmpl = env
            .template_from_str(&self.source)
            .map_err(|e| ModelError::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            enable_thinking => false,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| ModelError::Template(e.to_string()))
    }

    /// The messages for one user turn under a system-prompt choice.
    pub fn messages(user: &str, system: &SystemPrompt) -> Vec<Message> {
        let mut m = Vec::new();
        match system {
            SystemPrompt::Default => {}
            SystemPrompt::Custom(s) => m.push(Message::new("system", s)),
            SystemPrompt::None => m.push(Message::new("system", "")),
        }
        m.push(Message::new("user", user));
        m
    }

    /// The text the template puts after the user's message (with the generation prompt):
    /// for ChatML `<|im_end|>\n<|im_start|>assistant\n`.
    pub fn post_instruction_text(&self, system: &SystemPrompt) -> Result<String> {
        let text = self.render(&Self::messages(SENTINEL, system), true)?;
        let at = text.rfind(SENTINEL).ok_or_else(|| {
            ModelError::Template("the template does not include the user's message".into())
        })?;
        Ok(text[at + SENTINEL.len()..].to_string())
    }

    /// Formats and tokenizes one user instruction, locating its post-instruction tokens.
    ///
    /// The user's text is tokenized as plain text (a `<|im_start|>` typed by the user is not a
    /// control token), and the template around it with control tokens recognised.
    pub fn prompt(&self, tok: &Tok, user: &str, system: &SystemPrompt) -> Result<Prompt> {
        self.conversation(tok, &Self::messages(user, system))
    }

    /// Formats and tokenizes a conversation whose last message is the user's.
    pub fn conversation(&self, tok: &Tok, messages: &[Message]) -> Result<Prompt> {
        if messages.last().is_none_or(|m| m.role != "user") {
            return Err(ModelError::Input(
                "a conversation must end with a user message".into(),
            ));
        }
        // Render with sentinels in place of every message body, then tokenize the template
        // pieces with control tokens and the bodies as plain text.
        let marked: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message::new(&m.role, &format!("\u{1}{i}\u{1}")))
            .collect();
        let skeleton = self.render(&marked, true)?;
        let mut ids = Vec::new();
        let mut text = String::new();
        let mut rest = skeleton.as_str();
        for (i, m) in messages.iter().enumerate() {
            let mark = format!("\u{1}{i}\u{1}");
            let at = rest.find(&mark).ok_or_else(|| {
                ModelError::Template(format!("the template drops message {i} ({})", m.role))
            })?;
            self.push_template(tok, &rest[..at], &mut ids, &mut text)?;
            ids.extend(tok.encode_text(&m.content)?);
            text.push_str(&m.content);
            rest = &rest[at + mark.len()..];
        }
        let before = ids.len();
        self.push_template(tok, rest, &mut ids, &mut text)?;
        let post_instruction = ids.len() - before;
        if post_instruction == 0 {
            return Err(ModelError::Template(
                "the template adds no tokens after the user's message".into(),
            ));
        }
        if tok.add_bos {
            if let Some(bos) = tok.bos_id {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(Prompt {
            text,
            ids,
            post_instruction,
        })
    }

    fn push_template(
        &self,
        tok: &Tok,
        piece: &str,
        ids: &mut Vec<u32>,
        text: &mut String,
    ) -> Result<()> {
        if !piece.is_empty() {
            ids.extend(tok.encode_chat(piece)?);
            text.push_str(piece);
        }
        Ok(())
    }
}
