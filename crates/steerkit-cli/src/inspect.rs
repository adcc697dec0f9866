//! `steerkit inspect`.

use anyhow::Result;
use candle_core::DType;
use clap::Args as ClapArgs;
use serde_json::json;
use steerkit_model::SystemPrompt;

use crate::common::ModelArgs;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let m = a.model.load()?;
    let c = &m.model.cfg;
    let name = |id: Option<u32>| id.and_then(|i| m.tok.token(i));
    let stops: Vec<String> = m
        .tok
        .stop_ids
        .iter()
        .filter_map(|&i| m.tok.token(i))
        .collect();
    let post = m.chat.post_instruction_text(&SystemPrompt::Default)?;
    let example = m.chat.render(
        &steerkit_model::ChatTemplate::messages("{user}", &SystemPrompt::Default),
        true,
    )?;
    let mut info = json!({
        "source": m.path.display().to_string(),
        "kind": m.kind,
        "architecture": c.arch,
        "layers": c.num_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "heads": c.num_heads,
        "kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "parameters": c.num_parameters(),
        "dtype": format!("{:?}", m.model.matrix_dtype()).to_lowercase(),
        "compute_dtype": format!("{:?}", m.model.dtype).to_lowercase(),
        "weight_bytes": m.model.weight_bytes(),
        "weight_bytes_bf16": steerkit_model::weights::weight_bytes(c, &m.model.device, DType::BF16),
        "memory_available": steerkit_model::memory::available_memory(),
        "tied_embeddings": c.tie_word_embeddings,
        "attention_bias": c.attention_bias,
        "rope_theta": c.rope_theta,
        "rope_scaling": c.rope_scaling.as_ref().map(|r| r.to_hf_json(c)),
        "rms_norm_eps": c.rms_norm_eps,
        "context_length": c.max_position_embeddings,
        "bos_token": name(m.tok.bos_id),
        "eos_token": name(m.tok.eos_id),
        "stop_tokens": stops,
        "add_bos": m.tok.add_bos,
        "chat_template_chars": m.chat.source().len(),
        "chat_example": example,
        "post_instruction": post,
    });
    if let Some(r) = c.rotary_dim {
        info["rotary_dim"] = r.into();
    }
    if let Some(e) = &c.moe {
        info["experts"] = serde_json::to_value(e)?;
    }
    if let Some(w) = c.sliding_window {
        info["sliding_window"] = w.into();
        info["full_attention_layers"] = c.full_attention_layers.clone().into();
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let obj = info.as_object().expect("object");
    for (k, v) in obj {
        let s = match v {
            serde_json::Value::String(s) => format!("{s:?}"),
            v => v.to_string(),
        };
        println!("{k:<20} {s}");
    }
    Ok(())
}
