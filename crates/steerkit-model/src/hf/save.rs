//! Writing Hugging Face folders: config.json, safetensors files (sharded with an index above
//! [`SHARD_BYTES`]) and the tokenizer's files, built in a temporary sibling folder that is
//! renamed into place when complete, so an interrupted save leaves no half-written model.
//!
//! A model read from a folder can be written back in that folder's own layout
//! ([`FolderSave::source`]): for a multimodal model (Gemma 3 4B and up, Mistral Small 3.1 and
//! 3.2) that is the whole model, its vision tower and projector carried unchanged beside the
//! patched text model, loadable by the serving stacks that loaded the original.

use std::collections::HashSet;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use candle_core::safetensors::MmapedSafetensors;

use super::{stored_names, HfFolder};
use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::template::ChatTemplate;
use crate::tokenizer::Tok;
use crate::weights::{Lazy, TensorMap};

/// Largest safetensors shard written by [`save`].
pub const SHARD_BYTES: usize = 2 << 30;

/// A source folder's files that every export carries: its generation defaults (end-of-turn
/// ids such as Llama 3's `<|eot_id|>`, sampling settings), which serving stacks read and which
/// a patch of the weights leaves true.
const GENERATION_FILES: [&str; 1] = ["generation_config.json"];

/// A multimodal source folder's files that its whole export carries as they are: the image
/// processor's and the tokenizer's (its image tokens included).
const MULTIMODAL_FILES: [&str; 11] = [
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
    // Mistral's own tokenizer format (vLLM's `--tokenizer-mode mistral`).
    "tekken.json",
];

/// What [`save`] writes besides the weights, and how.
#[derive(Clone, Copy)]
pub struct FolderSave<'a> {
    /// Storage of every floating-point tensor: f32, bf16 or f16 (config.json's dtype says
    /// which).
    pub dtype: DType,
    /// The tokenizer, written as tokenizer.json and tokenizer_config.json (with `chat`'s
    /// template), unless the source's files are carried.
    pub tok: Option<&'a Tok>,
    pub chat: Option<&'a ChatTemplate>,
    /// The folder the model was read from; its generation_config.json is carried over. When
    /// it holds a multimodal model ([`HfFolder::multimodal`]), the folder is written whole in
    /// the source's layout: its config.json, the text model's tensors under the names the
    /// source stores them by, every other tensor (vision tower, projector) as it is, and the
    /// processor's and tokenizer's files as they are.
    pub source: Option<&'a HfFolder>,
    /// With a multimodal source: write its text model alone, as a text model's folder.
    pub text_only: bool,
    /// Applied to every tensor a multimodal source's whole export carries (weight
    /// orthogonalization projects the direction out of the projector that writes image
    /// features into the residual stream), by its stored name.
    pub carried: Option<TensorMap<'a>>,
    /// Applied to every tensor of the text model as it is written, by its name in
    /// [`Model::named_tensors`] (weight orthogonalization, computed a tensor at a time).
    pub map: Option<TensorMap<'a>>,
    /// Told the bytes of tensor data written so far, and in all.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
}

impl Default for FolderSave<'_> {
    fn default() -> Self {
        FolderSave {
            dtype: DType::F32,
            tok: None,
            chat: None,
            source: None,
            text_only: false,
            carried: None,
            map: None,
            progress: None,
        }
    }
}

/// Writes a text model's Hugging Face folder: `config.json`, `model.safetensors` (f32; sharded
/// with `model.safetensors.index.json` above [`SHARD_BYTES`]) and, when given, the tokenizer
/// files. `out` must not exist. See [`save`].
pub fn save_folder(
    model: &Model,
    tok: Option<&Tok>,
    chat: Option<&ChatTemplate>,
    out: &Path,
) -> Result<()> {
    save_folder_as(model, tok, chat, out, DType::F32)
}

/// [`save_folder`] with every tensor stored in `dtype` (f32, bf16 or f16; config.json's
/// `torch_dtype` says which): bf16 halves the folder, as Hugging Face publishes most models.
pub fn save_folder_as(
    model: &Model,
    tok: Option<&Tok>,
    chat: Option<&ChatTemplate>,
    out: &Path,
    dtype: DType,
) -> Result<()> {
    let opts = FolderSave {
        dtype,
        tok,
        chat,
        ..Default::default()
    };
    save(model, out, &opts)
}

