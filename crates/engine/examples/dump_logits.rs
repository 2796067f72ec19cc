//! Debug aid: evaluates token ids (one `forward` call per argument group) on a model and
//! writes the last logits as little-endian f32 to a file.
//!
//! `cargo run --release -p embodios-engine --example dump_logits -- MODEL.gguf OUT.bin 1,2,3 [4 ...]`

use embodios_engine::{Model, ModelOptions};
use embodios_gguf::GgufFile;
use embodios_host::ThreadPool;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err("usage: dump_logits MODEL.gguf OUT.bin IDS[,IDS...] [IDS...]".into());
    }
    let bytes = std::fs::read(&args[0])?;
    let file = GgufFile::parse(&bytes)?;
    let model = Model::load(
        &file,
        ModelOptions {
            max_context: Some(256),
        },
    )?;
    let pool = ThreadPool::new(2)?;
    let mut session = model.new_session();
    let mut last = Vec::new();
    for group in &args[2..] {
        let ids: Vec<u32> = group
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()?;
        last = model.forward(&mut session, &ids, &pool)?.to_vec();
    }
    let out: Vec<u8> = last.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&args[1], out)?;
    Ok(())
}
