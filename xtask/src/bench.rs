//! `cargo xtask bench`: EMBODIOS side by side with llama.cpp on the same GGUF files and
//! thread counts, rounds interleaved (llama.cpp, EMBODIOS, llama.cpp, …), written to
//! `docs/BENCHMARKS.md` with the machine, the commands, the date and which targets of
//! issue 5 the run meets.
//!
//! Per model and thread count, each round runs: llama.cpp's `llama-bench` (pp64, tg128)
//! and the latency driver (TTFT on 16 and 64 tokens, inter-token latency, greedy tokens,
//! memory); then `embodios run --json` on the same 64-token prompt with 128 greedy tokens,
//! and on the 16-token prompt for its TTFT. The kernel rows boot EMBODIOS in QEMU and run
//! its `bench --json`. Each figure is the median over the rounds with the spread beside it.

use crate::bench_kernel::{self, KernelRow};
use crate::bench_llama::{self, LlamaCpp};
use crate::bench_models::{self, BenchModel, Kind};
use crate::qemu::Accel;
use crate::workspace_root;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Prompt tokens of the throughput and TTFT workload, and tokens generated.
const PROMPT_TOKENS: usize = 64;
const SHORT_PROMPT_TOKENS: usize = 16;
const GEN_TOKENS: usize = 128;
/// The text the prompts are cut from (at word boundaries, to 16 and 64 tokens of each
/// model's vocabulary).
const TEXT: &str = "The history of computing is a story of people who wanted machines to think \
faster than they could. Early engineers built calculators from gears and levers, then from \
relays and vacuum tubes. Each generation made the machines smaller, cheaper and more \
reliable, until a computer fit on a single chip. Today, the same chips run language models \
that write, translate and answer questions, and the engineers who build them still argue \
about the same things: speed, memory and the cost of every byte moved.";
/// Size of the buffer read when measuring the machine's memory bandwidth.
const BANDWIDTH_BUFFER_BYTES: usize = 1 << 30;

pub const HELP: &str = "\
usage: cargo xtask bench [--model NAME|FILE]… [--threads 1,2] [--rounds N]
                         [--no-kernel] [--kernel-model FILE] [--out FILE]

EMBODIOS (host CLI, and the kernel in QEMU) side by side with llama.cpp on the same GGUF
files and thread counts, rounds interleaved llama.cpp / EMBODIOS, median and spread.

  --model NAME|FILE   a model to measure (repeatable; default: all). Names:
                        smollm2-135m           SmolLM2-135M-Instruct Q4_1 (as shipped)
                        smollm2-135m-q8_0      SmolLM2 requantized by `embodios quantize`
                        smollm2-135m-q4_k_m    SmolLM2 requantized by `embodios quantize`
                        gemma3-270m            Gemma 3 270M Q4_K_M (as shipped)
                        tinyllama-1.1b-q4_k_m  random weights, TinyLlama-1.1B's shape
                        tinyllama-1.1b-q8_0    random weights, TinyLlama-1.1B's shape
                        all                    every one of these
                      Made models are cached in ~/.cache/embodios/bench/models
                      ($EMBODIOS_CACHE); delete one to have it made again.
  --threads LIST      thread counts (default 1,2)
  --rounds N          interleaved rounds per model and thread count (default 3)
  --no-kernel         skip the kernel rows (QEMU)
  --kernel-model FILE the model the kernel rows run (default: the tests' tiny random
                      llama, since under TCG, about 500 times slower than the host,
                      SmolLM2's 128 tokens take many minutes)
  --out FILE          where to write the report (default docs/BENCHMARKS.md)

llama.cpp: its own llama-bench (pp64, tg128) for throughput, built once from
llama-cpp-python's source into ~/.cache/embodios/llama-bench (cmake, Release,
GGML_NATIVE); scripts/bench/llama_cpp_driver.py over the same build for time to first
token (16 and 64 prompt tokens), inter-token latency, greedy tokens and memory.
EMBODIOS: `embodios run --temp 0 --json` (release build).
";

struct Options {
    models: Vec<String>,
    threads: Vec<usize>,
    rounds: usize,
    kernel: bool,
    kernel_model: Option<PathBuf>,
    out: PathBuf,
}