/// Writes `model` as a Hugging Face folder at `out`, which must not exist, as `opts` says.
pub fn save(model: &Model, out: &Path, opts: &FolderSave) -> Result<()> {
    let dtype_name = match opts.dtype {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        other => {
            return Err(ModelError::Input(format!(
                "safetensors folders are written in f32, bf16 or f16, not {}",
                other.as_str()
            )))
        }
    };
    if out.exists() {
        return Err(ModelError::Input(format!(
            "{} already exists",
            out.display()
        )));
    }
    let whole = opts
        .source
        .filter(|s| s.multimodal.is_some() && !opts.text_only);
    let progress = opts.progress.unwrap_or(&|_, _| {});
    let text = model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| {
            let lazy = Lazy::mapped(&n, t, opts.map);
            (n, lazy)
        })
        .collect();
    let text = crate::weights::fuse(&model.cfg, crate::weights::Layout::Folder, text)?;
    atomically(out, |tmp| {
        match whole {
            Some(src) => {
                write_json(
                    tmp,
                    "config.json",
                    &multimodal_config(src, model, dtype_name)?,
                )?;
                let st = src.mmap()?;
                write_tensors(
                    tmp,
                    multimodal_tensors(&st, model, text, opts.carried)?,
                    opts.dtype,
                    progress,
                )?;
                copy_files(src, tmp, &MULTIMODAL_FILES)?;
            }
            None => {
                let mut config = model.cfg.to_hf_json();
                config["torch_dtype"] = dtype_name.into();
                // The tokenizer's ids, which transformers otherwise takes from the
                // architecture's defaults (OLMo 3's 50279, whatever the vocabulary).
                if let Some(tok) = opts.tok {
                    config["bos_token_id"] = tok.bos_id.into();
                    config["eos_token_id"] = tok.eos_id.into();
                }
                write_json(tmp, "config.json", &config)?;
                let tensors = text
                    .into_iter()
                    .map(|(n, t)| (crate::weights::file_name(model.cfg.arch, &n), t))
                    .collect();
                write_tensors(tmp, tensors, opts.dtype, progress)?;
                if let Some(tok) = opts.tok {
                    write_tokenizer(tmp, tok, opts.chat)?;
                }
            }
        }
        match opts.source {
            Some(src) => copy_files(src, tmp, &GENERATION_FILES),
            None => Ok(()),
        }
    })
}

