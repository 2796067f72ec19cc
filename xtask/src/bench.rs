//! `cargo xtask bench`: EMBODIOS's host CLI side by side with llama.cpp on the same GGUF
//! files and thread counts, interleaved round by round, written to `docs/BENCHMARKS.md`.
//!
//! llama.cpp runs through llama-cpp-python in a virtual environment outside the
//! repository (`scripts/bench/llama_cpp_driver.py` keeps one process per model and thread
//! count and times a round whenever asked); EMBODIOS runs `embodios run --json` once per
//! round. Each figure is the median over the rounds, with the spread (min–max) beside it.

use crate::{deps, models, workspace_root};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The fixed workload: a prompt of 64 tokens (in SmolLM2's vocabulary), then 128 greedy
/// tokens.
const GEN_TOKENS: usize = 128;
const PROMPT: &str = "The history of computing is a story of people who wanted machines to think \
faster than they could. Early engineers built calculators from gears and levers, then from \
relays and vacuum tubes. Each generation made the machines smaller, cheaper and more \
reliable, until a computer fit on a single chip. Today, the same chips run language models";

/// llama-cpp-python version the reference numbers come from.
const LLAMA_CPP_PYTHON: &str = "llama-cpp-python==0.3.36";
/// Size of the buffer read when measuring the machine's memory bandwidth.
const BANDWIDTH_BUFFER_BYTES: usize = 1 << 30;

struct Options {
    models: Vec<String>,
    threads: Vec<usize>,
    rounds: usize,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        models: Vec::new(),
        threads: vec![1, 2],
        rounds: 3,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--model" => o.models.push(value()?.clone()),
            "--threads" => {
                o.threads = value()?
                    .split(',')
                    .map(|t| t.trim().parse::<usize>().ok().filter(|&n| n > 0))
                    .collect::<Option<Vec<_>>>()
                    .ok_or("--threads takes a list like 1,2")?
            }
            "--rounds" => {
                o.rounds = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--rounds takes a positive number")?
            }
            other => return Err(format!("unknown option `{other}` for bench")),
        }
    }
    if o.models.is_empty() {
        o.models.push(models::DEFAULT_MODEL.into());
    }
    Ok(o)
}

/// One round's figures, from either side.
#[derive(Clone, Debug, Default)]
struct Round {
    prompt_tokens: f64,
    ttft_ms: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    itl_p50_ms: f64,
    itl_p99_ms: f64,
    itl_stddev_ms: f64,
    peak_rss_mb: f64,
}

