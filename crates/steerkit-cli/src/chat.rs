//! `steerkit chat`: an interactive conversation, streamed token by token.

use std::io::{BufRead, Write};

use anyhow::Result;
use clap::Args as ClapArgs;
use steerkit_model::{ChatTemplate, Message, NoHook};

use crate::common::{ModelArgs, SamplingArgs, SystemArgs};

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub system: SystemArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: Args) -> Result<()> {
    let m = a.model.load()?;
    let opts = a.sampling.options(&m)?;
    let system = a.system.choice();
    let fresh = || {
        let mut v = ChatTemplate::messages("", &system);
        v.pop();
        v
    };
    let mut history: Vec<Message> = fresh();
    eprintln!(
        "chatting with {} ({} layers). /reset clears the conversation, /exit or Ctrl-D quits.",
        m.path.display(),
        m.model.cfg.num_layers
    );
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut bytes = Vec::new();
        if stdin.lock().read_until(b'\n', &mut bytes)? == 0 {
            println!();
            break;
        }
        let Ok(line) = String::from_utf8(bytes) else {
            eprintln!("that line is not UTF-8 text; it was left out");
            continue;
        };
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = fresh();
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", line));
        let prompt = m.chat.conversation(&m.tok, &history)?;
        if let Some(note) =
            crate::common::context_note(&m.model.cfg, prompt.ids.len(), opts.max_new_tokens)
        {
            eprintln!("{note} (/reset starts a new conversation)");
        }
        let mut shown = String::new();
        let mut ids = Vec::new();
        let g =
            steerkit_model::generate(&m.model, &[prompt.ids], &opts, &mut NoHook, &mut |new| {
                ids.extend(new.iter().map(|p| p.1));
                // Print the text decoded so far minus what is already shown (multi-byte safe);
                // a harmony model's final message only, not its reasoning.
                let text = match m.tok.harmony {
                    true => m.tok.final_message(&ids).map(Option::unwrap_or_default),
                    false => m.tok.decode(&ids, true),
                };
                if let Ok(t) = text {
                    if t.len() > shown.len() && t.starts_with(&shown) && !t.ends_with('\u{fffd}') {
                        print!("{}", &t[shown.len()..]);
                        let _ = std::io::stdout().flush();
                        shown = t;
                    }
                }
            })?;
        let answer = m.tok.answer(&g[0].ids)?;
        if answer.len() > shown.len() && answer.starts_with(&shown) {
            print!("{}", &answer[shown.len()..]);
        }
        println!();
        history.push(Message::new("assistant", &answer));
    }
    Ok(())
}
