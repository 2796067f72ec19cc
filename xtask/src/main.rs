//! `cargo xtask`: everything that is not plain cargo — fetching models, the full test
//! suite, running EMBODIOS.

mod bench;
mod bench_kernel;
mod bench_llama;
mod bench_models;
mod deps;
mod disk;
mod disk_test;
mod kernel;
mod models;
mod net_test;
mod qemu;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  run [--model NAME|FILE]… [run-kernel options]
                              boot EMBODIOS in QEMU with the default model (fetched
                              first) loaded and active, straight into the console
  chat [--model NAME]         fetch a model and chat with it in the host CLI
  test                        run every test of the project (installs what it needs)
  build                       build the host CLI (release) and the kernel
  fetch-model [NAME]          download, verify and cache a model; prints its path last
                              (models: smollm2-135m (default), gemma3-270m)
  fuzz [--seconds N]          fuzz the GGUF parser with cargo fuzz (nightly)
  bench [--model NAME|FILE]… [--threads 1,2] [--rounds N] [--no-kernel]
        [--kernel-model FILE] [--out FILE]
                              EMBODIOS (host CLI, kernel in QEMU) side by side with
                              llama.cpp (llama-bench); writes docs/BENCHMARKS.md;
                              `cargo xtask bench --help` for the details
  build-kernel                build the bare-metal kernel (nightly); prints the ELF path
  iso [--out PATH] [--entry normal|nosmp|test|panic-test] [--timeout S]
                              make the GRUB ISO (BIOS + UEFI)
  run-kernel [--cores N] [--mem SIZE] [--accel kvm|tcg|auto] [--uefi] [--entry E]
                              boot the ISO in QEMU, serial console on this terminal
  kernel-test                 kernel tests in QEMU (TCG): AVX2 in ELF, in-kernel tests,
                              panic backtrace, shell session, SeaBIOS and OVMF boots
  kernel-boot-time [--runs N] [--uefi]
                              median QEMU-start-to-prompt time (TCG)
  net-test                    kernel networking in QEMU: virtio-net, e1000, e1000e;
                              lspci, ping, DHCP/static, HTTP API incl. generation
  disk --model FILE... [--fat16] --out IMG
                              raw disk image: GPT + FAT32 (or MBR + FAT16) with the
                              models (and .sha256 files) under /models
  disk-test                   kernel storage in QEMU: NVMe and virtio-blk, GPT/MBR,
                              FAT32/FAT16, ls, load from disk, corrupted models refused
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("fetch-model") => cmd_fetch_model(&args[1..]),
        Some("test") => cmd_test(&args[1..]),
        Some("run") => cmd_run(&args[1..]),
        Some("chat") => cmd_chat(&args[1..]),
        Some("build") => cargo(&["build", "--release", "--bin", "embodios"])
            .and_then(|()| kernel::cmd_build(&args[1..])),
        Some("fuzz") => cmd_fuzz(&args[1..]),
        Some("bench") => bench::cmd_bench(&args[1..]),
        Some("build-kernel") => kernel::cmd_build(&args[1..]),
        Some("iso") => kernel::cmd_iso(&args[1..]),
        Some("run-kernel" | "qemu") => kernel::cmd_run(&args[1..]),
        Some("kernel-test") => kernel::cmd_test(&args[1..]),
        Some("kernel-boot-time") => kernel::cmd_boot_time(&args[1..]),
        Some("net-test") => net_test::test_net(),
        Some("disk") => disk::cmd_disk(&args[1..]),
        Some("disk-test") => disk_test::test_disks(),
        Some("help" | "--help" | "-h") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo(args: &[&str]) -> Result<(), String> {
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    cmd.current_dir(workspace_root());
    let status = cmd.status().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({status})"))
    }
}

fn cmd_fetch_model(args: &[String]) -> Result<(), String> {
    let name = args
        .first()
        .map(String::as_str)
        .unwrap_or(models::DEFAULT_MODEL);
    let spec = models::find(name)?;
    let path = models::fetch(spec)?;
    println!("{}", path.display());
    Ok(())
}

/// Fetches every model the tests use and exports their paths for the test binaries.
fn fetch_test_models() -> Result<Vec<(String, PathBuf)>, String> {
    let mut paths = Vec::new();
    for spec in models::MODELS {
        let path = models::fetch(spec)?;
        let var = format!(
            "EMBODIOS_MODEL_{}",
            spec.name.replace('-', "_").to_uppercase()
        );
        paths.push((var, path));
    }
    Ok(paths)
}

