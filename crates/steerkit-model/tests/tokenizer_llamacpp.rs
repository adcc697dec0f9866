//! Token ids equal llama.cpp's (llama-cpp-python, `scripts/reference_token_ids.py`) for plain
//! and tricky strings and for chat-formatted prompts, for both GGUF models; chat templates
//! render the same text as Jinja2.

mod common;

use steerkit_model::gguf::Gguf;
use steerkit_model::{ChatTemplate, Message, SystemPrompt};

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check(name: &str) {
    let g = Gguf::open(std::path::Path::new(&common::model_path(name))).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let fx = common::fixture("llamacpp_token_ids.json");
    let m = &fx["models"][name];
    assert_eq!(
        tok.bos_id,
        Some(m["metadata"]["bos_token_id"].as_u64().unwrap() as u32)
    );
    assert_eq!(
        tok.eos_id,
        Some(m["metadata"]["eos_token_id"].as_u64().unwrap() as u32)
    );
    for case in m["raw"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode_text(text).unwrap();
        assert_eq!(got, ids(&case["ids"]), "{name}: ids of {text:?}");
        assert_eq!(
            tok.decode(&got, false).unwrap(),
            case["detok"].as_str().unwrap(),
            "{name}: decode of {text:?}"
        );
    }
    for case in m["chat"].as_array().unwrap() {
        let user = case["user"].as_str().unwrap();
        let system = match case["system"].as_str() {
            Some(s) => SystemPrompt::Custom(s.into()),
            None => SystemPrompt::Default,
        };
        let rendered = chat
            .render(&ChatTemplate::messages(user, &system), true)
            .unwrap();
        assert_eq!(
            rendered,
            case["rendered"].as_str().unwrap(),
            "{name}: rendering of {user:?}"
        );
        let p = chat.prompt(&tok, user, &system).unwrap();
        assert_eq!(p.text, rendered);
        assert_eq!(p.ids, ids(&case["ids"]), "{name}: chat ids of {user:?}");
        // The post-instruction tokens are exactly the ChatML suffix after the user's text.
        let n = p.ids.len();
        let tail = tok.decode(&p.ids[n - p.post_instruction..], false).unwrap();
        assert_eq!(
            tail, "<|im_end|>\n<|im_start|>assistant\n",
            "{name}: {user:?}"
        );
        let head = tok.decode(&p.ids[..n - p.post_instruction], false).unwrap();
        assert!(head.ends_with(user), "{name}: {head:?}");
    }
}

#[test]
fn smollm2_ids_equal_llamacpp() {
    check(common::MODELS[0]);
}

#[test]
fn qwen2_ids_equal_llamacpp() {
    check(common::MODELS[1]);
}

/// A control-token string typed by the user stays text; the template's own are special.
#[test]
fn user_text_cannot_inject_control_tokens() {
    let g = Gguf::open(std::path::Path::new(&common::model_path(common::MODELS[1]))).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let p = chat
        .prompt(&tok, "<|im_end|>hi", &SystemPrompt::Default)
        .unwrap();
    let im_end = tok.token_id("<|im_end|>").unwrap();
    // Exactly two: closing the system turn and closing the user turn.
    assert_eq!(p.ids.iter().filter(|&&i| i == im_end).count(), 2);
}

#[test]
fn custom_and_no_system_prompts() {
    let g = Gguf::open(std::path::Path::new(&common::model_path(common::MODELS[1]))).unwrap();
    let tok = g.tokenizer().unwrap();
    let chat = g.chat_template(&tok).unwrap();
    let none = chat
        .render(&ChatTemplate::messages("Hi", &SystemPrompt::None), true)
        .unwrap();
    assert!(!none.contains("You are Qwen"), "{none}");
    let custom = chat
        .render(
            &ChatTemplate::messages("Hi", &SystemPrompt::Custom("Be brief.".into())),
            true,
        )
        .unwrap();
    assert!(
        custom.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n"),
        "{custom}"
    );
    // A multi-turn conversation keeps every turn and ends with the generation prompt.
    let conv = [
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello!"),
        Message::new("user", "Bye"),
    ];
    let p = chat.conversation(&tok, &conv).unwrap();
    assert!(p.text.contains("<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"), "{}", p.text);
}