fn parse_options(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options {
        models: Vec::new(),
        threads: vec![1, 2],
        rounds: 3,
        kernel: true,
        kernel_model: None,
        out: workspace_root().join("docs").join("BENCHMARKS.md"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--help" | "-h" => return Ok(None),
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
            "--no-kernel" => o.kernel = false,
            "--kernel-model" => o.kernel_model = Some(PathBuf::from(value()?)),
            "--out" => o.out = PathBuf::from(value()?),
            other => return Err(format!("unknown option `{other}` for bench\n{HELP}")),
        }
    }
    if o.models.is_empty() {
        o.models.push("all".into());
    }
    Ok(Some(o))
}

/// One round's figures from one engine.
#[derive(Clone, Debug, Default)]
struct Round {
    prompt_tokens: f64,
    prompt16_tokens: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    ttft16_ms: f64,
    ttft_ms: f64,
    itl_p50_ms: f64,
    itl_p99_ms: f64,
    itl_stddev_ms: f64,
    /// Peak memory beyond the model file, MiB.
    mem_mb: f64,
    /// Greedy tokens after the 64-token prompt.
    ids: Vec<u64>,
}

fn num(v: &serde_json::Value, k: &str) -> Result<f64, String> {
    v[k].as_f64()
        .ok_or_else(|| format!("benchmark output lacks `{k}`: {v}"))
}

/// Quantiles and spread of the inter-token latencies in `v[key]`.
fn itl(v: &serde_json::Value, key: &str) -> Result<(f64, f64, f64), String> {
    let mut itl: Vec<f64> = v[key]
        .as_array()
        .ok_or_else(|| format!("benchmark output lacks `{key}`"))?
        .iter()
        .filter_map(|x| x.as_f64())
        .collect();
    itl.sort_by(f64::total_cmp);
    Ok((quantile(&itl, 0.50), quantile(&itl, 0.99), stddev(&itl)))
}

fn ids(v: &serde_json::Value, key: &str) -> Vec<u64> {
    v[key]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
        .unwrap_or_default()
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
#[derive(Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(rounds: &[Round], f: impl Fn(&Round) -> f64) -> Stat {
    stat_of(rounds.iter().map(f).collect())
}

fn stat_of(mut v: Vec<f64>) -> Stat {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Stat {
            median: 0.0,
            min: 0.0,
            max: 0.0,
        };
    }
    // With an even count the median is the mean of the two middle values (with two
    // rounds, their mean), not the upper one.
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Stat {
        median,
        min: v[0],
        max: v[v.len() - 1],
    }
}

struct Row {
    model: BenchModel,
    file_bytes: u64,
    threads: usize,
    llama: Vec<Round>,
    ours: Vec<Round>,
    roofline_tok_s: f64,
    /// EMBODIOS's greedy tokens replayed in llama.cpp as benchmarked: how many agree
    /// with its argmax, and llama.cpp's logit margin at the first that does not.
    agreement: Agreement,
    /// The same in llama.cpp's reference configuration (first thread count only).
    reference: Option<Agreement>,
}

/// What [`interleaved`] measured.
struct Measured {
    llama: Vec<Round>,
    ours: Vec<Round>,
    settings: String,
    agreement: Agreement,
    reference: Option<Agreement>,
}

/// How many greedy tokens agree, and llama.cpp's logit margin at the first that does not.
type Agreement = (usize, Option<f64>);

/// A top-1/top-2 logit margin below this is a near tie that different summation orders
/// can flip (the engine's fidelity tests use the same bound).
const NEAR_TIE_MARGIN: f64 = 0.05;