impl Round {
    fn from_json(v: &serde_json::Value, itl_key: &str) -> Result<Self, String> {
        let num = |k: &str| {
            v[k].as_f64()
                .ok_or_else(|| format!("benchmark output lacks `{k}`: {v}"))
        };
        let mut itl: Vec<f64> = v[itl_key]
            .as_array()
            .ok_or_else(|| format!("benchmark output lacks `{itl_key}`"))?
            .iter()
            .filter_map(|x| x.as_f64())
            .collect();
        itl.sort_by(f64::total_cmp);
        Ok(Self {
            prompt_tokens: num("prompt_tokens")?,
            ttft_ms: num("ttft_ms")?,
            prefill_tok_s: num("prefill_tok_s")?,
            decode_tok_s: num("decode_tok_s")?,
            itl_p50_ms: quantile(&itl, 0.50),
            itl_p99_ms: quantile(&itl, 0.99),
            itl_stddev_ms: stddev(&itl),
            peak_rss_mb: num("peak_rss_kb")? / 1024.0,
        })
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn stddev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Median and spread of one metric over the rounds.
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(rounds: &[Round], f: impl Fn(&Round) -> f64) -> Stat {
    let mut v: Vec<f64> = rounds.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    Stat {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

pub fn cmd_bench(args: &[String]) -> Result<(), String> {
    let opts = parse_options(args)?;
    let python = ensure_llama_cpp_venv()?;
    crate::cargo(&["build", "--release", "--bin", "embodios"])?;
    let embodios = crate::target_dir().join("release").join("embodios");

    let bench_dir = models::cache_dir().join("bench");
    std::fs::create_dir_all(&bench_dir).map_err(|e| format!("{}: {e}", bench_dir.display()))?;
    let prompt_file = bench_dir.join("prompt.txt");
    std::fs::write(&prompt_file, PROMPT).map_err(|e| format!("{}: {e}", prompt_file.display()))?;

    eprintln!("xtask: measuring memory read bandwidth");
    let bandwidth: Vec<(usize, f64)> = opts
        .threads
        .iter()
        .map(|&t| (t, read_bandwidth_gb_s(t)))
        .collect();

    let mut rows = Vec::new();
    for model in &opts.models {
        let path = resolve_model(model)?;
        let weight_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        for &threads in &opts.threads {
            eprintln!(
                "xtask: bench {} with {threads} thread(s), {} rounds",
                path.display(),
                opts.rounds
            );
            let (llama, ours) = interleaved(
                &python,
                &embodios,
                &path,
                threads,
                &prompt_file,
                opts.rounds,
            )?;
            let gb_s = bandwidth
                .iter()
                .find(|(t, _)| *t == threads)
                .map(|b| b.1)
                .unwrap_or(0.0);
            rows.push(Row {
                model: path.file_name().unwrap().to_string_lossy().into_owned(),
                threads,
                llama,
                ours,
                roofline_tok_s: if weight_bytes > 0 {
                    gb_s * 1e9 / weight_bytes as f64
                } else {
                    0.0
                },
            });
        }
    }
    let report = render(&rows, &bandwidth, args);
    print!("{report}");
    let doc = workspace_root().join("docs").join("BENCHMARKS.md");
    std::fs::write(&doc, &report).map_err(|e| format!("{}: {e}", doc.display()))?;
    eprintln!("xtask: wrote {}", doc.display());
    Ok(())
}

struct Row {
    model: String,
    threads: usize,
    llama: Vec<Round>,
    ours: Vec<Round>,
    roofline_tok_s: f64,
}

/// Runs llama.cpp and EMBODIOS rounds alternately (A B A B …).
fn interleaved(
    python: &Path,
    embodios: &Path,
    model: &Path,
    threads: usize,
    prompt_file: &Path,
    rounds: usize,
) -> Result<(Vec<Round>, Vec<Round>), String> {
    let driver = workspace_root().join("scripts/bench/llama_cpp_driver.py");
    let mut child = Command::new(python)
        .arg(&driver)
        .arg(model)
        .arg(threads.to_string())
        .arg(GEN_TOKENS.to_string())
        .arg(prompt_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the llama.cpp driver: {e}"))?;
    let mut to_driver = child.stdin.take().unwrap();
    let mut from_driver = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut read_line = || -> Result<serde_json::Value, String> {
        let line = from_driver
            .next()
            .ok_or("the llama.cpp driver exited early")?
            .map_err(|e| format!("reading the llama.cpp driver: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("llama.cpp driver said {line:?}: {e}"))
    };
    read_line()?; // ready

    let (mut llama, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        writeln!(to_driver, "round").map_err(|e| format!("llama.cpp driver: {e}"))?;
        to_driver.flush().ok();
        llama.push(Round::from_json(&read_line()?, "itl_ms")?);

        let out = Command::new(embodios)
            .args(["run", "-m"])
            .arg(model)
            .arg("-f")
            .arg(prompt_file)
            .args([
                "-n",
                &GEN_TOKENS.to_string(),
                "--temp",
                "0",
                "--ctx",
                "512",
                "--json",
            ])
            .args(["--threads", &threads.to_string()])
            .output()
            .map_err(|e| format!("running embodios: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "embodios run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or("");
        let json =
            serde_json::from_str(last).map_err(|e| format!("embodios said {last:?}: {e}"))?;
        ours.push(Round::from_json(&json, "itl_ms")?);
    }
    writeln!(to_driver, "quit").ok();
    drop(to_driver);
    child.wait().ok();
    Ok((llama, ours))
}

fn render(rows: &[Row], bandwidth: &[(usize, f64)], args: &[String]) -> String {
    let mut s = String::new();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output();
    let date = date
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let _ = writeln!(s, "# Benchmarks: EMBODIOS host engine vs llama.cpp\n");
    let _ = writeln!(s, "- date: {date}");
    let _ = writeln!(
        s,
        "- CPU: {} ({} logical cores)",
        cpu_model(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let _ = writeln!(s, "- command: `cargo xtask bench {}`", args.join(" "));
    let _ = writeln!(s, "- llama.cpp: {LLAMA_CPP_PYTHON} (built from source with GGML_NATIVE), flash attention off, f16 KV cache, timed through `scripts/bench/llama_cpp_driver.py`");
    let _ = writeln!(
        s,
        "- EMBODIOS: `embodios run --temp 0 --json` (host CLI, same engine crates as the kernel)"
    );
    let _ = writeln!(s, "- workload: the same prompt text (token count below), then {GEN_TOKENS} greedy tokens; rounds interleaved llama.cpp / EMBODIOS; median (min–max)");
    for (t, gb) in bandwidth {
        let _ = writeln!(s, "- memory read bandwidth, {t} thread(s): {gb:.1} GB/s");
    }
    let _ = writeln!(s, "\nThe roofline is bandwidth / model file size: the decode rate if every weight byte is read once per token.\n");
    let _ = writeln!(s, "| model | threads | engine | prompt tok | prefill tok/s | decode tok/s | decode roofline | TTFT ms | ITL p50 ms | ITL p99 ms | ITL stddev ms | peak MB |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        for (name, rounds) in [("llama.cpp", &r.llama), ("EMBODIOS", &r.ours)] {
            let cell = |f: &dyn Fn(&Round) -> f64, reference: &dyn Fn(&Round) -> f64| {
                let st = stat(rounds, f);
                let base = stat(&r.llama, reference).median;
                let ratio = if name == "EMBODIOS" && base > 0.0 {
                    format!(" ({:.2}x)", st.median / base)
                } else {
                    String::new()
                };
                format!("{:.2} ({:.2}–{:.2}){ratio}", st.median, st.min, st.max)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {name} | {:.0} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
                r.model,
                r.threads,
                stat(rounds, |x| x.prompt_tokens).median,
                cell(&|x| x.prefill_tok_s, &|x| x.prefill_tok_s),
                cell(&|x| x.decode_tok_s, &|x| x.decode_tok_s),
                r.roofline_tok_s,
                cell(&|x| x.ttft_ms, &|x| x.ttft_ms),
                cell(&|x| x.itl_p50_ms, &|x| x.itl_p50_ms),
                cell(&|x| x.itl_p99_ms, &|x| x.itl_p99_ms),
                cell(&|x| x.itl_stddev_ms, &|x| x.itl_stddev_ms),
                cell(&|x| x.peak_rss_mb, &|x| x.peak_rss_mb),
            );
        }
    }
    let _ = writeln!(s, "\nRatios in parentheses after EMBODIOS figures are EMBODIOS / llama.cpp medians (higher is better for tok/s, lower for ms and MB).");
    s
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// A model name from the registry (fetched if needed) or a path to a GGUF file.
fn resolve_model(model: &str) -> Result<PathBuf, String> {
    if let Ok(spec) = models::find(model) {
        return models::fetch(spec);
    }
    let path = PathBuf::from(model);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "`{model}` is neither a known model name nor a file"
        ))
    }
}

/// The venv with llama-cpp-python, made outside the repository on first use (building
/// llama.cpp from source takes about ten minutes on two cores).
fn ensure_llama_cpp_venv() -> Result<PathBuf, String> {
    let venv = models::cache_dir().join("venv-llama");
    let python = venv.join("bin").join("python");
    let ready = Command::new(&python)
        .args(["-c", "import llama_cpp, numpy"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ready {
        return Ok(python);
    }
    deps::ensure_pip()?;
    if !python.exists() {
        if Command::new("python3")
            .args(["-c", "import venv, ensurepip"])
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            deps::apt_install(&["python3-venv"])?;
        }
        crate::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    if !deps::have("cmake") {
        deps::apt_install(&["cmake", "build-essential"])?;
    }
    eprintln!(
        "xtask: building {LLAMA_CPP_PYTHON} in {} (about ten minutes)",
        venv.display()
    );
    crate::run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                LLAMA_CPP_PYTHON,
                "numpy",
                "gguf",
            ])
            .env("CMAKE_ARGS", "-DGGML_NATIVE=ON"),
    )?;
    Ok(python)
}

/// Read bandwidth in GB/s: `threads` threads each summing its share of a 1 GiB buffer.
fn read_bandwidth_gb_s(threads: usize) -> f64 {
    let words = BANDWIDTH_BUFFER_BYTES / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let chunk = words.div_ceil(threads);
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t0 = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.max(BANDWIDTH_BUFFER_BYTES as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    best
}
