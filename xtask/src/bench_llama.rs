//! The llama.cpp side of `cargo xtask bench`: its own `llama-bench` (built here from the
//! llama-cpp-python source distribution, outside the repository) for prefill and decode
//! throughput, and `scripts/bench/llama_cpp_driver.py` (llama-cpp-python's bindings over
//! that same build) for time to first token, inter-token latency, greedy tokens and memory.

use crate::{deps, models, workspace_root};
use std::io::{BufRead, BufReader, Lines, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The llama-cpp-python release whose vendored llama.cpp is the reference.
pub const LLAMA_CPP_PYTHON_VERSION: &str = "0.3.36";

/// CMake options of the llama-bench build: the CPU backend tuned for this machine
/// (`-march=native`), shared libraries so the Python driver can load the same build.
/// AMX is left out: its extra buffer type crashes in the virtual machines this project
/// runs on (see scripts/golden/model_goldens.py); the AVX2/AVX-512 repacked weights stay.
pub const CMAKE_OPTIONS: &[&str] = &[
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DBUILD_SHARED_LIBS=ON",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16",
    "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16",
];

/// A ready llama.cpp: the llama-bench binary, its shared libraries, and the Python with
/// llama-cpp-python's bindings.
pub struct LlamaCpp {
    pub llama_bench: PathBuf,
    pub lib_dir: PathBuf,
    pub python: PathBuf,
}

fn source_dir() -> PathBuf {
    models::cache_dir()
        .join("sdist")
        .join(format!("llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"))
}

fn build_dir() -> PathBuf {
    models::cache_dir().join("llama-bench").join("build")
}

/// Builds llama-bench if it is not built yet (about ten minutes on two cores), and makes
/// the Python venv with the bindings.
pub fn ensure() -> Result<LlamaCpp, String> {
    let build = build_dir();
    let llama_bench = build.join("bin").join("llama-bench");
    if !llama_bench.is_file() {
        build_llama_bench(&build)?;
    }
    Ok(LlamaCpp {
        llama_bench,
        lib_dir: build.join("bin"),
        python: ensure_venv()?,
    })
}

fn build_llama_bench(build: &Path) -> Result<(), String> {
    let src = source_dir().join("vendor").join("llama.cpp");
    if !src.join("CMakeLists.txt").is_file() {
        fetch_source()?;
    }
    if !deps::have("cmake") || !deps::have("g++") || !deps::have("make") {
        deps::apt_install(&["cmake", "g++", "make"])?;
    }
    eprintln!(
        "xtask: building llama.cpp's llama-bench from {} into {} (about ten minutes)",
        src.display(),
        build.display()
    );
    crate::run(
        Command::new("cmake")
            .arg("-S")
            .arg(&src)
            .arg("-B")
            .arg(build)
            .args(CMAKE_OPTIONS),
    )?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    crate::run(Command::new("cmake").arg("--build").arg(build).args([
        "--target",
        "llama-bench",
        "-j",
        &jobs.to_string(),
    ]))
}

/// Downloads llama-cpp-python's source distribution with pip and unpacks it.
fn fetch_source() -> Result<(), String> {
    deps::ensure_pip()?;
    let sdist = models::cache_dir().join("sdist");
    std::fs::create_dir_all(&sdist).map_err(|e| format!("{}: {e}", sdist.display()))?;
    eprintln!("xtask: downloading llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} (source)");
    crate::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--disable-pip-version-check",
            ])
            .arg(format!("llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"))
            .arg("-d")
            .arg(&sdist),
    )?;
    let tarball = sdist.join(format!(
        "llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    ));
    crate::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&sdist),
    )
}

