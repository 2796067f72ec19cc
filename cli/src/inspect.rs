//! `embodios inspect`: a GGUF file's metadata and tensor table, for people.

use embodios_gguf::{GgmlType, GgufFile, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Longest metadata string shown in full; longer ones are cut with their length noted.
const MAX_SHOWN_STRING_CHARS: usize = 120;
/// Array elements shown before the rest are summarised.
const MAX_SHOWN_ARRAY_ITEMS: usize = 6;

/// The report printed by `inspect`: header, metadata, tensors, totals per type.
pub fn report(file: &GgufFile<'_>, file_bytes: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "GGUF v{}  {} bytes  {} metadata keys  {} tensors  alignment {}  data at {}",
        file.version,
        file_bytes,
        file.metadata.len(),
        file.tensors.len(),
        file.alignment,
        file.data_offset
    );
    let _ = writeln!(out, "\nmetadata:");
    for (key, value) in &file.metadata {
        let _ = writeln!(out, "  {key} = {}", show_value(value));
    }

    let _ = writeln!(out, "\ntensors:");
    let name_width = file.tensors.iter().map(|t| t.name.len()).max().unwrap_or(4);
    let _ = writeln!(
        out,
        "  {:<name_width$}  {:<7}  {:<18}  {:>12}",
        "name", "type", "shape", "bytes"
    );
    let mut per_type: BTreeMap<GgmlType, (u64, u64, usize)> = BTreeMap::new();
    for t in &file.tensors {
        let shape = t
            .dims
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" x ");
        let _ = writeln!(
            out,
            "  {:<name_width$}  {:<7}  {:<18}  {:>12}",
            t.name,
            t.ty.name(),
            shape,
            t.data.len()
        );
        let entry = per_type.entry(t.ty).or_default();
        entry.0 += t.n_elements();
        entry.1 += t.data.len() as u64;
        entry.2 += 1;
    }

    let total_params: u64 = per_type.values().map(|v| v.0).sum();
    let total_bytes: u64 = per_type.values().map(|v| v.1).sum();
    let _ = writeln!(out, "\nby type:");
    for (ty, (params, bytes, count)) in &per_type {
        let bits_per_weight = *bytes as f64 * 8.0 / (*params).max(1) as f64;
        let _ = writeln!(
            out,
            "  {:<7} {:>4} tensors  {:>13} params  {:>12} bytes  {:.2} bits/weight",
            ty.name(),
            count,
            params,
            bytes,
            bits_per_weight
        );
    }
    let _ = writeln!(
        out,
        "  total   {:>4} tensors  {:>13} params  {:>12} bytes",
        file.tensors.len(),
        total_params,
        total_bytes
    );
    out
}

fn show_value(value: &Value<'_>) -> String {
    match value {
        Value::Str(bytes) => show_string(bytes),
        Value::Array(items) => {
            let elem = items.first().map(Value::type_name).unwrap_or("?");
            let shown: Vec<String> = items
                .iter()
                .take(MAX_SHOWN_ARRAY_ITEMS)
                .map(show_value)
                .collect();
            let more = if items.len() > MAX_SHOWN_ARRAY_ITEMS {
                ", …"
            } else {
                ""
            };
            format!("[{} x {elem}] [{}{more}]", items.len(), shown.join(", "))
        }
        Value::U8(v) => v.to_string(),
        Value::I8(v) => v.to_string(),
        Value::U16(v) => v.to_string(),
        Value::I16(v) => v.to_string(),
        Value::U32(v) => v.to_string(),
        Value::I32(v) => v.to_string(),
        Value::U64(v) => v.to_string(),
        Value::I64(v) => v.to_string(),
        Value::F32(v) => v.to_string(),
        Value::F64(v) => v.to_string(),
        Value::Bool(v) => v.to_string(),
    }
}

fn show_string(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let chars = text.chars().count();
    if chars <= MAX_SHOWN_STRING_CHARS {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(MAX_SHOWN_STRING_CHARS).collect();
        format!("{head:?}… ({chars} chars)")
    }
}

/// The CPU features the engine's kernels care about and the kernel set in use.
pub fn cpu_report() -> String {
    let mut out = String::new();
    let threads = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(out, "cpu: {threads} hardware threads");
    #[cfg(target_arch = "x86_64")]
    {
        let features = [
            ("sse2", std::is_x86_feature_detected!("sse2")),
            ("avx", std::is_x86_feature_detected!("avx")),
            ("avx2", std::is_x86_feature_detected!("avx2")),
            ("fma", std::is_x86_feature_detected!("fma")),
            ("f16c", std::is_x86_feature_detected!("f16c")),
            ("avx512f", std::is_x86_feature_detected!("avx512f")),
            ("avx512bw", std::is_x86_feature_detected!("avx512bw")),
            ("avx512vl", std::is_x86_feature_detected!("avx512vl")),
            ("avx512vnni", std::is_x86_feature_detected!("avx512vnni")),
        ];
        let list: Vec<String> = features
            .iter()
            .map(|(name, on)| format!("{name}{}", if *on { "+" } else { "-" }))
            .collect();
        let _ = writeln!(out, "features: {}", list.join(" "));
    }
    let _ = writeln!(out, "kernel set: {}", embodios_quant::active_kernel_set());
    // The batched (prefill) products of the legacy block formats go through panel
    // kernels: AVX-512 VNNI ones where the CPU and OS support them, else AVX2.
    let _ = writeln!(
        out,
        "panel kernels: {}",
        match embodios_quant::active_panel_set() {
            "avx512-vnni" => {
                "avx512-vnni (batched Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 and Q4_K/Q5_K/Q6_K products)"
            }
            "avx2" => "avx2 (batched Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 and Q4_K/Q5_K/Q6_K products)",
            other => other,
        }
    );
    out
}
