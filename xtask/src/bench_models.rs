//! The models `cargo xtask bench` measures: the shipped ones (fetched), SmolLM2 requantized
//! with `embodios quantize`, and a TinyLlama-1.1B-shaped llama with random weights written
//! by the engine's test-model writer. Made ones are cached (never in the repository) under
//! `<cache>/bench/models`; delete a file there to have it made again.

use crate::models;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a bench model is, for the targets of issue 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    SmolLm2,
    TinyLlama,
    Other,
}

/// One model as the report names it.
#[derive(Clone, Debug)]
pub struct BenchModel {
    pub name: String,
    pub path: PathBuf,
    pub kind: Kind,
    /// Quant mix label (`Q4_K_M`, …) or empty for a file given by path.
    pub quant: String,
}

/// The named models, in report order: (name, what it is).
pub const NAMES: &[(&str, &str)] = &[
    ("smollm2-135m", "SmolLM2-135M-Instruct Q4_1, as shipped"),
    (
        "smollm2-135m-q8_0",
        "SmolLM2-135M-Instruct requantized to Q8_0 by `embodios quantize`",
    ),
    (
        "smollm2-135m-q4_k_m",
        "SmolLM2-135M-Instruct requantized to Q4_K_M by `embodios quantize`",
    ),
    ("gemma3-270m", "Gemma 3 270M Q4_K_M, as shipped"),
    (
        "tinyllama-1.1b-q4_k_m",
        "random weights in TinyLlama-1.1B's shape, Q4_K_M",
    ),
    (
        "tinyllama-1.1b-q8_0",
        "random weights in TinyLlama-1.1B's shape, Q8_0",
    ),
];

fn bench_models_dir() -> Result<PathBuf, String> {
    let dir = models::cache_dir().join("bench").join("models");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// `all`, a name from [`NAMES`], or a GGUF file; makes what is missing.
pub fn resolve(name: &str, embodios: &Path) -> Result<Vec<BenchModel>, String> {
    if name == "all" {
        return NAMES
            .iter()
            .map(|(n, _)| resolve_one(n, embodios))
            .collect();
    }
    resolve_one(name, embodios).map(|m| vec![m])
}

fn resolve_one(name: &str, embodios: &Path) -> Result<BenchModel, String> {
    let named = |path: PathBuf, kind: Kind, quant: &str| BenchModel {
        name: name.to_string(),
        path,
        kind,
        quant: quant.to_string(),
    };
    let smollm2 = || models::fetch(models::find("smollm2-135m")?);
    match name {
        "smollm2-135m" => Ok(named(smollm2()?, Kind::SmolLm2, "Q4_1")),
        "gemma3-270m" => Ok(named(
            models::fetch(models::find("gemma3-270m")?)?,
            Kind::Other,
            "Q4_K_M",
        )),
        "smollm2-135m-q8_0" | "smollm2-135m-q4_k_m" => {
            let ty = if name.ends_with("q8_0") {
                "Q8_0"
            } else {
                "Q4_K_M"
            };
            let out = bench_models_dir()?.join(format!("SmolLM2-135M-Instruct.{ty}.gguf"));
            if !out.is_file() {
                quantize(embodios, &smollm2()?, &out, ty)?;
            }
            Ok(named(out, Kind::SmolLm2, ty))
        }
        "tinyllama-1.1b-q4_k_m" | "tinyllama-1.1b-q8_0" => {
            let (ty, kind) = if name.ends_with("q8_0") {
                ("Q8_0", Kind::Other)
            } else {
                ("Q4_K_M", Kind::TinyLlama)
            };
            let dir = bench_models_dir()?;
            let out = dir.join(format!("random-tinyllama-1.1b-shape.{ty}.gguf"));
            if !out.is_file() {
                let f16 = dir.join("random-tinyllama-1.1b-shape.F16.gguf");
                if !f16.is_file() {
                    write_tinyllama(&f16, &smollm2()?)?;
                }
                quantize(embodios, &f16, &out, ty)?;
            }
            Ok(named(out, kind, ty))
        }
        _ => {
            let path = PathBuf::from(name);
            if !path.is_file() {
                let known: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "`{name}` is neither a bench model ({}, all) nor a file",
                    known.join(", ")
                ));
            }
            let file_name = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.to_string());
            Ok(BenchModel {
                name: file_name,
                path,
                kind: Kind::Other,
                quant: String::new(),
            })
        }
    }
}

fn quantize(embodios: &Path, src: &Path, out: &Path, ty: &str) -> Result<(), String> {
    eprintln!(
        "xtask: making {} ({ty}) with embodios quantize",
        out.display()
    );
    let status = Command::new(embodios)
        .arg("quantize")
        .arg(src)
        .arg(out)
        .args(["--type", ty])
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("running embodios quantize: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`embodios quantize {} {} --type {ty}` failed ({status})",
            src.display(),
            out.display()
        ))
    }
}

/// Runs the engine's `write_random_llama` example (release) with `args` before OUT and
/// the tokenizer source; writes to a partial file renamed when complete.
pub fn write_random(out: &Path, extra: &[&str], tokenizer: &Path) -> Result<(), String> {
    let partial = out.with_extension("gguf.partial");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(crate::workspace_root())
        .args(["run", "-q", "--release", "-p", "embodios-engine"])
        .args(["--example", "write_random_llama", "--"])
        .args(extra)
        .arg(&partial)
        .arg(tokenizer)
        .status()
        .map_err(|e| format!("running write_random_llama: {e}"))?;
    if !status.success() {
        return Err(format!("write_random_llama failed ({status})"));
    }
    std::fs::rename(&partial, out).map_err(|e| format!("{}: {e}", out.display()))
}

fn write_tinyllama(out: &Path, tokenizer: &Path) -> Result<(), String> {
    eprintln!(
        "xtask: writing a random TinyLlama-1.1B-shaped llama (F16, 2.2 GB) to {}",
        out.display()
    );
    write_random(out, &["--shape", "tinyllama", "--type", "F16"], tokenizer)
}

/// The engine tests' tiny random llama (2 layers, width 64), for kernel rows under TCG.
pub fn tiny_random() -> Result<PathBuf, String> {
    let out = bench_models_dir()?.join("random-tiny-llama.gguf");
    if !out.is_file() {
        write_random(&out, &[], &models::fetch(models::find("smollm2-135m")?)?)?;
    }
    Ok(out)
}