/// Fills a temporary sibling folder of `out` with `fill`, then renames it to `out`; on failure
/// the temporary folder is removed.
fn atomically(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    let stem = format!(".{name}.tmp-");
    // Temporary folders of runs that were killed (their process is gone) are removed, so
    // that their bytes do not count against the room the new one needs.
    if let Ok(entries) = std::fs::read_dir(parent) {
        for e in entries.flatten() {
            let pid = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(&stem)?.parse::<u32>().ok());
            let gone = pid.is_some_and(|p| {
                cfg!(target_os = "linux") && !Path::new(&format!("/proc/{p}")).exists()
            });
            if gone {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let tmp = parent.join(format!("{stem}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let _tracked = crate::scratch::create_dir(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let res = fill(&tmp).and_then(|()| {
        std::fs::rename(&tmp, out).map_err(|e| {
            if out.exists() {
                // Another process wrote it meanwhile (it did not exist when this one began).
                ModelError::Input(format!(
                    "{} was written by another process meanwhile; this one is not kept",
                    out.display()
                ))
            } else {
                ModelError::io(out, e)
            }
        })
    });
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res
}

fn write_json(dir: &Path, name: &str, v: &Value) -> Result<()> {
    let p = dir.join(name);
    let s = serde_json::to_string_pretty(v).expect("JSON values serialize");
    std::fs::write(&p, s).map_err(|e| ModelError::io(&p, e))
}

/// Those of `names` that the source folder holds, copied as they are.
fn copy_files(src: &HfFolder, dir: &Path, names: &[&str]) -> Result<()> {
    for name in names {
        let from = src.path.join(name);
        if from.is_file() {
            std::fs::copy(&from, dir.join(name)).map_err(|e| ModelError::io(&from, e))?;
        }
    }
    Ok(())
}

/// The tensors, floating-point ones in `dtype`, in safetensors files of at most
/// [`SHARD_BYTES`], with an index when there is more than one. Each tensor is computed,
/// converted and written in turn ([`write_safetensors`]), so that no second copy of the model
/// is held.
fn write_tensors(
    dir: &Path,
    tensors: Vec<(String, Lazy)>,
    dtype: DType,
    progress: &dyn Fn(u64, u64),
) -> Result<()> {
    let stored = |t: &Lazy| match t.dtype.is_float() {
        true => dtype,
        false => t.dtype,
    };
    let bytes = |t: &Lazy| t.dims.iter().product::<usize>() * stored(t).size_in_bytes();
    let mut shards: Vec<Vec<(String, Lazy)>> = vec![vec![]];
    let mut size = 0usize;
    for (n, t) in tensors {
        let b = bytes(&t);
        if size + b > SHARD_BYTES && !shards.last().expect("non-empty").is_empty() {
            shards.push(vec![]);
            size = 0;
        }
        size += b;
        shards.last_mut().expect("non-empty").push((n, t));
    }
    let count = shards.len();
    let total: usize = shards.iter().flatten().map(|(_, t)| bytes(t)).sum();
    // The temporary folder sits beside the output, on the same disk; the message names its
    // parent. 64 MB more for the files' headers, the tokenizer and the configuration.
    crate::space::ensure_room(total as u64 + (64 << 20), dir.parent().unwrap_or(dir))?;
    let mut weight_map = serde_json::Map::new();
    let mut done = 0u64;
    for (i, shard) in shards.into_iter().enumerate() {
        let name = if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", i + 1)
        };
        let mut shard_bytes = 0u64;
        for (n, t) in &shard {
            weight_map.insert(n.clone(), Value::String(name.clone()));
            shard_bytes += bytes(t) as u64;
        }
        let shard = shard
            .into_iter()
            .map(|(n, t)| {
                let (to, dims) = (stored(&t), t.dims.clone());
                let named = n.clone();
                let make = move || {
                    let t = t.get()?.to_dtype(to)?.to_device(&Device::Cpu)?;
                    // f16 tops out at 65,504: a larger weight would be written as infinity.
                    if to == DType::F16 && !finite(&t)? {
                        return Err(ModelError::Weights(format!(
                            "`{named}` has values beyond f16's range; write the folder in bf16 or f32"
                        )));
                    }
                    Ok(t)
                };
                (n, Lazy::new(dims, to, make))
            })
            .collect();
        let path = dir.join(&name);
        crate::weights::write_safetensors(&path, shard, &|b| progress(done + b, total as u64))?;
        done += shard_bytes;
    }
    if count > 1 {
        write_json(
            dir,
            "model.safetensors.index.json",
            &serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
        )?;
    }
    Ok(())
}

/// Whether every value of `t` is finite.
fn finite(t: &Tensor) -> Result<bool> {
    let top = t
        .to_dtype(DType::F32)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    Ok(top.is_finite())
}

/// tokenizer.json and a tokenizer_config.json with the special tokens and the chat template.
fn write_tokenizer(dir: &Path, tok: &Tok, chat: Option<&ChatTemplate>) -> Result<()> {
    let p = dir.join("tokenizer.json");
    tok.inner()
        .save(&p, false)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", p.display())))?;
    let name = |id: Option<u32>| id.and_then(|i| tok.token(i));
    let mut tc = serde_json::json!({
        "bos_token": name(tok.bos_id),
        "eos_token": name(tok.eos_id),
        "add_bos_token": tok.add_bos,
    });
    if let Some(c) = chat {
        tc["chat_template"] = Value::String(c.source().to_string());
    }
    write_json(dir, "tokenizer_config.json", &tc)
}

/// The multimodal source's config.json for `model`, its text model patched: the dtype where
/// the source names one (at the top level, else added there, and in each sub-configuration,
/// `text_config`, `vision_config`), and `tie_word_embeddings` at both levels as `model` ties
/// (weight orthogonalization unties the head; transformers reads either level). Any
/// other difference between `model`'s configuration and the source's is an error: the text
/// model's configuration is not rewritten.
fn multimodal_config(src: &HfFolder, model: &Model, dtype_name: &str) -> Result<Value> {
    let mut want = src.config()?;
    want.tie_word_embeddings = model.cfg.tie_word_embeddings;
    let same = serde_json::to_value(&want).ok() == serde_json::to_value(&model.cfg).ok();
    if !same {
        return Err(ModelError::Input(format!(
            "the model to write is not configured as {}'s text model; it cannot be written in that folder's layout",
            src.path.display()
        )));
    }
    let mut c = src.stored_config.clone();
    let set_dtype = |v: &mut Value, add: bool| {
        let Some(o) = v.as_object_mut() else { return };
        let mut named = false;
        for k in ["dtype", "torch_dtype"] {
            if let Some(d) = o.get_mut(k) {
                *d = dtype_name.into();
                named = true;
            }
        }
        if add && !named {
            o.insert("torch_dtype".into(), dtype_name.into());
        }
    };
    set_dtype(&mut c, true);
    if let Some(o) = c.as_object_mut() {
        for (k, v) in o.iter_mut() {
            if k.ends_with("_config") {
                set_dtype(v, false);
            }
        }
    }
    let tied = model.cfg.tie_word_embeddings;
    c["tie_word_embeddings"] = tied.into();
    c["text_config"]["tie_word_embeddings"] = tied.into();
    Ok(c)
}

/// The tensors of the multimodal source's folder (`st`, memory-mapped) with its text model's
/// replaced by `text`, `model`'s own (fused, under the source's names; a head `model` has
/// untied is added beside them). The others (vision tower, projector) are read from the
/// source when written, through `carried` when given.
fn multimodal_tensors<'a>(
    st: &'a MmapedSafetensors,
    model: &Model,
    text: Vec<(String, Lazy<'a>)>,
    carried: Option<TensorMap<'a>>,
) -> Result<Vec<(String, Lazy<'a>)>> {
    let names: HashSet<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
    let stored = stored_names(true, &names);
    let mut tensors: Vec<(String, Lazy)> = text
        .into_iter()
        .map(|(n, t)| (stored(&crate::weights::file_name(model.cfg.arch, &n)), t))
        .collect();
    let text: HashSet<&String> = tensors.iter().map(|(n, _)| n).collect();
    let mut rest: Vec<String> = names
        .iter()
        .filter(|n| !text.contains(n))
        .cloned()
        .collect();
    rest.sort();
    for n in rest {
        // Read once for its shape and dtype as candle loads it (u16 widened to u32), then
        // dropped: one tensor at a time, read again when written.
        let (dims, dtype) = {
            let t = st.load(&n, &Device::Cpu)?;
            (t.dims().to_vec(), t.dtype())
        };
        let name = n.clone();
        let make = move || {
            let t = st.load(&name, &Device::Cpu)?;
            match carried {
                Some(f) => f(&name, t),
                None => Ok(t),
            }
        };
        tensors.push((n, Lazy::new(dims, dtype, make)));
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary folder left by a killed run (its process gone) is removed when the same
    /// output is written again; one of a live process is left alone; a failed fill leaves
    /// nothing.
    #[test]
    fn folders_of_killed_runs_are_cleared() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("m");
        // Above Linux's largest process id (2^22): no such process.
        let dead = d.path().join(".m.tmp-4194400");
        let live = d.path().join(".m.tmp-1");
        for dir in [&dead, &live] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("model.safetensors"), b"partial").unwrap();
        }
        let failed = atomically(&out, |_| Err(ModelError::Input("stop".into())));
        assert!(failed.is_err() && !out.exists());
        if cfg!(target_os = "linux") {
            assert!(!dead.exists(), "the dead run's folder is removed");
        }
        assert!(live.exists(), "a live process's folder is kept");
        atomically(&out, |tmp| {
            std::fs::write(tmp.join("x"), b"1").map_err(|e| ModelError::io(tmp, e))
        })
        .unwrap();
        assert!(out.join("x").is_file());
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }
}
