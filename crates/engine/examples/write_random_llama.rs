//! Writes the deterministic random-weight models used by the fidelity tests, so the
//! golden script can run llama.cpp on exactly the bytes the tests build in memory.
//!
//! `cargo run -p embodios-engine --example write_random_llama -- OUT.gguf [TOKENIZER.gguf]`
//! writes the random llama; `... -- --arch gemma3|qwen2|phi2 OUT.gguf [TOKENIZER.gguf]`
//! writes the random model of another family (`mistral`: a llama declaring a window);
//! `... -- --shape tinyllama [--type F16] OUT.gguf [TOKENIZER.gguf]` writes a llama of
//! TinyLlama-1.1B's shape (vocabulary cut to 32000) with every matrix of one type, for
//! the benchmarks (`embodios quantize` turns it into the usual mixes). The tokenizer metadata comes from SmolLM2
//! by default (Gemma 3 270M for `gemma3`), found through `$EMBODIOS_MODEL_SMOLLM2_135M` /
//! `$EMBODIOS_MODEL_GEMMA3_270M`, `$EMBODIOS_CACHE/models/...` or `~/.cache/embodios/models/...`.

use std::path::PathBuf;

use embodios_engine::testmodel::{
    describe, describe_model, write_bench_llama, write_random_llama, write_random_model,
    BenchLlamaSpec, RandomLlamaSpec, RandomModelSpec,
};
use embodios_engine::Family;
use embodios_gguf::{GgmlType, GgufFile};
use embodios_testkit::TestModel;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut mistral = false;
    let mut bench: Option<BenchLlamaSpec> = None;
    if args.first().map(String::as_str) == Some("--shape") {
        let shape = args
            .get(1)
            .ok_or("--shape needs a name (tinyllama)")?
            .clone();
        if shape != "tinyllama" {
            return Err(format!("unknown shape {shape} (known: tinyllama)").into());
        }
        args.drain(..2);
        let mut ty = GgmlType::F16;
        if args.first().map(String::as_str) == Some("--type") {
            let name = args.get(1).ok_or("--type needs a type name")?;
            ty = [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0]
                .into_iter()
                .find(|t| t.name().eq_ignore_ascii_case(name))
                .ok_or(format!("--type {name}: use F32, F16 or Q8_0"))?;
            args.drain(..2);
        }
        bench = Some(BenchLlamaSpec::tinyllama_1_1b(ty));
    }
    let family = if args.first().map(String::as_str) == Some("--arch") {
        let name = args.get(1).ok_or("--arch needs a name")?.clone();
        args.drain(..2);
        // `mistral`: the llama architecture with a declared sliding window.
        mistral = name == "mistral";
        let arch = if mistral { "llama" } else { name.as_str() };
        Some(Family::from_arch(arch).ok_or(format!("unknown architecture {name}"))?)
    } else {
        None
    };
    let out = args
        .first()
        .ok_or("usage: write_random_llama [--arch NAME] OUT.gguf [TOKENIZER.gguf]")?
        .clone();
    let src = match args.get(1) {
        Some(p) => PathBuf::from(p),
        None if family == Some(Family::Gemma3) => TestModel::Gemma3.path(),
        None => TestModel::SmolLm2.path(),
    };
    let bytes = std::fs::read(&src)?;
    let file = GgufFile::parse(&bytes)?;
    let (gguf, what) = match (family, &bench) {
        (_, Some(spec)) => (
            write_bench_llama(spec, &file)?,
            format!("{} in {}", describe(&spec.shape), spec.weight_type.name()),
        ),
        (None, None) => {
            let spec = RandomLlamaSpec::default();
            (write_random_llama(&spec, &file)?, describe(&spec))
        }
        (Some(f), None) => {
            let spec = if mistral {
                RandomModelSpec::mistral_like()
            } else {
                RandomModelSpec::for_family(f)
            };
            (write_random_model(&spec, &file)?, describe_model(&spec))
        }
    };
    std::fs::write(&out, &gguf)?;
    eprintln!("{what} -> {out} ({} bytes)", gguf.len());
    Ok(())
}
