//! Prefill CPU time of a batch of prompt tokens, with and without `embodios-quant`'s
//! panel kernels, interleaved in one process (the machine is shared, so CPU time, summed
//! over all threads of the process, and the best of several rounds):
//! `cargo run --release -p embodios-engine --example bench_prefill -- MODEL.gguf [THREADS] [TOKENS] [ROUNDS] [panels]`
//! (`panels`: only the panel runs, for profiling).

use std::time::Instant;

use embodios_engine::{Model, ModelOptions};
use embodios_gguf::GgufFile;
use embodios_host::ThreadPool;

/// CPU seconds used so far by all threads of this process (Linux schedstat).
fn process_cpu() -> f64 {
    let mut ns = 0.0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
    }
    ns / 1e9
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .ok_or("usage: bench_prefill MODEL.gguf [THREADS] [TOKENS] [ROUNDS]")?;
    let threads: usize = args.get(1).map_or(Ok(2), |s| s.parse())?;
    let n: usize = args.get(2).map_or(Ok(64), |s| s.parse())?;
    let rounds: usize = args.get(3).map_or(Ok(5), |s| s.parse())?;
    let bytes = std::fs::read(path)?;
    let file = GgufFile::parse(&bytes)?;
    let model = Model::load(
        &file,
        ModelOptions {
            max_context: Some(512),
        },
    )?;
    let pool = ThreadPool::new(threads)?;
    // Any ids inside every vocabulary work for timing.
    let prompt: Vec<u32> = (0..n as u32).map(|i| 100 + (i * 7919) % 20000).collect();
    let only_panels = args.get(4).map(String::as_str) == Some("panels");
    let modes: &[(usize, bool)] = if only_panels {
        &[(0, true)]
    } else {
        &[(0, true), (1, false)]
    };
    let mut best = [(f64::INFINITY, f64::INFINITY); 2];
    for _ in 0..rounds {
        for &(k, panels) in modes {
            embodios_quant::disable_panels(!panels);
            let mut session = model.new_session();
            let (c0, t0) = (process_cpu(), Instant::now());
            model.forward(&mut session, &prompt, &pool)?;
            let (cpu, wall) = (process_cpu() - c0, t0.elapsed().as_secs_f64());
            best[k] = (best[k].0.min(cpu), best[k].1.min(wall));
        }
    }
    embodios_quant::disable_panels(false);
    for &(k, name) in [(0, "panels"), (1, "per-row kernels")]
        .iter()
        .take(modes.len())
    {
        let (cpu, wall) = best[k];
        println!(
            "{name:>16}: {n} tokens, {threads} threads: best CPU {:.1} ms ({:.0} tok/s per CPU-second), best wall {:.1} ms ({:.0} tok/s)",
            cpu * 1e3,
            n as f64 / cpu,
            wall * 1e3,
            n as f64 / wall
        );
    }
    println!("panel set: {}", embodios_quant::active_panel_set());
    Ok(())
}