fn cmd_test(_args: &[String]) -> Result<(), String> {
    let engine_targets = ["x86_64-unknown-none", "aarch64-unknown-none"];
    deps::rustup_targets(None, &engine_targets)?;
    deps::rustup_components(None, &["rustfmt", "clippy"])?;
    let model_env = fetch_test_models()?;

    eprintln!("xtask: checking formatting and lints");
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--release",
        "--",
        "-D",
        "warnings",
    ])?;

    eprintln!("xtask: building the engine crates for bare-metal targets");
    for target in engine_targets {
        cargo(&[
            "build",
            "--release",
            "--target",
            target,
            "-p",
            "embodios-gguf",
            "-p",
            "embodios-quant",
            "-p",
            "embodios-tokenizer",
            "-p",
            "embodios-engine",
            "-p",
            "embodios-api",
        ])?;
    }

    eprintln!("xtask: running the host test suite");
    let mut test = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    test.args(["test", "--workspace", "--release"]);
    for (var, path) in &model_env {
        test.env(var, path);
    }
    run(&mut test)?;

    eprintln!("xtask: the official Ollama and OpenAI Python clients against `embodios serve`");
    python_client_tests(&model_env)?;

    eprintln!("xtask: running the kernel tests in QEMU");
    kernel::cmd_test(&[])?;

    eprintln!("xtask: kernel networking and the HTTP API in QEMU");
    net_test::test_net()?;

    eprintln!("xtask: models from disks (NVMe, virtio-blk, GPT/MBR, FAT) in QEMU");
    disk_test::test_disks()
}

/// PyPI client versions the API is tested with.
const PYTHON_CLIENTS: [&str; 2] = ["ollama==0.6.3", "openai==3.57.0"];

/// Runs `crates/api/tests/python_clients.py` with the real client packages, installed
/// in a virtual environment outside the repository.
fn python_client_tests(model_env: &[(String, PathBuf)]) -> Result<(), String> {
    let python = net_test::clients_python()?;
    let model = model_env
        .iter()
        .find(|(var, _)| var == "EMBODIOS_MODEL_SMOLLM2_135M")
        .map(|(_, path)| path)
        .ok_or("the default model was not fetched")?;
    let binary = target_dir().join("release").join("embodios");
    run(Command::new(&python)
        .arg("crates/api/tests/python_clients.py")
        .arg("--bin")
        .arg(&binary)
        .arg("--model")
        .arg(model))
}

/// Cargo's target directory for this workspace.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Boots the kernel in QEMU with models as GRUB modules: the default model unless
/// `--model` names others (registry names are fetched first, files are used as they are).
fn cmd_run(args: &[String]) -> Result<(), String> {
    let mut kernel_args = Vec::new();
    let mut have_model = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--model" {
            let value = it
                .next()
                .ok_or("--model needs a model name or a GGUF file")?;
            have_model = true;
            kernel_args.push(a.clone());
            kernel_args.push(match models::find(value) {
                Ok(spec) => format!("{}={}", spec.name, models::fetch(spec)?.display()),
                Err(_) => value.clone(),
            });
        } else {
            kernel_args.push(a.clone());
        }
    }
    if !have_model {
        let spec = models::find(models::DEFAULT_MODEL)?;
        kernel_args.push("--model".into());
        kernel_args.push(format!("{}={}", spec.name, models::fetch(spec)?.display()));
    }
    kernel::cmd_run(&kernel_args)
}

/// Chats with a fetched model in the host CLI.
fn cmd_chat(args: &[String]) -> Result<(), String> {
    let mut name = models::DEFAULT_MODEL.to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--model" => name = it.next().ok_or("--model needs a name")?.clone(),
            other => return Err(format!("unknown option `{other}` for chat")),
        }
    }
    let path = models::fetch(models::find(&name)?)?;
    let path = path.to_str().ok_or("model path is not UTF-8")?;
    cargo(&[
        "run",
        "--quiet",
        "--release",
        "--bin",
        "embodios",
        "--",
        "chat",
        "-m",
        path,
    ])
}

fn cmd_fuzz(args: &[String]) -> Result<(), String> {
    let mut seconds = 600u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--seconds needs a number")?
            }
            other => return Err(format!("unknown option `{other}` for fuzz")),
        }
    }
    deps::rustup_components(Some("nightly"), &["rust-src"])?;
    if !deps::have("cargo-fuzz") {
        cargo(&["install", "--locked", "cargo-fuzz"])?;
    }
    run(Command::new("cargo").current_dir(workspace_root()).args([
        "+nightly",
        "fuzz",
        "run",
        "gguf_parse",
        "--",
        &format!("-max_total_time={seconds}"),
    ]))
}