pub fn cmd_bench(args: &[String]) -> Result<(), String> {
    let Some(opts) = parse_options(args)? else {
        print!("{HELP}");
        return Ok(());
    };
    let load_before = load_average();
    crate::cargo(&["build", "--release", "--bin", "embodios"])?;
    let embodios = crate::target_dir().join("release").join("embodios");
    let llama = bench_llama::ensure()?;

    let mut models = Vec::new();
    for m in &opts.models {
        models.extend(bench_models::resolve(m, &embodios)?);
    }

    let bench_dir = crate::models::cache_dir().join("bench");
    std::fs::create_dir_all(&bench_dir).map_err(|e| format!("{}: {e}", bench_dir.display()))?;
    let text_file = bench_dir.join("text.txt");
    std::fs::write(&text_file, TEXT).map_err(|e| format!("{}: {e}", text_file.display()))?;

    eprintln!("xtask: measuring memory read bandwidth");
    let bandwidth: Vec<(usize, f64)> = opts
        .threads
        .iter()
        .map(|&t| (t, read_bandwidth_gb_s(t)))
        .collect();

    let mut rows = Vec::new();
    let mut llama_settings = String::new();
    for model in &models {
        let file_bytes = std::fs::metadata(&model.path)
            .map(|m| m.len())
            .map_err(|e| format!("{}: {e}", model.path.display()))?;
        for (i, &threads) in opts.threads.iter().enumerate() {
            eprintln!(
                "xtask: bench {} ({}) with {threads} thread(s), {} round(s)",
                model.name,
                model.path.display(),
                opts.rounds
            );
            let m = interleaved(
                &llama,
                &embodios,
                model,
                threads,
                &text_file,
                &bench_dir,
                opts.rounds,
                i == 0,
            )?;
            llama_settings = m.settings;
            let gb_s = bandwidth
                .iter()
                .find(|(t, _)| *t == threads)
                .map_or(0.0, |b| b.1);
            rows.push(Row {
                model: model.clone(),
                file_bytes,
                threads,
                llama: m.llama,
                ours: m.ours,
                roofline_tok_s: gb_s * 1e9 / file_bytes as f64,
                agreement: m.agreement,
                reference: m.reference,
            });
        }
    }

    let kernel_rows = if opts.kernel {
        let (path, label) = match &opts.kernel_model {
            Some(p) => (
                p.clone(),
                p.file_name()
                    .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            ),
            None => (
                bench_models::tiny_random()?,
                "random-tiny-llama (2 layers, width 64)".to_string(),
            ),
        };
        bench_kernel::run(&path, &label, &opts.threads)?
    } else {
        Vec::new()
    };

    let report = render(&Report {
        rows: &rows,
        kernel: &kernel_rows,
        bandwidth: &bandwidth,
        args,
        llama_settings: &llama_settings,
        load_before,
        load_after: load_average(),
    });
    print!("{report}");
    std::fs::write(&opts.out, &report).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    eprintln!("xtask: wrote {}", opts.out.display());
    Ok(())
}

/// Runs llama.cpp and EMBODIOS rounds alternately (A B A B …) on one model and thread
/// count; also returns llama-bench's settings line and how far llama.cpp agrees with
/// EMBODIOS's greedy tokens of the first round (with `reference_check`, also in
/// llama.cpp's reference configuration).
#[allow(clippy::too_many_arguments)]
fn interleaved(
    llama: &LlamaCpp,
    embodios: &Path,
    model: &BenchModel,
    threads: usize,
    text_file: &Path,
    bench_dir: &Path,
    rounds: usize,
    reference_check: bool,
) -> Result<Measured, String> {
    let tag = format!("{}-t{threads}", model.name.replace(['/', ' '], "_"));
    let log = bench_dir.join(format!("llama-driver-{tag}.log"));
    let mut driver = bench_llama::Driver::start(
        llama,
        &model.path,
        threads,
        GEN_TOKENS,
        text_file,
        &log,
        false,
    )?;
    let p16 = bench_dir.join(format!("prompt16-{tag}.txt"));
    let p64 = bench_dir.join(format!("prompt64-{tag}.txt"));
    std::fs::write(&p16, &driver.prompt16).map_err(|e| format!("{}: {e}", p16.display()))?;
    std::fs::write(&p64, &driver.prompt64).map_err(|e| format!("{}: {e}", p64.display()))?;

    let (mut theirs, mut ours) = (Vec::new(), Vec::new());
    let mut settings = String::new();
    for _ in 0..rounds {
        // A: llama.cpp.
        let lb = bench_llama::llama_bench(llama, &model.path, threads, PROMPT_TOKENS, GEN_TOKENS)?;
        settings = lb.settings;
        let d = driver.round()?;
        let (p50, p99, sd) = itl(&d, "itl_ms")?;
        theirs.push(Round {
            prompt_tokens: num(&d, "prompt_tokens")?,
            prompt16_tokens: num(&d, "prompt16_tokens")?,
            prefill_tok_s: lb.prefill_tok_s,
            decode_tok_s: lb.decode_tok_s,
            ttft16_ms: num(&d, "ttft16_ms")?,
            ttft_ms: num(&d, "ttft_ms")?,
            itl_p50_ms: p50,
            itl_p99_ms: p99,
            itl_stddev_ms: sd,
            mem_mb: (num(&d, "peak_rss_kb")? - num(&d, "base_rss_kb")? - num(&d, "model_rss_kb")?)
                / 1024.0,
            ids: ids(&d, "ids"),
        });

        // B: EMBODIOS.
        let (long, long_mem) = embodios_run(embodios, &model.path, &p64, GEN_TOKENS, threads)?;
        let (short, _) = embodios_run(embodios, &model.path, &p16, 1, threads)?;
        let (p50, p99, sd) = itl(&long, "itl_ms")?;
        ours.push(Round {
            prompt_tokens: num(&long, "prompt_tokens")?,
            prompt16_tokens: num(&short, "prompt_tokens")?,
            prefill_tok_s: num(&long, "prefill_tok_s")?,
            decode_tok_s: num(&long, "decode_tok_s")?,
            ttft16_ms: num(&short, "ttft_ms")?,
            ttft_ms: num(&long, "ttft_ms")?,
            itl_p50_ms: p50,
            itl_p99_ms: p99,
            itl_stddev_ms: sd,
            mem_mb: long_mem as f64 / 1024.0,
            ids: ids(&long, "ids"),
        });
    }
    let first_ids = ours
        .first()
        .map(|r: &Round| r.ids.clone())
        .unwrap_or_default();
    let agreement = driver.check(&first_ids)?;
    drop(driver);
    let reference = if reference_check {
        let log = bench_dir.join(format!("llama-driver-{tag}-reference.log"));
        let mut d = bench_llama::Driver::start(
            llama,
            &model.path,
            threads,
            GEN_TOKENS,
            text_file,
            &log,
            true,
        )?;
        Some(d.check(&first_ids)?)
    } else {
        None
    };
    Ok(Measured {
        llama: theirs,
        ours,
        settings,
        agreement,
        reference,
    })
}

