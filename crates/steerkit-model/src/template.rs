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
    /// gpt-oss's template, which cannot turn reasoning off, is asked for the least
    /// (`reasoning_effort` low).
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
        // transformers gives templates today's date this way (Llama 3.2's system header).
        env.add_function(
            "strftime_now",
            |fmt: String| -> std::result::Result<String, JinjaError> {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                strftime(&fmt, now).map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e))
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
            reasoning_effort => "low",
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

/// `unix_secs` (UTC) formatted by the strftime directives chat templates use: `%Y %m %d %e %H
/// %M %S %B %b %A %a %j %y %%`; any other is an error naming it.
pub fn strftime(fmt: &str, unix_secs: i64) -> std::result::Result<String, String> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // The civil date of a day count (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][(month - 1) as usize];
    let yday = before + day + i64::from(leap && month > 2);
    let weekday = (days + 4).rem_euclid(7) as usize;
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let m = MONTHS[(month - 1) as usize];
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('B') => out.push_str(m),
            Some('b') => out.push_str(&m[..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('%') => out.push('%'),
            other => {
                return Err(format!(
                    "strftime_now: the directive %{} is not supported",
                    other.map_or(String::new(), String::from)
                ))
            }
        }
    }
    Ok(out)
}
