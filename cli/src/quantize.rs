//! `embodios quantize`: rewrites a GGUF model with other weight types, using the engine's
//! own quantizers (every tensor is dequantized to f32, then quantized again).
//!
//! The presets follow llama.cpp's `llama-quantize` file types (the same `general.file_type`
//! numbers and, for the K-quant mixes, the same choice of type per tensor): only weight
//! matrices (2-D tensors named `*.weight`, not norms) change; the output projection (or
//! the token embedding when the output is tied to it) gets Q6_K in quantized mixes other
//! than Q8_0; Q4_K_M / Q5_K_M give Q6_K to `attn_v` and `ffn_down` in the layers where
//! extra bits pay most; and a type whose block does not divide a tensor's rows falls back
//! to a 32-element type (Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0, else F16). Metadata is copied
//! unchanged except `general.file_type`.

use crate::args::{Args, Spec};
use crate::loaded;
use embodios_gguf::{GgmlType, GgufFile, GgufWriter, OwnedValue, WriteError};
use embodios_quant::QuantError;
use std::fmt;

const SPEC: Spec = Spec {
    valued: &[&[("--type", Some("-t")), ("--threads", None)]],
    switches: &["--dry-run"],
    max_positional: 2,
};

/// A `--type` choice: a file type of llama.cpp's `llama-quantize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    /// The `general.file_type` value (llama.cpp's `llama_ftype`).
    pub file_type: u32,
    /// The type of weight matrices no rule below singles out.
    pub base: GgmlType,
    mix: Mix,
}

/// Which per-tensor rules a preset applies on top of its base type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mix {
    /// Every weight matrix gets the base type (float presets).
    Plain,
    /// Base type, output (or tied embedding) Q6_K unless the base is Q8_0.
    Legacy,
    /// Q4_K_S: also Q5_K for the first four `attn_v` and the first eighth of `ffn_down`.
    Q4KS,
    /// Q4_K_M / Q5_K_M: also Q6_K for `attn_v` and `ffn_down` where [`use_more_bits`].
    KM,
}

/// Every preset `--type` accepts.
pub const PRESETS: [Preset; 12] = [
    preset("F32", 0, GgmlType::F32, Mix::Plain),
    preset("F16", 1, GgmlType::F16, Mix::Plain),
    preset("BF16", 32, GgmlType::BF16, Mix::Plain),
    preset("Q4_0", 2, GgmlType::Q4_0, Mix::Legacy),
    preset("Q4_1", 3, GgmlType::Q4_1, Mix::Legacy),
    preset("Q5_0", 8, GgmlType::Q5_0, Mix::Legacy),
    preset("Q5_1", 9, GgmlType::Q5_1, Mix::Legacy),
    preset("Q8_0", 7, GgmlType::Q8_0, Mix::Legacy),
    preset("Q4_K_S", 14, GgmlType::Q4_K, Mix::Q4KS),
    preset("Q4_K_M", 15, GgmlType::Q4_K, Mix::KM),
    preset("Q5_K_M", 17, GgmlType::Q5_K, Mix::KM),
    preset("Q6_K", 18, GgmlType::Q6_K, Mix::Legacy),
];

const fn preset(name: &'static str, file_type: u32, base: GgmlType, mix: Mix) -> Preset {
    Preset {
        name,
        file_type,
        base,
        mix,
    }
}

/// The preset named `name` (case-insensitive).
pub fn find_preset(name: &str) -> Result<Preset, QuantizeError> {
    PRESETS
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .copied()
        .ok_or_else(|| QuantizeError::UnknownType(name.to_string()))
}

/// Why a model could not be quantized.
#[derive(Debug)]
pub enum QuantizeError {
    /// `--type` named no preset.
    UnknownType(String),
    /// A tensor's stored type cannot be dequantized here.
    UnsupportedSource { tensor: String, ty: GgmlType },
    /// Dequantizing or quantizing a tensor failed.
    Quant { tensor: String, source: QuantError },
    /// Building the output file failed.
    Write(WriteError),
}

impl fmt::Display for QuantizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantizeError::UnknownType(name) => {
                let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
                write!(
                    f,
                    "unknown quantization type `{name}`; supported: {}",
                    names.join(", ")
                )
            }
            QuantizeError::UnsupportedSource { tensor, ty } => write!(
                f,
                "tensor `{tensor}` is stored as {ty}, which cannot be dequantized"
            ),
            QuantizeError::Quant { tensor, source } => {
                write!(f, "converting tensor `{tensor}` failed: {source}")
            }
            QuantizeError::Write(e) => write!(f, "building the output file failed: {e}"),
        }
    }
}

impl std::error::Error for QuantizeError {}

impl From<WriteError> for QuantizeError {
    fn from(e: WriteError) -> Self {
        QuantizeError::Write(e)
    }
}

