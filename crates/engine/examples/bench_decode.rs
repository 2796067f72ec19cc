//! Measures prefill and greedy decode speed on a GGUF model with a thread pool.
//!
//! `cargo run --release -p embodios-engine --example bench_decode -- MODEL.gguf [THREADS] [TOKENS] [scalar]`
//! (`scalar` disables `embodios-quant`'s SIMD kernels).

use std::time::Instant;

use embodios_engine::sampler::argmax;
use embodios_engine::{Model, ModelOptions};
use embodios_gguf::GgufFile;
use embodios_host::ThreadPool;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .ok_or("usage: bench_decode MODEL.gguf [THREADS] [TOKENS]")?;
    let threads: usize = args.get(1).map_or(Ok(2), |s| s.parse())?;
    let n: usize = args.get(2).map_or(Ok(64), |s| s.parse())?;
    if args.get(3).map(String::as_str) == Some("scalar") {
        embodios_quant::force_scalar(true);
    }
    let bytes = std::fs::read(path)?;
    let file = GgufFile::parse(&bytes)?;
    let model = Model::load(
        &file,
        ModelOptions {
            max_context: Some(512),
        },
    )?;
    let pool = ThreadPool::new(threads)?;
    let mut session = model.new_session();
    // "The capital of France is" in SmolLM2's vocabulary (any ids work for timing).
    let prompt = [504u32, 3575, 282, 4649, 314];
    let t0 = Instant::now();
    let mut tok = argmax(model.forward(&mut session, &prompt, &pool)?).unwrap_or(0) as u32;
    let prefill = t0.elapsed();
    let t1 = Instant::now();
    for _ in 0..n {
        tok = argmax(model.forward(&mut session, &[tok], &pool)?).unwrap_or(0) as u32;
    }
    let decode = t1.elapsed();
    println!(
        "{} kernels, {threads} threads: prefill {} tokens in {:.1} ms ({:.1} tok/s); decode {n} tokens in {:.1} ms ({:.2} tok/s)",
        embodios_quant::active_kernel_set(),
        prompt.len(),
        prefill.as_secs_f64() * 1e3,
        prompt.len() as f64 / prefill.as_secs_f64(),
        decode.as_secs_f64() * 1e3,
        n as f64 / decode.as_secs_f64()
    );
    Ok(())
}