/// The venv with llama-cpp-python (the driver's bindings), made outside the repository.
fn ensure_venv() -> Result<PathBuf, String> {
    let venv = models::cache_dir().join("venv-llama");
    let python = venv.join("bin").join("python");
    let ready = Command::new(&python)
        .args(["-c", "import llama_cpp"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ready {
        return Ok(python);
    }
    deps::ensure_venv()?;
    if !python.exists() {
        crate::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    eprintln!(
        "xtask: installing llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} in {}",
        venv.display()
    );
    crate::run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet"])
            .arg(format!("llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"))
            .env("CMAKE_ARGS", "-DGGML_NATIVE=ON"),
    )?;
    Ok(python)
}

/// One llama-bench run: prompt processing of `n_prompt` tokens and generation of `n_gen`.
pub struct BenchResult {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// `build_commit`, `flash_attn`, `type_k`, `repack` as llama-bench reports them.
    pub settings: String,
}

/// Runs llama-bench once (one repetition of each test, after its warm-up).
pub fn llama_bench(
    lc: &LlamaCpp,
    model: &Path,
    threads: usize,
    n_prompt: usize,
    n_gen: usize,
) -> Result<BenchResult, String> {
    let out = Command::new(&lc.llama_bench)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string()])
        .args(["-p", &n_prompt.to_string(), "-n", &n_gen.to_string()])
        .args(["-r", "1", "-o", "json"])
        .env("LD_LIBRARY_PATH", &lc.lib_dir)
        .output()
        .map_err(|e| format!("running {}: {e}", lc.llama_bench.display()))?;
    if !out.status.success() {
        return Err(format!(
            "llama-bench failed on {} ({}): {}",
            model.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("llama-bench printed no JSON ({e})"))?;
    let tests = v.as_array().ok_or("llama-bench JSON is not a list")?;
    let find = |p: usize, g: usize| {
        tests
            .iter()
            .find(|t| t["n_prompt"] == p && t["n_gen"] == g)
            .and_then(|t| t["avg_ts"].as_f64())
            .ok_or_else(|| format!("llama-bench reported no pp{p}/tg{g} result"))
    };
    let first = tests.first().cloned().unwrap_or_default();
    Ok(BenchResult {
        prefill_tok_s: find(n_prompt, 0)?,
        decode_tok_s: find(0, n_gen)?,
        settings: format!(
            "build {} ({}), flash attention {}, KV cache {}, repacked weights {}",
            first["build_commit"].as_str().unwrap_or("?"),
            first["build_number"],
            match first["flash_attn"].as_i64() {
                Some(-1) => "auto".to_string(),
                Some(0) => "off".to_string(),
                Some(1) => "on".to_string(),
                _ => "?".to_string(),
            },
            first["type_k"].as_str().unwrap_or("?"),
            first["repack"]
        ),
    })
}

/// The Python driver, kept running for one model and thread count. With `reference`,
/// llama.cpp runs as the engine's golden files were recorded: flash attention off, no
/// extra buffer types (no repacked weights), for comparing greedy tokens.
pub struct Driver {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// The prompts it cut from the text: 16 and 64 tokens.
    pub prompt16: String,
    pub prompt64: String,
}

impl Driver {
    pub fn start(
        lc: &LlamaCpp,
        model: &Path,
        threads: usize,
        n_gen: usize,
        text_file: &Path,
        log: &Path,
        reference: bool,
    ) -> Result<Self, String> {
        let script = workspace_root().join("scripts/bench/llama_cpp_driver.py");
        let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new(&lc.python)
            .arg(&script)
            .arg(model)
            .arg(threads.to_string())
            .arg(n_gen.to_string())
            .arg(text_file)
            .env("LLAMA_CPP_LIB_PATH", &lc.lib_dir)
            .env("EMBODIOS_EXTRA_BUFTS", if reference { "0" } else { "1" })
            .env("EMBODIOS_FLASH_ATTN", if reference { "0" } else { "auto" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting the llama.cpp driver: {e}"))?;
        let stdin = child.stdin.take().ok_or("driver stdin")?;
        let lines = BufReader::new(child.stdout.take().ok_or("driver stdout")?).lines();
        let mut d = Driver {
            child,
            stdin,
            lines,
            prompt16: String::new(),
            prompt64: String::new(),
        };
        let ready = d.read().map_err(|e| {
            format!(
                "llama.cpp did not load {}: {e} (see the driver log)",
                model.display()
            )
        })?;
        let prompt = |n: &str| {
            ready["prompts"][n]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("driver gave no {n}-token prompt: {ready}"))
        };
        d.prompt16 = prompt("16")?;
        d.prompt64 = prompt("64")?;
        Ok(d)
    }

    fn read(&mut self) -> Result<serde_json::Value, String> {
        let line = self
            .lines
            .next()
            .ok_or("the llama.cpp driver exited early")?
            .map_err(|e| format!("reading the llama.cpp driver: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("llama.cpp driver said {line:?}: {e}"))
    }

    /// One timed round: TTFT on the 16-token prompt, then the 64-token prompt and the
    /// greedy tokens after it.
    pub fn round(&mut self) -> Result<serde_json::Value, String> {
        writeln!(self.stdin, "round").map_err(|e| format!("llama.cpp driver: {e}"))?;
        self.stdin.flush().ok();
        self.read()
    }

    /// How many of `ids` (another engine's greedy tokens after the 64-token prompt) equal
    /// llama.cpp's argmax, and at the first that does not, llama.cpp's top logit minus
    /// that token's logit.
    pub fn check(&mut self, ids: &[u64]) -> Result<(usize, Option<f64>), String> {
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        writeln!(self.stdin, "check {}", list.join(" "))
            .map_err(|e| format!("llama.cpp driver: {e}"))?;
        self.stdin.flush().ok();
        let v = self.read()?;
        let agree = v["agree"]
            .as_u64()
            .ok_or_else(|| format!("driver check said {v}"))?;
        Ok((agree as usize, v["margin"].as_f64()))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}