/// `embodios run -f PROMPT -n N --temp 0 --ctx 512 --json --threads T`: its JSON line,
/// and its peak memory beyond the model file in KiB (see [`MemoryWatch`]).
fn embodios_run(
    embodios: &Path,
    model: &Path,
    prompt_file: &Path,
    n: usize,
    threads: usize,
) -> Result<(serde_json::Value, u64), String> {
    let mut child = Command::new(embodios)
        .args(["run", "-m"])
        .arg(model)
        .arg("-f")
        .arg(prompt_file)
        .args([
            "-n",
            &n.to_string(),
            "--temp",
            "0",
            "--ctx",
            "512",
            "--json",
        ])
        .args(["--threads", &threads.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running embodios: {e}"))?;
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = read(Box::new(child.stdout.take().ok_or("embodios stdout")?));
    let err = read(Box::new(child.stderr.take().ok_or("embodios stderr")?));
    let mut watch = MemoryWatch::new(child.id(), model);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("embodios: {e}"))? {
            break status;
        }
        watch.sample();
        std::thread::sleep(MEMORY_POLL);
    };
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if !status.success() {
        return Err(format!(
            "embodios run failed on {}: {}",
            model.display(),
            String::from_utf8_lossy(&stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&stdout);
    let last = stdout.lines().last().unwrap_or("");
    let json: serde_json::Value =
        serde_json::from_str(last).map_err(|e| format!("embodios said {last:?}: {e}"))?;
    // The CLI reads the weights into huge pages (anonymous memory) where it can; that
    // copy is the file, not memory beyond it.
    let copy_kb = json
        .get("model_copy_kb")
        .and_then(serde_json::Value::as_u64);
    let copy_kb = copy_kb.unwrap_or(0);
    Ok((json, watch.beyond_file_kb().saturating_sub(copy_kb)))
}

/// How often a running EMBODIOS process's memory is sampled.
const MEMORY_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Samples a process's peak resident memory (VmHWM, which only grows) and the resident
/// part of its mapping of the model file (which only grows too: nothing evicts it on a
/// machine with free memory); the last sample before the process exits gives its memory
/// beyond the file. Weights never read (most rows of an untied embedding table) are not
/// resident, so they count on neither side.
struct MemoryWatch {
    pid: u32,
    model: PathBuf,
    hwm_kb: u64,
    model_kb: u64,
}

impl MemoryWatch {
    fn new(pid: u32, model: &Path) -> Self {
        MemoryWatch {
            pid,
            model: std::fs::canonicalize(model).unwrap_or_else(|_| model.to_path_buf()),
            hwm_kb: 0,
            model_kb: 0,
        }
    }

    fn sample(&mut self) {
        let proc = PathBuf::from(format!("/proc/{}", self.pid));
        let Ok(status) = std::fs::read_to_string(proc.join("status")) else {
            return;
        };
        let Ok(smaps) = std::fs::read_to_string(proc.join("smaps")) else {
            return;
        };
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        let model = self.model.to_string_lossy().into_owned();
        let (mut inside, mut model_kb) = (false, 0u64);
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or("");
            if first.contains('-') && !first.ends_with(':') {
                inside = fields.nth(4) == Some(model.as_str());
            } else if inside && first == "Rss:" {
                model_kb += fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
        if let Some(hwm) = hwm {
            self.hwm_kb = hwm;
            self.model_kb = model_kb;
        }
    }

    fn beyond_file_kb(&self) -> u64 {
        self.hwm_kb.saturating_sub(self.model_kb)
    }
}

struct Report<'a> {
    rows: &'a [Row],
    kernel: &'a [KernelRow],
    bandwidth: &'a [(usize, f64)],
    args: &'a [String],
    llama_settings: &'a str,
    load_before: String,
    load_after: String,
}

/// Whether a target holds, fails, or was not measured in this run.
enum Verdict {
    Met(String),
    NotMet(String),
    NotMeasured(String),
}

fn verdict(ok: bool, detail: String) -> Verdict {
    if ok {
        Verdict::Met(detail)
    } else {
        Verdict::NotMet(detail)
    }
}

/// Issue 5's targets, computed from this run's 2-thread rows and kernel rows.
fn targets(rows: &[Row], kernel: &[KernelRow]) -> Vec<(String, Verdict)> {
    let two: Vec<&Row> = rows.iter().filter(|r| r.threads == 2).collect();
    let med = |rs: &[Round], f: fn(&Round) -> f64| stat(rs, f).median;
    let ratio = |r: &Row, f: fn(&Round) -> f64| {
        let base = med(&r.llama, f);
        if base > 0.0 {
            med(&r.ours, f) / base
        } else {
            0.0
        }
    };
    let mut out = Vec::new();
    let per_row = |name: &str,
                   pick: &dyn Fn(&Row) -> bool,
                   check: &dyn Fn(&Row) -> (bool, String)|
     -> (String, Verdict) {
        let picked: Vec<&&Row> = two.iter().filter(|r| pick(r)).collect();
        if picked.is_empty() {
            return (
                name.to_string(),
                Verdict::NotMeasured("no such model at 2 threads in this run".into()),
            );
        }
        let results: Vec<(bool, String)> = picked.iter().map(|r| check(r)).collect();
        let detail = results
            .iter()
            .map(|(_, d)| d.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        (
            name.to_string(),
            verdict(results.iter().all(|(ok, _)| *ok), detail),
        )
    };
    let decode = |r: &Row| ratio(r, |x| x.decode_tok_s);
    out.push(per_row(
        "Decode tok/s, SmolLM2 (Q4_1, Q8_0, Q4_K_M): at least 1.5x llama.cpp",
        &|r| r.model.kind == Kind::SmolLm2,
        &|r| {
            let q = decode(r);
            (q >= 1.5, format!("{} {q:.2}x", r.model.quant))
        },
    ));
    out.push(per_row(
        "Decode tok/s, TinyLlama-1.1B-shaped Q4_K_M: at least 1.2x llama.cpp and 85% of the roofline",
        &|r| r.model.kind == Kind::TinyLlama,
        &|r| {
            let q = decode(r);
            let roof = med(&r.ours, |x| x.decode_tok_s) / r.roofline_tok_s;
            (
                q >= 1.2 && roof >= 0.85,
                format!("{q:.2}x, {:.0}% of the roofline", roof * 100.0),
            )
        },
    ));
    out.push(per_row(
        "Prefill tok/s (64-token prompt): at least 1.0x llama.cpp",
        &|_| true,
        &|r| {
            let q = ratio(r, |x| x.prefill_tok_s);
            (q >= 1.0, format!("{} {q:.2}x", r.model.name))
        },
    ));
    out.push(per_row(
        "Time to first token, 16-token prompt, SmolLM2: under 20 ms",
        &|r| r.model.kind == Kind::SmolLm2,
        &|r| {
            let ms = med(&r.ours, |x| x.ttft16_ms);
            (ms < 20.0, format!("{} {ms:.1} ms", r.model.quant))
        },
    ));
    out.push(per_row(
        "Inter-token latency stddev below llama.cpp's",
        &|_| true,
        &|r| {
            let (a, b) = (
                med(&r.ours, |x| x.itl_stddev_ms),
                med(&r.llama, |x| x.itl_stddev_ms),
            );
            (a < b, format!("{} {a:.2} vs {b:.2} ms", r.model.name))
        },
    ));
    let decode_at = |t: usize| {
        kernel
            .iter()
            .find(|k| k.threads == t)
            .and_then(|k| k["decode_tok_s"].as_f64())
    };
    out.push((
        "Kernel: decode with 2 cores at least 1.7x decode with 1 core".into(),
        match (decode_at(1), decode_at(2)) {
            (Some(one), Some(two)) if one > 0.0 => {
                let accel = kernel
                    .first()
                    .map_or("", |k| bench_kernel::accel_label(k.accel));
                verdict(
                    two / one >= 1.7,
                    format!("{:.2}x ({accel}, {})", two / one, kernel[0].model),
                )
            }
            _ => Verdict::NotMeasured("needs kernel rows at 1 and 2 cores".into()),
        },
    ));
    for t in [
        "Kernel: zero allocations per token",
        "Kernel: memory beyond the weights on SmolLM2 Q4_1 (context 512) at most 25 MB",
    ] {
        out.push((
            t.into(),
            Verdict::NotMeasured(
                "`bench --json` does not report it; see the kernel tests and `mem`".into(),
            ),
        ));
    }
    out
}

impl std::ops::Index<&str> for KernelRow {
    type Output = serde_json::Value;
    fn index(&self, key: &str) -> &serde_json::Value {
        &self.json[key]
    }
}

fn render(r: &Report<'_>) -> String {
    let mut s = String::new();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let rev = Command::new("git")
        .current_dir(workspace_root())
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let _ = writeln!(s, "# Benchmarks: EMBODIOS vs llama.cpp\n");
    let _ = writeln!(s, "- date: {date}");
    let _ = writeln!(
        s,
        "- CPU: {} ({} logical cores)",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        s,
        "- load average (1, 5, 15 min) before / after the run: {} / {} (anything near or above the core count means the figures are noisy)",
        r.load_before, r.load_after
    );
    let _ = writeln!(s, "- command: `cargo xtask bench {}`", r.args.join(" "));
    let _ = writeln!(s, "- EMBODIOS: commit {rev}, `embodios run --temp 0 --ctx 512 --json --threads N` (host CLI, release build, the engine crates the kernel links)");
    let _ = writeln!(
        s,
        "- llama.cpp: vendored in llama-cpp-python {}, built with `cmake {}` (target llama-bench); {}",
        bench_llama::LLAMA_CPP_PYTHON_VERSION,
        bench_llama::CMAKE_OPTIONS.join(" "),
        r.llama_settings
    );
    let _ = writeln!(s, "- prefill and decode, llama.cpp: `llama-bench -p {PROMPT_TOKENS} -n {GEN_TOKENS} -r 1 -t N` once per round (pp{PROMPT_TOKENS}, tg{GEN_TOKENS}); EMBODIOS: prefill of the {PROMPT_TOKENS}-token prompt and the {GEN_TOKENS} greedy tokens after it");
    let _ = writeln!(s, "- TTFT (prompt of {SHORT_PROMPT_TOKENS} and of {PROMPT_TOKENS} tokens, cut from the same text at a word boundary) and inter-token latency over the {GEN_TOKENS} greedy tokens: llama.cpp through `scripts/bench/llama_cpp_driver.py` (llama.cpp's C API via llama-cpp-python's bindings over the same build, `llama_decode` per token, llama.cpp's greedy sampler), context 512, as EMBODIOS");
    let _ = writeln!(s, "- memory beyond the file: peak resident memory (VmHWM) minus the resident part of the model file's mapping (from /proc/PID/smaps) and, for EMBODIOS, minus the copy of the file it reads into huge pages where it can (`model_copy_kb` in its JSON) (llama.cpp maps the file; weights never read such as most rows of an untied embedding table are resident on neither side). EMBODIOS: sampled every {} ms while `embodios run` (64 + 128 tokens, context 512) runs, last sample. llama.cpp: in the driver (context 512) after its rounds, with the peak mark reset after Python's imports (`5` to /proc/self/clear_refs) and the RSS then subtracted, so the interpreter is not counted; llama.cpp's repacked weight copies count, as they are memory it uses beyond the file", MEMORY_POLL.as_millis());
    let _ = writeln!(
        s,
        "- rounds interleaved llama.cpp / EMBODIOS; median (min–max) over the rounds"
    );
    for (t, gb) in r.bandwidth {
        let _ = writeln!(s, "- memory read bandwidth, {t} thread(s): {gb:.1} GB/s");
    }
    let _ = writeln!(s, "\nThe roofline is bandwidth / model file size: the decode rate if every weight byte is read once per token. Ratios after EMBODIOS figures are EMBODIOS / llama.cpp medians (higher is better for tok/s, lower for ms and MB).\n");

    let _ = writeln!(s, "## Models\n");
    let _ = writeln!(s, "| model | file | size MB |");
    let _ = writeln!(s, "|---|---|---|");
    let mut seen = Vec::new();
    for row in r.rows {
        if seen.contains(&&row.model.name) {
            continue;
        }
        seen.push(&row.model.name);
        let what = bench_models::NAMES
            .iter()
            .find(|(n, _)| *n == row.model.name)
            .map_or("", |(_, w)| w);
        let _ = writeln!(
            s,
            "| {} {} | `{}` | {:.1} |",
            row.model.name,
            if what.is_empty() {
                String::new()
            } else {
                format!("({what})")
            },
            row.model
                .path
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            row.file_bytes as f64 / 1e6
        );
    }

    let _ = writeln!(s, "\n## Host: EMBODIOS CLI vs llama.cpp\n");
    let _ = writeln!(s, "| model | threads | engine | prefill tok/s ({PROMPT_TOKENS}) | decode tok/s ({GEN_TOKENS}) | decode roofline | TTFT {SHORT_PROMPT_TOKENS} ms | TTFT {PROMPT_TOKENS} ms | ITL p50 ms | ITL p99 ms | ITL stddev ms | memory beyond file MB |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in r.rows {
        for (name, rounds) in [("llama.cpp", &row.llama), ("EMBODIOS", &row.ours)] {
            let cell = |f: fn(&Round) -> f64| {
                let st = stat(rounds, f);
                let base = stat(&row.llama, f).median;
                let ratio = if name == "EMBODIOS" && base > 0.0 {
                    format!(" ({:.2}x)", st.median / base)
                } else {
                    String::new()
                };
                format!("{:.2} ({:.2}–{:.2}){ratio}", st.median, st.min, st.max)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {name} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                row.model.name,
                row.threads,
                cell(|x| x.prefill_tok_s),
                cell(|x| x.decode_tok_s),
                row.roofline_tok_s,
                cell(|x| x.ttft16_ms),
                cell(|x| x.ttft_ms),
                cell(|x| x.itl_p50_ms),
                cell(|x| x.itl_p99_ms),
                cell(|x| x.itl_stddev_ms),
                cell(|x| x.mem_mb),
            );
        }
    }

    let _ = writeln!(s, "\n## Same tokens\n");
    let _ = writeln!(s, "EMBODIOS's {GEN_TOKENS} greedy tokens after the {PROMPT_TOKENS}-token prompt (first round), replayed in llama.cpp: how many are llama.cpp's argmax too, and where one is not, by how much llama.cpp's top logit leads the logit of EMBODIOS's pick (below {NEAR_TIE_MARGIN} is a near tie, which different summation orders can flip; the engine's fidelity tests accept exactly these). Two llama.cpp configurations: as benchmarked (flash attention auto, repacked weights: llama.cpp's fastest, which sums in other orders), and its reference configuration (flash attention off, no extra buffer types), in which the engine's golden files were recorded.\n");
    let _ = writeln!(s, "| model | threads | prompt tokens 16/64 (llama.cpp; EMBODIOS) | equal to llama.cpp as benchmarked | equal to llama.cpp's reference configuration |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for row in r.rows {
        let (Some(a), Some(b)) = (row.llama.first(), row.ours.first()) else {
            continue;
        };
        let n = b.ids.len();
        let verdict = |agreement: Option<Agreement>| match agreement {
            None => "–".to_string(),
            Some((k, _)) if k == n => format!("all {n}"),
            Some((k, Some(margin))) => format!(
                "first {k} of {n}; then llama.cpp's top logit leads by {margin:.3}{}",
                if margin < NEAR_TIE_MARGIN {
                    " (near tie)"
                } else {
                    " (not a near tie)"
                }
            ),
            Some((k, None)) => format!("first {k} of {n}"),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.0}/{:.0}; {:.0}/{:.0} | {} | {} |",
            row.model.name,
            row.threads,
            a.prompt16_tokens,
            a.prompt_tokens,
            b.prompt16_tokens,
            b.prompt_tokens,
            verdict(Some(row.agreement)),
            verdict(row.reference)
        );
    }

    if !r.kernel.is_empty() {
        let _ = writeln!(s, "\n## Kernel: `bench --json` in QEMU\n");
        let _ = writeln!(s, "The kernel's own benchmark ({PROMPT_TOKENS} prompt tokens, {GEN_TOKENS} greedy, fresh context), booted with `threads=N` on N virtual CPUs. Under TCG (software emulation, about 500 times slower than the host) the figures say nothing about speed against llama.cpp, so no ratio is given; they show that the kernel runs the benchmark and how it scales with cores.\n");
        let _ = writeln!(s, "| model | cores | where | prefill tok/s | decode tok/s | TTFT {PROMPT_TOKENS} ms | ITL p50 ms | ITL p99 ms | ITL stddev ms |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for k in r.kernel {
            // A ratio to llama.cpp only under KVM and on a model the host rows measured.
            let host = r
                .rows
                .iter()
                .find(|h| h.threads == k.threads && h.model.path == k.model_path);
            let cell = |key: &str, f: fn(&Round) -> f64| {
                let v = k[key].as_f64().unwrap_or(0.0);
                match host {
                    Some(h) if k.accel == Accel::Kvm => {
                        let base = stat(&h.llama, f).median;
                        if base > 0.0 {
                            format!("{v:.2} ({:.2}x)", v / base)
                        } else {
                            format!("{v:.2}")
                        }
                    }
                    _ => format!("{v:.2}"),
                }
            };
            let _ = writeln!(
                s,
                "| {} | {} | kernel ({}) | {} | {} | {} | {} | {} | {} |",
                k.model,
                k.threads,
                bench_kernel::accel_label(k.accel),
                cell("prefill_tok_s", |x| x.prefill_tok_s),
                cell("decode_tok_s", |x| x.decode_tok_s),
                cell("ttft_ms", |x| x.ttft_ms),
                cell("itl_p50_ms", |x| x.itl_p50_ms),
                cell("itl_p99_ms", |x| x.itl_p99_ms),
                cell("itl_stddev_ms", |x| x.itl_stddev_ms),
            );
        }
    }

    let _ = writeln!(s, "\n## Targets of issue 5 in this run (2 threads)\n");
    for (name, v) in targets(r.rows, r.kernel) {
        let (mark, detail) = match v {
            Verdict::Met(d) => ("met", d),
            Verdict::NotMet(d) => ("NOT met", d),
            Verdict::NotMeasured(d) => ("not measured", d),
        };
        let _ = writeln!(s, "- {name}: **{mark}** ({detail})");
    }
    s
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        let s = stat_of(vec![4.0, 1.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert_eq!(stat_of(vec![3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(stat_of(vec![1.0, 9.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(stat_of(Vec::new()).median, 0.0);
    }

    #[test]
    fn options_parse_and_help() {
        let args: Vec<String> = ["--model", "smollm2-135m", "--threads", "2", "--no-kernel"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = parse_options(&args).unwrap().unwrap();
        assert_eq!(o.models, vec!["smollm2-135m"]);
        assert_eq!(o.threads, vec![2]);
        assert!(!o.kernel);
        assert!(parse_options(&["--help".to_string()]).unwrap().is_none());
        assert!(parse_options(&["--threads".to_string(), "0".to_string()]).is_err());
    }
}
