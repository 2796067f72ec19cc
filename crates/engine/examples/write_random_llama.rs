//! Writes the deterministic random-weight llama used by the fidelity tests, so the
//! golden script can run llama.cpp on exactly the bytes the tests build in memory.
//!
//! `cargo run -p embodios-engine --example write_random_llama -- OUT.gguf [TOKENIZER.gguf]`
//! (the tokenizer metadata comes from SmolLM2 by default: `$EMBODIOS_MODEL_SMOLLM2_135M`,
//! `$EMBODIOS_CACHE/models/...` or `~/.cache/embodios/models/...`).

use std::path::PathBuf;

use embodios_engine::testmodel::{describe, write_random_llama, RandomLlamaSpec};
use embodios_gguf::GgufFile;

fn smollm2() -> Option<PathBuf> {
    let file = "SmolLM2-135M-Instruct.Q4_1.gguf";
    let mut c = Vec::new();
    if let Ok(p) = std::env::var("EMBODIOS_MODEL_SMOLLM2_135M") {
        c.push(PathBuf::from(p));
    }
    if let Ok(p) = std::env::var("EMBODIOS_CACHE") {
        c.push(PathBuf::from(p).join("models").join(file));
    }
    if let Ok(h) = std::env::var("HOME") {
        c.push(PathBuf::from(h).join(".cache/embodios/models").join(file));
    }
    c.into_iter().find(|p| p.is_file())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .ok_or("usage: write_random_llama OUT.gguf [TOKENIZER.gguf]")?;
    let src = match args.next() {
        Some(p) => PathBuf::from(p),
        None => smollm2().ok_or("model not found: run `cargo xtask fetch-model`")?,
    };
    let bytes = std::fs::read(&src)?;
    let file = GgufFile::parse(&bytes)?;
    let spec = RandomLlamaSpec::default();
    let gguf = write_random_llama(&spec, &file)?;
    std::fs::write(&out, &gguf)?;
    eprintln!("{} -> {out} ({} bytes)", describe(&spec), gguf.len());
    Ok(())
}
