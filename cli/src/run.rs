//! `embodios run`: completes a raw prompt (no chat template) and streams the text.

use crate::args::{Args, Spec};
use crate::loaded::{self, Detok, Loaded, COMMON_VALUED};
use embodios_engine::{Generator, Sampler};
use embodios_host::StdClock;
use std::io::Write;

/// Tokens generated when `-n` is not given.
const DEFAULT_MAX_TOKENS: usize = 128;

const SPEC: Spec = Spec {
    valued: &[
        &COMMON_VALUED,
        &[
            ("--prompt", Some("-p")),
            ("--file", Some("-f")),
            ("--stop", None),
        ],
    ],
    switches: &["--json"],
    max_positional: 0,
};

pub fn main(raw: &[String]) -> Result<(), String> {
    let a = Args::parse(&SPEC, raw).map_err(|e| e.to_string())?;
    let path = a.required("--model").map_err(|e| e.to_string())?;
    let prompt = match (a.value("--prompt"), a.value("--file")) {
        (Some(p), None) => p.to_string(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).map_err(|e| format!("cannot read prompt file `{f}`: {e}"))?
        }
        (Some(_), Some(_)) => return Err("give the prompt with -p or -f, not both".into()),
        (None, None) => return Err("missing required option --prompt (or --file)".into()),
    };
    let max_tokens = a
        .parsed::<usize>("--max-tokens")
        .map_err(|e| e.to_string())?
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let sampling = loaded::sampler_config(&a).map_err(|e| e.to_string())?;
    let pool = loaded::thread_pool(&a)?;
    let context = a.parsed::<usize>("--ctx").map_err(|e| e.to_string())?;

    let bytes = loaded::read_file(path)?;
    let m = Loaded::new(path, &bytes, context)?;
    // As llama.cpp: BOS only where the file asks for it; special tokens in the text parse.
    let prompt_ids = m.tokenizer.encode(&prompt, true, true);

    let mut generator = Generator::new(Sampler::new(sampling), max_tokens);
    if let Some(stop) = a.value("--stop") {
        generator.stop.push(stop.to_string());
    }
    let mut session = m.model.new_session();
    let clock = StdClock::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let generation = generator
        .run(
            &m.model,
            &mut session,
            &Detok(&m.tokenizer),
            &prompt_ids,
            &pool,
            &clock,
            &mut |piece| {
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
                true
            },
        )
        .map_err(|e| e.to_string())?;
    let _ = writeln!(out);

    let stats = &generation.stats;
    if a.flag("--json") {
        let latencies_ms: Vec<f64> = stats
            .token_latencies_us
            .iter()
            .map(|&us| us as f64 / 1e3)
            .collect();
        let mut sorted_ms = latencies_ms.clone();
        sorted_ms.sort_by(f64::total_cmp);
        let line = serde_json::json!({
            "prompt_ids": prompt_ids,
            "ids": generation.tokens,
            "text": generation.text,
            "stop": format!("{:?}", generation.stop),
            "prompt_tokens": stats.prompt_tokens,
            "gen_tokens": stats.generated_tokens,
            "threads": embodios_engine::Parallel::threads(&pool),
            "ttft_ms": stats.ttft_us as f64 / 1e3,
            "prefill_tok_s": stats.prefill_tok_per_s(),
            "decode_tok_s": stats.decode_tok_per_s(),
            "itl_ms": latencies_ms,
            "itl_p50_ms": percentile(&sorted_ms, 0.50),
            "itl_p99_ms": percentile(&sorted_ms, 0.99),
            "itl_stddev_ms": stddev(&latencies_ms),
            "peak_rss_kb": peak_rss_kb(),
            "model_copy_kb": bytes.copied_len() / 1024,
        });
        let _ = writeln!(out, "{line}");
    } else {
        eprintln!(
            "[{} prompt tokens, {} generated; ttft {:.1} ms; prefill {:.1} tok/s; decode {:.1} tok/s; {} threads]",
            stats.prompt_tokens,
            stats.generated_tokens,
            stats.ttft_us as f64 / 1e3,
            stats.prefill_tok_per_s(),
            stats.decode_tok_per_s(),
            embodios_engine::Parallel::threads(&pool),
        );
    }
    Ok(())
}

/// The `q` quantile (nearest rank) of sorted values; 0 for none.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn stddev(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64;
    var.sqrt()
}

/// The process's peak resident memory (Linux `VmHWM`), in KiB; 0 if unknown.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{percentile, stddev};

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn stddev_is_the_sample_deviation() {
        assert!((stddev(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) - 2.138).abs() < 1e-3);
        assert_eq!(stddev(&[1.0]), 0.0);
    }
}