/// llama.cpp's choice of layers that get more bits in the `_M` mixes: the first and last
/// eighth of the layers and every third one in between.
fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// Whether llama.cpp's quantizer converts this tensor at all: 2-D or larger weight
/// matrices, not norms, not the MoE router.
fn is_weight_matrix(name: &str, dims: &[u64]) -> bool {
    dims.len() >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
}

/// The layer number of a `blk.N.…` tensor: llama.cpp counts layers in layer order, not
/// in the order the file lists the tensors.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The 32-element type llama.cpp uses when a 256-element type does not fit a row.
fn fallback(ty: GgmlType, row_len: u64) -> GgmlType {
    if row_len.is_multiple_of(ty.block_elems() as u64) {
        return ty;
    }
    let smaller = match ty {
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    if row_len.is_multiple_of(smaller.block_elems() as u64) {
        smaller
    } else {
        GgmlType::F16
    }
}

/// The type of every tensor of `file` under `preset`, in file order (None: copied as it is).
pub fn plan(file: &GgufFile<'_>, preset: Preset) -> Vec<Option<GgmlType>> {
    let tied = file.tensor("output.weight").is_none();
    let n_layer = file
        .architecture()
        .and_then(|a| file.get_u32(&format!("{a}.block_count")))
        .map(|n| n as usize)
        .unwrap_or_else(|| {
            file.tensors
                .iter()
                .filter(|t| t.name.contains("ffn_down"))
                .count()
        });
    let n_attn_v = file
        .tensors
        .iter()
        .filter(|t| t.name.contains("attn_v.weight") || t.name.contains("attn_qkv.weight"))
        .count();
    let (mut i_attn_v, mut i_ffn_down) = (0usize, 0usize);
    let quantized = !matches!(preset.mix, Mix::Plain);
    file.tensors
        .iter()
        .map(|t| {
            if !is_weight_matrix(t.name, &t.dims) {
                return None;
            }
            let row_len = t.row_len();
            let mut ty = preset.base;
            if !quantized {
                return Some(ty);
            }
            let is_output = t.name == "output.weight" || (tied && t.name == "token_embd.weight");
            if is_output {
                // Rows no block of the base type divides get Q8_0; then the usual fallback.
                let ty = if !row_len.is_multiple_of(ty.block_elems() as u64) {
                    GgmlType::Q8_0
                } else if ty != GgmlType::Q8_0 {
                    GgmlType::Q6_K
                } else {
                    ty
                };
                return Some(fallback(ty, row_len));
            }
            if t.name.contains("attn_v.weight") || t.name.contains("attn_qkv.weight") {
                let i = layer_of(t.name).unwrap_or(i_attn_v);
                i_attn_v += 1;
                if t.name.contains("attn_qkv.weight") {
                    ty = match preset.name {
                        "Q4_K_M" => GgmlType::Q5_K,
                        "Q5_K_M" => GgmlType::Q6_K,
                        _ => ty,
                    };
                } else {
                    match preset.mix {
                        Mix::KM if use_more_bits(i, n_attn_v) => ty = GgmlType::Q6_K,
                        Mix::Q4KS if i < 4 => ty = GgmlType::Q5_K,
                        _ => {}
                    }
                }
            } else if t.name.contains("ffn_down") {
                let i = layer_of(t.name).unwrap_or(i_ffn_down);
                i_ffn_down += 1;
                match preset.mix {
                    Mix::KM if use_more_bits(i, n_layer) => ty = GgmlType::Q6_K,
                    Mix::Q4KS if i < n_layer / 8 => ty = GgmlType::Q5_K,
                    _ => {}
                }
            }
            Some(fallback(ty, row_len))
        })
        .collect()
}

/// Converts `n` elements of `data` (type `from`) to f32.
fn dequantize(
    name: &str,
    from: GgmlType,
    data: &[u8],
    n: usize,
) -> Result<Vec<f32>, QuantizeError> {
    if !embodios_quant::is_supported(from) {
        return Err(QuantizeError::UnsupportedSource {
            tensor: name.to_string(),
            ty: from,
        });
    }
    let mut out = vec![0f32; n];
    embodios_quant::dequantize_row(from, data, &mut out).map_err(|source| {
        QuantizeError::Quant {
            tensor: name.to_string(),
            source,
        }
    })?;
    Ok(out)
}

/// Quantizes `values` (rows of `row_len`) to `to`, rows split over `threads` threads.
fn quantize(
    name: &str,
    to: GgmlType,
    values: &[f32],
    row_len: usize,
    threads: usize,
) -> Result<Vec<u8>, QuantizeError> {
    let err = |source| QuantizeError::Quant {
        tensor: name.to_string(),
        source,
    };
    let row_bytes = embodios_quant::row_bytes(to, row_len).map_err(err)?;
    let n_rows = values.len() / row_len.max(1);
    let mut out = vec![0u8; row_bytes * n_rows];
    let rows_per_thread = n_rows.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let jobs: Vec<_> = out
            .chunks_mut(rows_per_thread * row_bytes)
            .zip(values.chunks(rows_per_thread * row_len))
            .map(|(dst, src)| {
                s.spawn(move || -> Result<(), QuantError> {
                    for (d, r) in dst.chunks_mut(row_bytes).zip(src.chunks(row_len)) {
                        embodios_quant::quantize_row(to, r, d)?;
                    }
                    Ok(())
                })
            })
            .collect();
        jobs.into_iter()
            .try_for_each(|j| j.join().expect("quantizer threads do not panic"))
    })
    .map_err(err)?;
    Ok(out)
}

/// The bytes of `file` rewritten with `preset`'s types, and a line per converted tensor.
pub fn quantize_file(
    file: &GgufFile<'_>,
    preset: Preset,
    threads: usize,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<u8>, QuantizeError> {
    let mut w = GgufWriter::new();
    w.set_version(file.version)?;
    let mut wrote_file_type = false;
    for (key, value) in &file.metadata {
        let owned = if *key == "general.file_type" {
            wrote_file_type = true;
            OwnedValue::U32(preset.file_type)
        } else {
            match value.to_owned_value() {
                Some(v) => v,
                None => continue,
            }
        };
        w.add_metadata(key, owned)?;
    }
    if !wrote_file_type {
        w.add_metadata("general.file_type", OwnedValue::U32(preset.file_type))?;
    }
    for (t, target) in file.tensors.iter().zip(plan(file, preset)) {
        let data = match target {
            None => t.data.to_vec(),
            Some(ty) => {
                let n = t.n_elements() as usize;
                let values = dequantize(t.name, t.ty, t.data, n)?;
                log(&format!(
                    "{:<28} {:>6} -> {}",
                    t.name,
                    t.ty.name(),
                    ty.name()
                ));
                let bytes = quantize(t.name, ty, &values, t.row_len() as usize, threads)?;
                w.add_tensor(t.name, &t.dims, ty, bytes)?;
                continue;
            }
        };
        w.add_tensor(t.name, &t.dims, t.ty, data)?;
    }
    Ok(w.finish())
}

/// `embodios quantize IN OUT --type TYPE [--threads N]`; with `--dry-run` (and no OUT),
/// prints the type each tensor would get.
pub fn main(raw: &[String]) -> Result<(), String> {
    let a = Args::parse(&SPEC, raw).map_err(|e| e.to_string())?;
    let preset =
        find_preset(a.required("--type").map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    if a.flag("--dry-run") {
        let [input] = a.positional.as_slice() else {
            return Err("usage: embodios quantize IN.gguf --type TYPE --dry-run".into());
        };
        let bytes = loaded::read_file(input)?;
        let file = loaded::parse(input, &bytes)?;
        for (t, ty) in file.tensors.iter().zip(plan(&file, preset)) {
            println!("{} {}", t.name, ty.unwrap_or(t.ty).name());
        }
        return Ok(());
    }
    let (input, output) = match a.positional.as_slice() {
        [i, o] => (i.as_str(), o.as_str()),
        _ => return Err("usage: embodios quantize IN.gguf OUT.gguf --type TYPE".into()),
    };
    let threads = a
        .parsed::<usize>("--threads")
        .map_err(|e| e.to_string())?
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if std::path::Path::new(input) == std::path::Path::new(output) {
        return Err("the output file must differ from the input file".into());
    }
    let bytes = loaded::read_file(input)?;
    let file = loaded::parse(input, &bytes)?;
    let out = quantize_file(&file, preset, threads, &mut |line| eprintln!("{line}"))
        .map_err(|e| e.to_string())?;
    // Written beside the target and renamed, so a failed run leaves no half file.
    let partial = format!("{output}.partial");
    std::fs::write(&partial, &out).map_err(|e| format!("cannot write `{partial}`: {e}"))?;
    std::fs::rename(&partial, output).map_err(|e| format!("cannot write `{output}`: {e}"))?;
    eprintln!(
        "{input} ({} bytes) -> {output} ({} bytes), {}",
        bytes.len(),
        out.len(),
        preset.name
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallbacks_keep_rows_whole() {
        assert_eq!(fallback(GgmlType::Q4_K, 576), GgmlType::Q5_0);
        assert_eq!(fallback(GgmlType::Q6_K, 576), GgmlType::Q8_0);
        assert_eq!(fallback(GgmlType::Q4_K, 1536), GgmlType::Q4_K);
        assert_eq!(fallback(GgmlType::Q8_0, 48), GgmlType::F16);
    }

    #[test]
    fn unknown_types_name_the_choices() {
        let e = find_preset("Q9_9").unwrap_err().to_string();
        assert!(e.contains("`Q9_9`") && e.contains("Q4_K_M"), "{e}");
        assert_eq!(find_preset("q8_0").unwrap().file_type, 7);
    }
}
