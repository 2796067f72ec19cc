//! Kernel tasks: building the bare-metal kernel (nightly, build-std, hard-float target
//! JSON), making the GRUB ISO, running it in QEMU, and the kernel test suite (AVX2 in
//! the ELF, in-kernel tests, panic backtrace, serial shell session, SeaBIOS and OVMF
//! boots) plus the boot-time measurement.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::deps;
use crate::qemu::{self, host_greedy, smollm2_path, Accel, Firmware, Session};

/// Debian packages the kernel tasks need.
pub const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "grub-common",
    "xorriso",
    "mtools",
    "ovmf",
    "binutils",
];

/// GRUB menu entries (index = `set default`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Boot to the shell.
    Normal = 0,
    /// Single core.
    NoSmp = 1,
    /// In-kernel tests, then exit QEMU.
    Test = 2,
    /// Deliberate panic.
    PanicTest = 3,
    /// Deliberate page fault (write to code).
    FaultTest = 4,
    /// Deliberate stack overflow (guard page, double fault).
    OverflowTest = 5,
}

impl Entry {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "normal" => Ok(Entry::Normal),
            "nosmp" => Ok(Entry::NoSmp),
            "test" => Ok(Entry::Test),
            "panic-test" => Ok(Entry::PanicTest),
            "fault-test" => Ok(Entry::FaultTest),
            "overflow-test" => Ok(Entry::OverflowTest),
            other => Err(format!(
                "unknown entry `{other}` (normal, nosmp, test, panic-test, fault-test, overflow-test)"
            )),
        }
    }
}

fn kernel_dir() -> PathBuf {
    crate::workspace_root().join("kernel")
}

/// The kernel's cargo target directory (`$CARGO_TARGET_DIR` or `kernel/target`).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => kernel_dir().join("target"),
    }
}

/// Path of the built kernel ELF.
pub fn kernel_elf() -> PathBuf {
    target_dir().join("x86_64-embodios/release/embodios-kernel")
}

/// Installs missing tools (apt-get), or says exactly what to run.
pub fn ensure_tools() -> Result<(), String> {
    let missing = missing_tools();
    if missing.is_empty() {
        return Ok(());
    }
    let cmd = format!("apt-get install -y {}", APT_PACKAGES.join(" "));
    eprintln!("xtask: kernel tools missing: {}", missing.join(", "));
    deps::apt_install(APT_PACKAGES).map_err(|e| format!("{e}\ninstall them with: sudo {cmd}"))?;
    let still = missing_tools();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "still missing after apt-get: {}; run: sudo {cmd}",
            still.join(", ")
        ))
    }
}

fn missing_tools() -> Vec<&'static str> {
    let mut missing = Vec::new();
    for prog in [
        "qemu-system-x86_64",
        "grub-mkrescue",
        "xorriso",
        "mformat",
        "objdump",
        "nm",
    ] {
        if !deps::have(prog) {
            missing.push(prog);
        }
    }
    for (dir, what) in [
        ("/usr/lib/grub/i386-pc", "grub-pc-bin"),
        ("/usr/lib/grub/x86_64-efi", "grub-efi-amd64-bin"),
        (qemu::OVMF, "ovmf"),
    ] {
        if !Path::new(dir).exists() {
            missing.push(what);
        }
    }
    missing
}

/// Builds the kernel (release) and returns the ELF path.
pub fn build() -> Result<PathBuf, String> {
    deps::rustup_components(Some("nightly"), &["rust-src"]).map_err(|e| {
        format!("{e}\nthe kernel needs nightly with rust-src: rustup toolchain install nightly --component rust-src")
    })?;
    eprintln!("xtask: building the kernel (nightly, build-std, x86_64-embodios.json)");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(kernel_dir())
        .args(["+nightly", "build", "--release"]);
    // The host cargo that runs xtask exports variables that must not leak into the
    // kernel build (toolchain pin, host RUSTFLAGS).
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("running cargo +nightly: {e}"))?;
    if !status.success() {
        return Err(format!("kernel build failed ({status})"));
    }
    let elf = kernel_elf();
    if !elf.exists() {
        return Err(format!("kernel build produced no {}", elf.display()));
    }
    Ok(elf)
}

/// A model file to put in the ISO as a multiboot2 module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    /// Name the kernel shell uses (the module's command line).
    pub name: String,
    /// The GGUF file on the host.
    pub path: PathBuf,
}

impl ModelFile {
    /// `NAME=FILE`, or `FILE` (named after the file: lower case, up to the first `.`).
    pub fn parse(arg: &str) -> Result<Self, String> {
        let (name, path) = match arg.split_once('=') {
            Some((n, p)) if !n.is_empty() && !n.contains('/') => (n.to_string(), PathBuf::from(p)),
            _ => {
                let path = PathBuf::from(arg);
                let stem = path
                    .file_name()
                    .and_then(|f| f.to_str())
                    .ok_or_else(|| format!("--model {arg}: not a file name"))?;
                let name = stem.split('.').next().unwrap_or(stem).to_ascii_lowercase();
                (name, path)
            }
        };
        if name.is_empty()
            || name == "manifest"
            || name.len() > 48
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "--model {arg}: model name `{name}` must be 1-48 letters, digits, `-`, `_` or `.` \
                 (and not `manifest`)"
            ));
        }
        if !path.is_file() {
            return Err(format!("--model {arg}: {} is not a file", path.display()));
        }
        Ok(ModelFile { name, path })
    }
}

/// What goes into an ISO besides the kernel.
#[derive(Debug, Clone)]
pub struct IsoSpec {
    /// The fixed entry to boot (when no model entry or custom line is the default).
    pub entry: Entry,
    /// GRUB menu timeout in seconds.
    pub timeout: u32,
    /// Model modules.
    pub models: Vec<ModelFile>,
    /// Model to boot by default (its menu entry); None: the first model, if any, when
    /// `entry` is `Normal`.
    pub default_model: Option<String>,
    /// An extra entry with this kernel command line, booted by default (tests use it
    /// for `exec=` scripts).
    pub custom: Option<String>,
}

impl IsoSpec {
    /// Just a fixed entry, no models.
    pub fn plain(entry: Entry, timeout: u32) -> Self {
        IsoSpec {
            entry,
            timeout,
            models: Vec::new(),
            default_model: None,
            custom: None,
        }
    }
}

/// Fixed menu entries: (title, kernel arguments), in `Entry` order.
const FIXED_ENTRIES: &[(&str, &str)] = &[
    ("EMBODIOS", ""),
    ("EMBODIOS (single core: nosmp)", "nosmp"),
    (
        "EMBODIOS self-test (test: run in-kernel tests, exit QEMU)",
        "test",
    ),
    (
        "EMBODIOS panic test (panic-test: deliberate panic with backtrace)",
        "panic-test",
    ),
    (
        "EMBODIOS exception test (fault-test: write to kernel code)",
        "fault-test",
    ),
    (
        "EMBODIOS stack overflow test (overflow-test: guard page, double fault)",
        "overflow-test",
    ),
];

/// Makes a GRUB ISO (BIOS + UEFI) booting `entry` after `timeout` seconds.
pub fn make_iso(elf: &Path, out: &Path, entry: Entry, timeout: u32) -> Result<(), String> {
    make_iso_with(elf, out, &IsoSpec::plain(entry, timeout))
}

/// Makes a GRUB ISO with model modules, their manifest and a menu entry per model.
pub fn make_iso_with(elf: &Path, out: &Path, spec: &IsoSpec) -> Result<(), String> {
    let tag = out
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("iso")
        .to_string();
    let stage = target_dir().join(format!("iso-stage-{tag}"));
    let _ = std::fs::remove_dir_all(&stage);
    let grub = stage.join("boot/grub");
    std::fs::create_dir_all(&grub).map_err(|e| format!("creating {}: {e}", grub.display()))?;
    std::fs::copy(elf, stage.join("boot/embodios-kernel"))
        .map_err(|e| format!("copying the kernel: {e}"))?;

    // Models: hard links where possible (they are large), a manifest line each.
    let mut names = std::collections::HashSet::new();
    for m in &spec.models {
        if !names.insert(m.name.as_str()) {
            return Err(format!("two models are named `{}`", m.name));
        }
    }
    let default_model = match &spec.default_model {
        Some(d) if !names.contains(d.as_str()) => {
            return Err(format!(
                "--default {d}: no such model (models: {})",
                spec.models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
        Some(d) => Some(d.clone()),
        None => spec.models.first().map(|m| m.name.clone()),
    };
    let mut modules = String::new();
    let mut manifest = String::from("# EMBODIOS model manifest: NAME FILE SIZE SHA256 default|-\n");
    if !spec.models.is_empty() {
        let dir = stage.join("boot/models");
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for m in &spec.models {
            let dest = dir.join(format!("{}.gguf", m.name));
            if std::fs::hard_link(&m.path, &dest).is_err() {
                std::fs::copy(&m.path, &dest)
                    .map_err(|e| format!("copying {}: {e}", m.path.display()))?;
            }
            let size = std::fs::metadata(&m.path)
                .map_err(|e| format!("{}: {e}", m.path.display()))?
                .len();
            let file = m
                .path
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("model.gguf")
                .replace(char::is_whitespace, "_");
            let flag = if default_model.as_deref() == Some(m.name.as_str()) {
                "default"
            } else {
                "-"
            };
            manifest.push_str(&format!(
                "{} {file} {size} {} {flag}\n",
                m.name,
                crate::models::sha256_file(&m.path)?
            ));
            modules.push_str(&format!(
                "    module2 /boot/models/{}.gguf {}\n",
                m.name, m.name
            ));
        }
        std::fs::write(stage.join("boot/models.manifest"), &manifest)
            .map_err(|e| format!("writing the manifest: {e}"))?;
        modules.push_str("    module2 /boot/models.manifest manifest\n");
    }

    let mut entries: Vec<(String, String)> = FIXED_ENTRIES
        .iter()
        .map(|(t, a)| (t.to_string(), a.to_string()))
        .collect();
    let mut default = spec.entry as usize;
    for m in &spec.models {
        if spec.entry == Entry::Normal && default_model.as_deref() == Some(m.name.as_str()) {
            default = entries.len();
        }
        entries.push((
            format!("EMBODIOS with {} (model={})", m.name, m.name),
            format!("model={}", m.name),
        ));
    }
    if let Some(line) = &spec.custom {
        default = entries.len();
        entries.push(("EMBODIOS (custom command line)".to_string(), line.clone()));
    }
    let mut menu = String::new();
    for (title, args) in &entries {
        let args = if args.is_empty() {
            String::new()
        } else {
            format!(" {args}")
        };
        menu.push_str(&format!(
            "menuentry \"{title}\" {{\n    multiboot2 /boot/embodios-kernel{args}\n{modules}    boot\n}}\n\n"
        ));
    }
    let template = std::fs::read_to_string(kernel_dir().join("grub/grub.cfg.in"))
        .map_err(|e| format!("reading grub.cfg.in: {e}"))?;
    let cfg = template
        .replace("@TIMEOUT@", &spec.timeout.to_string())
        .replace("@DEFAULT@", &default.to_string())
        .replace("@ENTRIES@", &menu);
    std::fs::write(grub.join("grub.cfg"), cfg).map_err(|e| format!("writing grub.cfg: {e}"))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let output = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(out)
        .arg(&stage)
        .output()
        .map_err(|e| format!("running grub-mkrescue: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "grub-mkrescue failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let _ = std::fs::remove_dir_all(&stage);
    Ok(())
}

fn default_iso() -> PathBuf {
    target_dir().join("embodios.iso")
}

/// `cargo xtask build-kernel`.
pub fn cmd_build(_args: &[String]) -> Result<(), String> {
    let elf = build()?;
    println!("{}", elf.display());
    Ok(())
}

/// `cargo xtask iso [--model [NAME=]FILE]... [--default NAME] [--out PATH]
/// [--entry normal|nosmp|test|panic-test] [--timeout S] [--cmdline ARGS]`.
pub fn cmd_iso(args: &[String]) -> Result<(), String> {
    let mut out = default_iso();
    let mut spec = IsoSpec::plain(Entry::Normal, 3);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(it.next().ok_or("--out needs a path")?),
            "--entry" => spec.entry = Entry::parse(it.next().ok_or("--entry needs a name")?)?,
            "--model" => spec.models.push(ModelFile::parse(
                it.next().ok_or("--model needs a GGUF file")?,
            )?),
            "--default" => {
                spec.default_model = Some(it.next().ok_or("--default needs a model name")?.clone())
            }
            "--cmdline" => {
                spec.custom = Some(it.next().ok_or("--cmdline needs kernel arguments")?.clone())
            }
            "--timeout" => {
                spec.timeout = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--timeout needs seconds")?
            }
            other => return Err(format!("unknown option `{other}` for iso")),
        }
    }
    ensure_tools()?;
    let elf = build()?;
    make_iso_with(&elf, &out, &spec)?;
    println!("{}", out.display());
    Ok(())
}

/// `cargo xtask run-kernel [--model [NAME=]FILE]... [--default NAME] [--cores N]
/// [--mem SIZE] [--accel kvm|tcg|auto] [--uefi] [--entry E]`: boots the ISO with the
/// serial console on this terminal (with models: the default model loaded, 2 GiB RAM
/// unless `--mem` says otherwise).
pub fn cmd_run(args: &[String]) -> Result<(), String> {
    let mut cores = 2;
    let mut mem = "1G".to_string();
    let mut accel = Accel::Auto;
    let mut firmware = Firmware::Bios;
    let mut entry = Entry::Normal;
    let mut models = Vec::new();
    let mut default_model = None;
    let mut mem_given = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--model" => models.push(ModelFile::parse(
                it.next().ok_or("--model needs a GGUF file")?,
            )?),
            "--default" => {
                default_model = Some(it.next().ok_or("--default needs a model name")?.clone())
            }
            "--cores" => {
                cores = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--cores needs a number")?
            }
            "--mem" => {
                mem = it.next().ok_or("--mem needs a size like 1G")?.clone();
                mem_given = true;
            }
            "--accel" => accel = Accel::parse(it.next().ok_or("--accel needs kvm, tcg or auto")?)?,
            "--uefi" => firmware = Firmware::Uefi,
            "--entry" => entry = Entry::parse(it.next().ok_or("--entry needs a name")?)?,
            other => return Err(format!("unknown option `{other}` for run-kernel")),
        }
    }
    ensure_tools()?;
    let elf = build()?;
    if !models.is_empty() && !mem_given {
        // The modules stay in RAM next to the heap (at most half of RAM).
        mem = "2G".to_string();
    }
    let iso = target_dir().join("embodios-run.iso");
    let spec = IsoSpec {
        entry,
        timeout: 1,
        models,
        default_model,
        custom: None,
    };
    make_iso_with(&elf, &iso, &spec)?;
    let accel = qemu::resolve_accel(accel, &iso);
    let opts = qemu::Options {
        iso,
        cores,
        mem,
        firmware,
        accel,
        monitor: None,
    };
    let mut cmd = opts.command();
    eprintln!("xtask: {cmd:?}");
    eprintln!(
        "xtask: the serial console is this terminal; `shutdown` powers off, Ctrl-C quits QEMU"
    );
    let status = cmd.status().map_err(|e| format!("running QEMU: {e}"))?;
    match status.code() {
        Some(0) | Some(qemu::EXIT_SUCCESS) => Ok(()),
        _ => Err(format!("QEMU exited with {status}")),
    }
}

/// Fails unless the ELF contains AVX2 code (ymm registers and FMA), which a soft-float
/// build silently lacks.
pub fn check_avx2(elf: &Path) -> Result<(), String> {
    let out = Command::new("objdump")
        .arg("-d")
        .arg("--no-show-raw-insn")
        .arg(elf)
        .output()
        .map_err(|e| format!("running objdump: {e}"))?;
    if !out.status.success() {
        return Err(format!("objdump failed ({})", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let ymm = text.lines().filter(|l| l.contains("%ymm")).count();
    let fma = text.lines().filter(|l| l.contains("vfmadd")).count();
    if ymm == 0 || fma == 0 {
        return Err(format!(
            "kernel ELF has {ymm} instructions on ymm registers and {fma} FMA instructions: \
             the build is not hard-float with AVX2 (check x86_64-embodios.json)"
        ));
    }
    eprintln!("xtask: kernel ELF has {ymm} ymm instructions and {fma} FMA instructions");
    Ok(())
}

/// Symbol table of the ELF (address-sorted), for symbolizing backtraces.
fn symbols(elf: &Path) -> Result<Vec<(u64, String)>, String> {
    let out = Command::new("nm")
        .args(["-n", "-C"])
        .arg(elf)
        .output()
        .map_err(|e| format!("running nm: {e}"))?;
    let mut syms = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !matches!(kind, "t" | "T" | "w" | "W") {
            continue;
        }
        if let Ok(a) = u64::from_str_radix(addr, 16) {
            syms.push((a, name.to_string()));
        }
    }
    Ok(syms)
}

fn symbolize(syms: &[(u64, String)], addr: u64) -> Option<&str> {
    // A return address points after the call; look up the call itself.
    let a = addr.checked_sub(1)?;
    let i = syms.partition_point(|(s, _)| *s <= a);
    (i > 0).then(|| syms[i - 1].1.as_str())
}

/// Backtrace addresses printed by the kernel (`  #N 0x...` lines).
fn backtrace_addrs(output: &str) -> Vec<u64> {
    output
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix('#')?;
            let hex = rest.split_whitespace().nth(1)?.strip_prefix("0x")?;
            u64::from_str_radix(hex, 16).ok()
        })
        .collect()
}

struct Isos {
    normal: PathBuf,
    test: PathBuf,
    panic: PathBuf,
    fault: PathBuf,
    overflow: PathBuf,
}

fn build_test_isos(elf: &Path) -> Result<Isos, String> {
    let dir = target_dir().join("iso");
    let isos = Isos {
        normal: dir.join("embodios-normal.iso"),
        test: dir.join("embodios-test.iso"),
        panic: dir.join("embodios-panic.iso"),
        fault: dir.join("embodios-fault.iso"),
        overflow: dir.join("embodios-overflow.iso"),
    };
    make_iso(elf, &isos.normal, Entry::Normal, 0)?;
    make_iso(elf, &isos.test, Entry::Test, 0)?;
    make_iso(elf, &isos.panic, Entry::PanicTest, 0)?;
    make_iso(elf, &isos.fault, Entry::FaultTest, 0)?;
    make_iso(elf, &isos.overflow, Entry::OverflowTest, 0)?;
    Ok(isos)
}

fn tcg(iso: &Path, firmware: Firmware) -> qemu::Options {
    qemu::Options {
        iso: iso.to_path_buf(),
        cores: 2,
        mem: "1G".into(),
        firmware,
        accel: Accel::Tcg,
        monitor: None,
    }
}

/// Counts non-black pixels in the top `rows` rows of a binary PPM (P6) screenshot.
fn lit_pixels(ppm: &Path, rows: usize) -> Result<usize, String> {
    let data = std::fs::read(ppm).map_err(|e| format!("reading {}: {e}", ppm.display()))?;
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 && i < data.len() {
        while i < data.len() && data[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < data.len() && !data[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&data[start..i]).into_owned());
    }
    if fields.first().map(String::as_str) != Some("P6") || fields.len() < 4 {
        return Err(format!("{} is not a binary PPM", ppm.display()));
    }
    let width: usize = fields[1].parse().map_err(|_| "bad PPM width".to_string())?;
    let pixels = &data[(i + 1).min(data.len())..];
    let n = (width * rows * 3).min(pixels.len());
    Ok(pixels[..n]
        .chunks_exact(3)
        .filter(|p| p.iter().any(|&c| c > 64))
        .count())
}

const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// In-kernel tests: boots the `test` entry, expects every test ok and exit status 33.
fn test_in_kernel(iso: &Path) -> Result<(), String> {
    let mut s = Session::spawn(&tcg(iso, Firmware::Bios))?;
    let code = s.wait_exit(BOOT_TIMEOUT + STEP_TIMEOUT);
    let out = s.output();
    let r = (|| {
        let code = code?;
        if !out.contains("ktest:") || !out.contains(" 0 failed") {
            return Err("the test table did not report `0 failed`".to_string());
        }
        if code != qemu::EXIT_SUCCESS {
            return Err(format!(
                "QEMU exit status {code}, want {}",
                qemu::EXIT_SUCCESS
            ));
        }
        for name in [
            "frame_allocator",
            "heap",
            "paging_permissions",
            "timer",
            "simd",
            "vector_state_across_interrupts",
            "smp_sum",
            "line_editor",
            "edit_distance",
            "symbols",
            "cmdline",
            "manifest",
            "settings",
            "latency_stats",
            "prefill_pieces",
            "utf8_stream",
            "counting_allocator",
        ] {
            if !out.contains(&format!("test {name} ... ok")) {
                return Err(format!("test {name} did not pass"));
            }
        }
        Ok(())
    })();
    s.with_log("in-kernel tests", r)?;
    for line in out
        .lines()
        .filter(|l| l.starts_with("test ") || l.starts_with("ktest:") || l.starts_with("  smp"))
    {
        eprintln!("  {line}");
    }
    Ok(())
}

/// Deliberate panic: message, a backtrace that symbolizes to the panicking functions,
/// and the failure exit status.
fn test_panic(iso: &Path, elf: &Path) -> Result<(), String> {
    let mut s = Session::spawn(&tcg(iso, Firmware::Bios))?;
    let code = s.wait_exit(BOOT_TIMEOUT);
    let out = s.output();
    let syms = symbols(elf)?;
    let r = (|| {
        let code = code?;
        if !out.contains("KERNEL PANIC") || !out.contains("deliberate panic for the panic test") {
            return Err("panic message missing".to_string());
        }
        if !out.contains("backtrace:") {
            return Err("backtrace missing".to_string());
        }
        let names: Vec<&str> = backtrace_addrs(&out)
            .into_iter()
            .filter_map(|a| symbolize(&syms, a))
            .collect();
        for want in ["panic_test_inner", "panic_test_outer", "kmain"] {
            if !names.iter().any(|n| n.contains(want)) {
                return Err(format!("backtrace does not reach `{want}`: {names:?}"));
            }
        }
        if code != qemu::EXIT_FAILURE {
            return Err(format!(
                "QEMU exit status {code}, want {}",
                qemu::EXIT_FAILURE
            ));
        }
        // The kernel symbolizes its own backtrace from the ELF symbols GRUB loaded.
        for want in [
            "embodios_kernel::ktest::panic_test_inner+0x",
            "embodios_kernel::kmain+0x",
        ] {
            if !out.contains(want) {
                return Err(format!("the kernel's own backtrace lacks `{want}`"));
            }
        }
        eprintln!("  backtrace: {}", names.join(" <- "));
        Ok(())
    })();
    s.with_log("panic test", r)
}

/// Deliberate CPU exceptions: the report names the exception, shows registers and a
/// backtrace, and QEMU exits with the failure status.
fn test_exception(iso: &Path, elf: &Path, want: &[&str], frames: &[&str]) -> Result<(), String> {
    let mut s = Session::spawn(&tcg(iso, Firmware::Bios))?;
    let code = s.wait_exit(BOOT_TIMEOUT);
    let out = s.output();
    let syms = symbols(elf)?;
    let r = (|| {
        let code = code?;
        for w in want.iter().chain(&[
            "CPU EXCEPTION",
            "rip ",
            "rsp ",
            "rax ",
            "r15 ",
            "backtrace:",
        ]) {
            if !out.contains(w) {
                return Err(format!("exception report lacks {w:?}"));
            }
        }
        let names: Vec<&str> = backtrace_addrs(&out)
            .into_iter()
            .filter_map(|a| symbolize(&syms, a))
            .collect();
        for f in frames {
            if !names.iter().any(|n| n.contains(f)) {
                return Err(format!("backtrace does not reach `{f}`: {names:?}"));
            }
        }
        if code != qemu::EXIT_FAILURE {
            return Err(format!(
                "QEMU exit status {code}, want {}",
                qemu::EXIT_FAILURE
            ));
        }
        Ok(())
    })();
    s.with_log("exception test", r)
}

/// Boots to the prompt, runs a scripted shell session, powers off. Returns the time
/// from QEMU start to the prompt.
fn test_shell(iso: &Path) -> Result<Duration, String> {
    let mut opts = tcg(iso, Firmware::Bios);
    opts.monitor = Some(target_dir().join("iso/monitor.sock"));
    let mut s = Session::spawn(&opts)?;
    let r = (|| {
        let boot = s.wait_for("embodios> ", BOOT_TIMEOUT)?;
        // Each Enter style a client may send: CR, LF, CR LF.
        let script: &[(&[u8], &[&str])] = &[
            (
                b"help\r",
                &[
                    "version",
                    "mem",
                    "cpu",
                    "uptime",
                    "clear",
                    "reboot",
                    "shutdown",
                    "embodios> ",
                ],
            ),
            (b"version\n", &["EMBODIOS kernel", "embodios> "]),
            (
                b"cpu\r\n",
                &[
                    "cores: 2 online of 2",
                    "AVX2: on",
                    // TCG offers no AVX-512, so the engine runs its AVX2 sets.
                    "engine kernels: avx2+fma, panel kernels: avx2",
                    "AVX-512: off",
                    "TSC:",
                    "embodios> ",
                ],
            ),
            (b"mem\r", &["usable RAM:", "heap:", "embodios> "]),
            (b"uptime\r", &["up ", "embodios> "]),
            (b"clear\r", &["\x1b[2J", "embodios> "]),
            (b"shutdwn\r", &["did you mean `shutdown`?", "embodios> "]),
            (b"vresion\r", &["did you mean `version`?", "embodios> "]),
            // Tab completion of a unique prefix.
            (b"upt\t\r", &["uptime ", "up ", "embodios> "]),
            // History: arrow up recalls the last command.
            (b"\x1b[A\r", &["uptime", "up ", "embodios> "]),
            // Backspace edits the line.
            (b"memx\x7f\r", &["usable RAM:", "embodios> "]),
            // Ctrl-C abandons the line.
            (b"reboot\x03", &["^C", "embodios> "]),
        ];
        for (input, expect) in script {
            s.send(input)?;
            for e in *expect {
                s.wait_for(e, STEP_TIMEOUT).map_err(|err| {
                    format!("after sending {:?}: {err}", String::from_utf8_lossy(input))
                })?;
            }
        }
        // The framebuffer console shows the same text: the top of the screen is lit.
        s.send(b"version\r")?;
        s.wait_for("display: 1024x768 framebuffer console", STEP_TIMEOUT)?;
        s.wait_for("embodios> ", STEP_TIMEOUT)?;
        let shot = target_dir().join("iso/screen.ppm");
        let _ = std::fs::remove_file(&shot);
        s.monitor(&format!("screendump {}", shot.display()))?;
        std::thread::sleep(Duration::from_millis(500));
        let lit = lit_pixels(&shot, 200)?;
        if lit < 2000 {
            return Err(format!(
                "framebuffer shows almost nothing ({lit} lit pixels in the top 200 rows)"
            ));
        }
        // PS/2 keyboard: type `uptime` + Enter as key presses.
        for key in ["u", "p", "t", "i", "m", "e", "ret"] {
            s.monitor(&format!("sendkey {key}"))?;
        }
        s.wait_for("uptime", STEP_TIMEOUT)?;
        s.wait_for("up ", STEP_TIMEOUT)?;
        s.wait_for("embodios> ", STEP_TIMEOUT)?;
        // Interrupt counters: serial and keyboard input arrived through the I/O APIC.
        s.send(b"cpu\r")?;
        s.wait_for("embodios> ", STEP_TIMEOUT)?;
        let out = s.output();
        let line = out
            .lines()
            .rev()
            .find(|l| l.starts_with("interrupts: "))
            .ok_or("`cpu` printed no interrupt counters")?;
        let counts: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        if counts.len() != 3 || counts.contains(&0) {
            return Err(format!(
                "want timer, serial and keyboard interrupts all > 0: {line:?}"
            ));
        }
        s.send(b"shutdown\r")?;
        let code = s.wait_exit(STEP_TIMEOUT)?;
        if code != 0 {
            return Err(format!(
                "`shutdown` left QEMU with status {code}, want 0 (ACPI power-off)"
            ));
        }
        Ok(boot)
    })();
    s.with_log("shell session", r)
}

/// Boots the normal entry under `firmware` to the prompt, checks the firmware kind and
/// both cores, then reboots (QEMU runs with -no-reboot, so it exits with status 0).
fn test_boot(iso: &Path, firmware: Firmware) -> Result<Duration, String> {
    let mut s = Session::spawn(&tcg(iso, firmware))?;
    let r = (|| {
        let t = s.wait_for("embodios> ", BOOT_TIMEOUT)?;
        s.send(b"version\r")?;
        let fw = if firmware == Firmware::Uefi {
            "firmware: UEFI"
        } else {
            "firmware: BIOS"
        };
        s.wait_for(fw, STEP_TIMEOUT)?;
        s.wait_for("display: 1024x768 framebuffer console", STEP_TIMEOUT)?;
        s.send(b"cpu\r")?;
        s.wait_for("cores: 2 online of 2", STEP_TIMEOUT)?;
        s.wait_for("embodios> ", STEP_TIMEOUT)?;
        s.send(b"reboot\r")?;
        s.wait_for("rebooting", STEP_TIMEOUT)?;
        let code = s.wait_exit(STEP_TIMEOUT)?;
        if code != 0 {
            return Err(format!(
                "`reboot` left QEMU with status {code}, want 0 (-no-reboot exit)"
            ));
        }
        Ok(t)
    })();
    s.with_log(&format!("boot under {firmware:?}"), r)
}

/// The Gemma 3 270M file: `$EMBODIOS_MODEL_GEMMA3_270M`, else the model cache.
fn gemma_path() -> Result<PathBuf, String> {
    qemu::model_path("EMBODIOS_MODEL_GEMMA3_270M", "gemma3-270m")
}

/// Test model files: the tiny random llama (written by the engine's example), a
/// truncated copy of it and a file that is not GGUF.
struct TestModels {
    tiny: PathBuf,
    truncated: PathBuf,
    junk: PathBuf,
    /// A valid GGUF file whose architecture the engine does not run.
    foreign: PathBuf,
    smollm2: PathBuf,
    gemma: PathBuf,
}

/// A minimal GGUF v3 file: no tensors, one key (`general.architecture` = `arch`),
/// padded to the default 32-byte alignment.
fn foreign_arch_gguf(arch: &str) -> Vec<u8> {
    let key = "general.architecture";
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // key-value pairs
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(&8u32.to_le_bytes()); // string
    b.extend_from_slice(&(arch.len() as u64).to_le_bytes());
    b.extend_from_slice(arch.as_bytes());
    b.resize(b.len().next_multiple_of(32), 0);
    b
}

fn test_models() -> Result<TestModels, String> {
    let dir = target_dir().join("test-models");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let smollm2 = smollm2_path()?;
    let gemma = gemma_path()?;
    let tiny = qemu::tiny_model(&dir)?;
    let bytes = std::fs::read(&tiny).map_err(|e| format!("reading {}: {e}", tiny.display()))?;
    // Cut inside the tensor data: the header parses, the last tensors run past the end.
    let truncated = dir.join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() * 3 / 4])
        .map_err(|e| format!("writing {}: {e}", truncated.display()))?;
    let junk = dir.join("not-gguf.gguf");
    std::fs::write(&junk, "this is a text file, not a GGUF model\n".repeat(100))
        .map_err(|e| format!("writing {}: {e}", junk.display()))?;
    let foreign = dir.join("foreign-arch.gguf");
    std::fs::write(&foreign, foreign_arch_gguf("mamba"))
        .map_err(|e| format!("writing {}: {e}", foreign.display()))?;
    Ok(TestModels {
        tiny,
        truncated,
        junk,
        foreign,
        smollm2,
        gemma,
    })
}

/// Splits a console log into (command, output) pairs at each `embodios> ` prompt.
fn sections(out: &str) -> Vec<(String, String)> {
    out.split("embodios> ")
        .skip(1)
        .map(|chunk| match chunk.split_once("\r\n") {
            Some((cmd, body)) => (cmd.trim().to_string(), body.to_string()),
            None => (chunk.trim().to_string(), String::new()),
        })
        .collect()
}

/// Output of the `nth` (0-based) run of `cmd`.
fn output_of<'a>(secs: &'a [(String, String)], cmd: &str, nth: usize) -> Result<&'a str, String> {
    secs.iter()
        .filter(|(c, _)| c == cmd)
        .nth(nth)
        .map(|(_, b)| b.as_str())
        .ok_or_else(|| format!("no output for `{cmd}` (#{nth})"))
}

fn expect_in(body: &str, cmd: &str, wants: &[&str]) -> Result<(), String> {
    for w in wants {
        if !body.contains(w) {
            return Err(format!("`{cmd}` output lacks {w:?}:\n{body}"));
        }
    }
    Ok(())
}

/// The streamed text of a `generate` run (before its `[generate: ...]` line), with
/// the console's CR LF turned back into LF.
fn generated_text(body: &str) -> Result<String, String> {
    let end = body
        .find("\r\n[generate: ")
        .ok_or_else(|| format!("generate printed no summary line:\n{body}"))?;
    Ok(body[..end].replace("\r\n", "\n"))
}

/// Numbers in a `[turn: N new prompt tokens, M reused ...]` line.
fn turn_counts(out: &str) -> Result<(u64, u64), String> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with("[turn: "))
        .ok_or("talk printed no [turn: ...] line")?;
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums[..] {
        [new, reused, ..] => Ok((new, reused)),
        _ => Err(format!("bad turn line {line:?}")),
    }
}

const KEYS_LIST: &str =
    "valid keys: temp, top_k, top_p, min_p, repeat_penalty, seed, max_tokens, threads";

/// Figures the model test measured, for the summary.
pub struct ModelRun {
    /// `bench --json` on the tiny model (2 cores).
    pub bench_tiny: String,
    /// SmolLM2's summary line.
    pub smollm2_line: String,
    /// Gemma 3's summary line.
    pub gemma_line: String,
    /// SmolLM2's memory beyond the weights at context 512, bytes.
    pub smollm2_beyond: u64,
    /// Heap allocations counted over the tiny model's benchmark decode loop.
    pub bench_allocations: String,
    /// Seconds from Ctrl-C to the prompt during a prefill.
    pub prefill_stop_s: f64,
    /// Free heap before Gemma was loaded and after it was unloaded.
    pub free_heap: (u64, u64),
}

/// `N bytes free, N bytes in N allocations, N free pieces` after `after` in `text`.
fn heap_numbers(text: &str, after: &str) -> Result<Vec<u64>, String> {
    let line = text
        .lines()
        .find_map(|l| l.split_once(after).map(|(_, r)| r))
        .ok_or_else(|| format!("no heap line ({after:?}) in:\n{text}"))?;
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    if nums.len() != 4 {
        return Err(format!("bad heap line {line:?}"));
    }
    Ok(nums)
}

/// Memory beyond the weights SmolLM2 Q4_1 may take at context 512 (issue 5's bound).
const SMOLLM2_BEYOND_MAX: u64 = 25_000_000;

/// The number before `unit` in `text` (`... 123 bytes ...`), after `after`.
fn number_before(text: &str, after: &str, unit: &str) -> Option<u64> {
    let rest = &text[text.find(after)? + after.len()..];
    let end = rest.find(unit)?;
    rest[..end]
        .split(|c: char| !c.is_ascii_digit())
        .rfind(|w| !w.is_empty())?
        .parse()
        .ok()
}

/// The kernel runs models: an ISO with the tiny random llama, SmolLM2, Gemma 3 270M,
/// a truncated, a non-GGUF and a foreign-architecture module; an `exec=` script checks
/// the registry commands, greedy output equal to the host CLI's (tiny: 64 tokens on 2
/// and on 1 core; SmolLM2: 8 tokens; Gemma 3: 3 tokens), settings errors, `bench
/// --json` with no heap allocation per decoded token, `verify`, two models loaded at
/// once, switched, one unloaded with the free heap back to the byte, the other still
/// generating, SmolLM2's memory beyond the weights at context 512; then `talk` over
/// serial (KV cache reuse between turns, /reset) and Ctrl-C during a reply, a
/// `generate` and a prefill; then a boot with too little memory for SmolLM2.
fn test_model_session(elf: &Path) -> Result<ModelRun, String> {
    let m = test_models()?;
    const TINY_PROMPT: &str = "Once upon a time";
    const FRANCE: &str = "The capital of France is";
    const GEMMA_PROMPT: &str = "Paris is";
    const SMOLLM2_TOKENS: usize = 8;
    const GEMMA_TOKENS: usize = 3;
    let host_tiny = host_greedy(&m.tiny, TINY_PROMPT, 64)?;
    let host_smollm2 = host_greedy(&m.smollm2, FRANCE, SMOLLM2_TOKENS)?;
    let host_gemma = host_greedy(&m.gemma, GEMMA_PROMPT, GEMMA_TOKENS)?;
    let script = [
        "models".to_string(),
        "model".into(),
        "set temp 0".into(),
        "set max_tokens 64".into(),
        format!("generate {TINY_PROMPT}"),
        "set threads 1".into(),
        format!("generate {TINY_PROMPT}"),
        "set threads 2".into(),
        "set foo 1".into(),
        "set temp abc".into(),
        "set threads 99".into(),
        "get".into(),
        "get top_k".into(),
        "get nope".into(),
        "load trunc".into(),
        "load junk".into(),
        "load nope".into(),
        "load foreign".into(),
        "load smollm2 --ctx 99999".into(),
        "bench --json".into(),
        "perf".into(),
        "verify tiny".into(),
        "load smollm2 --ctx 512".into(),
        "status".into(),
        "load gemma".into(),
        "models".into(),
        "switch gemma".into(),
        format!("set max_tokens {GEMMA_TOKENS}"),
        format!("generate {GEMMA_PROMPT}"),
        "switch smollm2".into(),
        "unload gemma".into(),
        "status".into(),
        format!("set max_tokens {SMOLLM2_TOKENS}"),
        format!("generate {FRANCE}"),
        "model".into(),
        "models".into(),
        "switch tiny".into(),
        "unload smollm2".into(),
        "unload smollm2".into(),
        "status".into(),
        "perf".into(),
        "help talk".into(),
    ]
    .join("; ");
    let model = |name: &str, path: &PathBuf| ModelFile {
        name: name.into(),
        path: path.clone(),
    };
    let spec = IsoSpec {
        entry: Entry::Normal,
        timeout: 0,
        models: vec![
            model("tiny", &m.tiny),
            model("smollm2", &m.smollm2),
            model("gemma", &m.gemma),
            model("trunc", &m.truncated),
            model("junk", &m.junk),
            model("foreign", &m.foreign),
        ],
        default_model: Some("tiny".into()),
        custom: Some(format!("model=tiny threads=2 exec=\"{script}\"")),
    };
    let iso = target_dir().join("iso/embodios-models.iso");
    make_iso_with(elf, &iso, &spec)?;
    let mut opts = tcg(&iso, Firmware::Bios);
    opts.mem = "2G".into();
    let mut s = Session::spawn(&opts)?;
    let r = (|| {
        s.wait_for("model `tiny` loaded and active", BOOT_TIMEOUT * 2)?;
        // SmolLM2 and Gemma 3 run at tens of seconds per token under TCG.
        s.wait_for("exec: done", Duration::from_secs(1800))?;
        let out = s.output();
        for want in [
            "model module `trunc` refused: not a valid GGUF file",
            "model module `junk` refused: not a valid GGUF file",
            "not a GGUF file (magic bytes",
        ] {
            if !out.contains(want) {
                return Err(format!("boot log lacks {want:?}"));
            }
        }
        let secs = sections(&out);
        let models = output_of(&secs, "models", 0)?;
        let row = |models: &str, name: &str| {
            models
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or("")
                .to_string()
        };
        for (name, wants) in [
            ("tiny", &["llama", "loaded, active"][..]),
            ("smollm2", &["llama", "134.5M", "Q4_1", "available"][..]),
            ("gemma", &["gemma3", "268.1M", "Q4_K", "available"][..]),
            ("trunc", &["unusable: not a valid GGUF file"][..]),
            ("junk", &["unusable: not a valid GGUF file"][..]),
            ("foreign", &["mamba", "available"][..]),
        ] {
            expect_in(&row(models, name), &format!("models ({name})"), wants)?;
        }
        expect_in(
            output_of(&secs, "model", 0)?,
            "model",
            &["active model: tiny", "architecture:  llama", "KV cache"],
        )?;
        let gen = format!("generate {TINY_PROMPT}");
        for (nth, cores) in [(0, "2 cores"), (1, "1 cores")] {
            let body = output_of(&secs, &gen, nth)?;
            let text = generated_text(body)?;
            if text != host_tiny {
                return Err(format!(
                    "tiny model on {cores}: kernel text differs from the host CLI\nkernel: {text:?}\nhost:   {host_tiny:?}"
                ));
            }
            expect_in(
                body,
                &gen,
                &["stopped on max tokens", "64 generated", cores],
            )?;
        }
        expect_in(
            output_of(&secs, "set foo 1", 0)?,
            "set foo 1",
            &["unknown setting `foo`", KEYS_LIST],
        )?;
        expect_in(
            output_of(&secs, "set temp abc", 0)?,
            "set temp abc",
            &["bad value `abc` for temp", KEYS_LIST],
        )?;
        expect_in(
            output_of(&secs, "set threads 99", 0)?,
            "set threads 99",
            &["bad value `99` for threads"],
        )?;
        expect_in(
            output_of(&secs, "get", 0)?,
            "get",
            &[
                "temp = 0",
                "top_k = 40",
                "top_p = 0.95",
                "min_p = 0.05",
                "repeat_penalty = 1",
                "seed = ",
                "max_tokens = 64",
                "threads = 2",
            ],
        )?;
        expect_in(
            output_of(&secs, "get top_k", 0)?,
            "get top_k",
            &["top_k = 40"],
        )?;
        expect_in(
            output_of(&secs, "get nope", 0)?,
            "get nope",
            &["unknown setting `nope`", KEYS_LIST],
        )?;
        expect_in(
            output_of(&secs, "load trunc", 0)?,
            "load trunc",
            &["model `trunc` cannot be used: not a valid GGUF file"],
        )?;
        expect_in(
            output_of(&secs, "load junk", 0)?,
            "load junk",
            &["model `junk` cannot be used", "not a GGUF file"],
        )?;
        expect_in(
            output_of(&secs, "load nope", 0)?,
            "load nope",
            &["no model named `nope`"],
        )?;
        expect_in(
            output_of(&secs, "load foreign", 0)?,
            "load foreign",
            &["cannot load `foreign`: architecture `mamba` is not supported"],
        )?;
        expect_in(
            output_of(&secs, "load smollm2 --ctx 99999", 0)?,
            "load smollm2 --ctx 99999",
            &["--ctx 99999 for `smollm2`: want 1 to 8192"],
        )?;
        let bench = output_of(&secs, "bench --json", 0)?;
        let line = bench
            .lines()
            .find(|l| l.starts_with('{'))
            .ok_or_else(|| format!("bench --json printed no JSON:\n{bench}"))?
            .to_string();
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| format!("bench JSON {line:?}: {e}"))?;
        for key in [
            "ttft_ms",
            "prefill_tok_s",
            "decode_tok_s",
            "itl_p50_ms",
            "itl_p99_ms",
            "itl_stddev_ms",
        ] {
            if !v[key].as_f64().is_some_and(|x| x >= 0.0) {
                return Err(format!("bench JSON lacks a number for {key}: {line}"));
            }
        }
        if v["model"] != "tiny"
            || v["threads"] != 2
            || v["prompt_tokens"] != 64
            || v["gen_tokens"] != 128
        {
            return Err(format!(
                "bench JSON: want tiny, 2 threads, 64 + 128 tokens: {line}"
            ));
        }
        if v["decode_tok_s"].as_f64().unwrap_or(0.0) <= 0.0 {
            return Err(format!("bench JSON: no decode speed: {line}"));
        }
        // No heap allocation per decoded token (issue 5): the counting allocator saw
        // none in the benchmark's decode loop after the warm-up tokens.
        let perf = output_of(&secs, "perf", 0)?;
        let allocs = perf
            .lines()
            .find(|l| l.contains("heap allocations:"))
            .ok_or_else(|| format!("perf shows no allocation count:\n{perf}"))?
            .trim()
            .to_string();
        if !allocs.contains("heap allocations: 0 in 125 decoded tokens") {
            return Err(format!(
                "the benchmark's decode loop allocated (want 0 in 125 tokens): {allocs}"
            ));
        }
        expect_in(
            output_of(&secs, "verify tiny", 0)?,
            "verify tiny",
            &["verify tiny: OK"],
        )?;

        // Two large models at once.
        expect_in(
            output_of(&secs, "load smollm2 --ctx 512", 0)?,
            "load smollm2 --ctx 512",
            &["loaded `smollm2`", "context 512", "beyond the weights"],
        )?;
        let heap_before = heap_numbers(output_of(&secs, "status", 0)?, "heap:    ")?;
        expect_in(
            output_of(&secs, "load gemma", 0)?,
            "load gemma",
            &["loaded `gemma`", "context 2048"],
        )?;
        let both = output_of(&secs, "models", 1)?;
        for (name, state) in [
            ("tiny", "loaded, active"),
            ("smollm2", "loaded"),
            ("gemma", "loaded"),
        ] {
            if !row(both, name).ends_with(state) {
                return Err(format!("after loading both, want {name} {state}:\n{both}"));
            }
        }
        let check_gen = |prompt: &str, host: &str, who: &str| -> Result<String, String> {
            let body = output_of(&secs, &format!("generate {prompt}"), 0)?;
            let text = generated_text(body)?;
            if text != host {
                return Err(format!(
                    "{who}: kernel text differs from the host CLI\nkernel: {text:?}\nhost:   {host:?}"
                ));
            }
            Ok(body
                .lines()
                .find(|l| l.starts_with("[generate: "))
                .unwrap_or("")
                .to_string())
        };
        let gemma_line = check_gen(GEMMA_PROMPT, &host_gemma, "Gemma 3")?;
        expect_in(
            &gemma_line,
            "generate (gemma)",
            &["gemma:", &format!("{GEMMA_TOKENS} generated")],
        )?;
        expect_in(
            output_of(&secs, "unload gemma", 0)?,
            "unload gemma",
            &["unloaded `gemma`", "returned to the heap"],
        )?;
        let heap_after = heap_numbers(output_of(&secs, "status", 1)?, "heap:    ")?;
        // Every byte Gemma's load and generation took is back: the same free bytes, the
        // same live allocations and the same free pieces as before `load gemma`.
        let (free_before, free_after) = (heap_before[0], heap_after[0]);
        if heap_after != heap_before {
            return Err(format!(
                "the heap after `unload gemma` differs from before `load gemma`: \
                 (free bytes, bytes allocated, allocations, free pieces) {heap_after:?}, before {heap_before:?}"
            ));
        }
        let smollm2_line = check_gen(FRANCE, &host_smollm2, "SmolLM2 (after unloading Gemma)")?;
        expect_in(
            &smollm2_line,
            "generate (smollm2)",
            &["smollm2:", &format!("{SMOLLM2_TOKENS} generated")],
        )?;
        let info = output_of(&secs, "model", 1)?;
        expect_in(
            info,
            "model (smollm2)",
            &["active model: smollm2", "context:       512 tokens"],
        )?;
        let beyond = number_before(info, "beyond the weights (", " bytes")
            .ok_or_else(|| format!("`model` shows no memory beyond the weights:\n{info}"))?;
        if beyond > SMOLLM2_BEYOND_MAX {
            return Err(format!(
                "SmolLM2 at context 512 takes {beyond} bytes beyond the weights (at most {SMOLLM2_BEYOND_MAX}):\n{info}"
            ));
        }
        let after = output_of(&secs, "models", 2)?;
        if !row(after, "smollm2").ends_with("loaded, active")
            || !row(after, "gemma").ends_with("available")
        {
            return Err(format!(
                "after `unload gemma`, want smollm2 active and gemma available:\n{after}"
            ));
        }
        let unload = output_of(&secs, "unload smollm2", 0)?;
        let freed = number_before(unload, "returned to the heap (", " bytes)")
            .ok_or_else(|| format!("`unload smollm2` did not say what returned:\n{unload}"))?;
        // The KV cache alone is 2 x 30 layers x 192 x 512 positions x 2 bytes.
        if freed < 2 * 30 * 192 * 512 * 2 {
            return Err(format!("unloading SmolLM2 returned only {freed} bytes"));
        }
        expect_in(
            output_of(&secs, "unload smollm2", 1)?,
            "unload smollm2",
            &["is not loaded"],
        )?;
        expect_in(
            output_of(&secs, "status", 2)?,
            "status",
            &[
                "uptime:",
                "memory:",
                "cores:   2 online",
                "loaded: tiny",
                "active:  tiny",
                "last:    smollm2",
            ],
        )?;
        expect_in(
            output_of(&secs, "perf", 1)?,
            "perf",
            &[
                "prompt tokens:",
                &format!("generated tokens: {SMOLLM2_TOKENS}"),
                "time to first:",
                "prefill:",
                "decode:",
                "p50",
                "p99",
                "stddev",
                "cores used:       2",
                "session: 5 generations",
            ],
        )?;
        expect_in(
            output_of(&secs, "help talk", 0)?,
            "help talk",
            &["/exit", "/reset"],
        )?;

        // talk over serial: the second turn reuses the first turn's cache.
        s.send(b"set max_tokens 6\r")?;
        s.wait_for("max_tokens = 6", STEP_TIMEOUT)?;
        s.send(b"talk\r")?;
        s.wait_for("you> ", STEP_TIMEOUT)?;
        let turn = |s: &mut Session, text: &str| -> Result<(u64, u64), String> {
            s.send(format!("{text}\r").as_bytes())?;
            s.wait_for("[turn: ", Duration::from_secs(120))?;
            s.wait_for("you> ", STEP_TIMEOUT)?;
            turn_counts(&s.output())
        };
        let (new1, reused1) = turn(&mut s, "Hello there")?;
        let (new2, reused2) = turn(&mut s, "How are you")?;
        if reused1 != 0 || reused2 < new1 || new2 >= new1 + reused2 {
            return Err(format!(
                "turn 2 must reuse turn 1's tokens: turn 1 {new1} new/{reused1} reused, turn 2 {new2} new/{reused2} reused"
            ));
        }
        s.send(b"/perf\r")?;
        s.wait_for(&format!("prompt tokens:    {new2}\r\n"), STEP_TIMEOUT)?;
        s.wait_for("you> ", STEP_TIMEOUT)?;
        s.send(b"/set temp 0.7\r")?;
        s.wait_for("temp = 0.7", STEP_TIMEOUT)?;
        s.send(b"/reset\r")?;
        s.wait_for("(conversation cleared)", STEP_TIMEOUT)?;
        let (_, reused3) = turn(&mut s, "Hello there")?;
        if reused3 != 0 {
            return Err(format!(
                "after /reset the turn reused {reused3} cached tokens"
            ));
        }
        // Ctrl-C stops a reply and stays in the conversation.
        s.send(b"/set max_tokens 2000\r")?;
        s.wait_for("max_tokens = 2000", STEP_TIMEOUT)?;
        s.send(b"Tell me a long story\r")?;
        std::thread::sleep(Duration::from_secs(3));
        s.send(b"\x03")?;
        s.wait_for("stopped on interrupted (Ctrl-C)", STEP_TIMEOUT)?;
        s.wait_for("you> ", STEP_TIMEOUT)?;
        s.send(b"/exit\r")?;
        s.wait_for("(left talk)", STEP_TIMEOUT)?;
        s.wait_for("embodios> ", STEP_TIMEOUT)?;
        // ... and a `generate` at the shell.
        s.send(b"generate Tell me a story\r")?;
        std::thread::sleep(Duration::from_secs(3));
        s.send(b"\x03")?;
        s.wait_for("[generate: stopped on interrupted (Ctrl-C)", STEP_TIMEOUT)?;
        s.wait_for("embodios> ", STEP_TIMEOUT)?;
        let prefill_stop_s = test_prefill_interrupt(&mut s)?;
        s.send(b"shutdown\r")?;
        let code = s.wait_exit(STEP_TIMEOUT)?;
        if code != 0 {
            return Err(format!("`shutdown` left QEMU with status {code}"));
        }
        Ok(ModelRun {
            bench_tiny: line,
            smollm2_line,
            gemma_line,
            smollm2_beyond: beyond,
            bench_allocations: allocs,
            prefill_stop_s,
            free_heap: (free_before, free_after),
        })
    })();
    let run = s.with_log("model session", r)?;
    drop(s);
    test_low_memory(elf, &m, &host_tiny)?;
    Ok(run)
}

/// Words in the long prompt of the prefill interrupt test (each is at least one
/// token, so the prompt has at least this many).
const LONG_PROMPT_WORDS: usize = 1200;

/// Ctrl-C during a prefill (tiny model, a prompt of over 1200 tokens, which takes the
/// kernel many seconds under TCG): the generation stops before the prompt is through,
/// with nothing generated, within seconds, and the shell answers after it. Returns the
/// seconds from Ctrl-C to the summary line.
fn test_prefill_interrupt(s: &mut Session) -> Result<f64, String> {
    let words = ["the", "old", "lighthouse", "keeper", "counted", "ships"];
    let prompt: Vec<&str> = (0..LONG_PROMPT_WORDS)
        .map(|i| words[i % words.len()])
        .collect();
    s.send(format!("generate {} LASTWORD\r", prompt.join(" ")).as_bytes())?;
    // The echo of the end of the line: the prefill starts now.
    s.wait_for("LASTWORD", STEP_TIMEOUT)?;
    std::thread::sleep(Duration::from_millis(1500));
    let t = std::time::Instant::now();
    s.send(b"\x03")?;
    s.wait_for("[generate: stopped on interrupted (Ctrl-C)", STEP_TIMEOUT)?;
    let took = t.elapsed().as_secs_f64();
    s.wait_for("embodios> ", STEP_TIMEOUT)?;
    let out = s.output();
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with("[generate: stopped on interrupted"))
        .unwrap_or("")
        .to_string();
    let evaluated = number_before(&line, "tiny: ", " prompt tokens")
        .ok_or_else(|| format!("no prompt token count in {line:?}"))?;
    if !line.contains(" 0 generated") || evaluated as usize >= LONG_PROMPT_WORDS {
        return Err(format!(
            "Ctrl-C during the prefill must stop it before the {LONG_PROMPT_WORDS}+ prompt tokens \
             are through, with nothing generated: {line:?}"
        ));
    }
    if took > 10.0 {
        return Err(format!(
            "Ctrl-C during the prefill took {took:.1} s to stop it"
        ));
    }
    // The shell still answers.
    s.send(b"status\r")?;
    s.wait_for(
        &format!("last:    tiny: {evaluated} prompt tokens, 0 generated"),
        STEP_TIMEOUT,
    )?;
    s.wait_for("embodios> ", STEP_TIMEOUT)?;
    Ok(took)
}

/// Too little memory: with 160 MiB of RAM, SmolLM2's module leaves a heap too small for
/// its KV cache and buffers; `load` refuses before allocating them, and the tiny model
/// still loads and generates (the same text as the host CLI).
fn test_low_memory(elf: &Path, m: &TestModels, host_tiny: &str) -> Result<(), String> {
    let spec = IsoSpec {
        entry: Entry::Normal,
        timeout: 0,
        models: vec![
            ModelFile {
                name: "smollm2".into(),
                path: m.smollm2.clone(),
            },
            ModelFile {
                name: "tiny".into(),
                path: m.tiny.clone(),
            },
        ],
        default_model: None,
        custom: Some(
            "quiet exec=\"load smollm2; load tiny; models; set temp 0; set max_tokens 4; \
             generate Once upon a time; load smollm2\""
                .into(),
        ),
    };
    let iso = target_dir().join("iso/embodios-lowmem.iso");
    make_iso_with(elf, &iso, &spec)?;
    let mut opts = tcg(&iso, Firmware::Bios);
    opts.mem = "160M".into();
    let mut s = Session::spawn(&opts)?;
    let r = (|| {
        s.wait_for("exec: done", BOOT_TIMEOUT * 2)?;
        let out = s.output();
        let secs = sections(&out);
        for nth in [0, 1] {
            expect_in(
                output_of(&secs, "load smollm2", nth)?,
                "load smollm2",
                &[
                    "`smollm2` does not fit in memory: it needs",
                    "KiB are free",
                    "--ctx N",
                ],
            )?;
        }
        expect_in(
            output_of(&secs, "load tiny", 0)?,
            "load tiny",
            &["loaded `tiny`"],
        )?;
        let models = output_of(&secs, "models", 0)?;
        if !models
            .lines()
            .any(|l| l.starts_with("smollm2 ") && l.ends_with("available"))
            || !models
                .lines()
                .any(|l| l.starts_with("tiny ") && l.contains("loaded, active"))
        {
            return Err(format!("after the refused load:\n{models}"));
        }
        let text = generated_text(output_of(&secs, "generate Once upon a time", 0)?)?;
        if text.is_empty() || !host_tiny.starts_with(&text) {
            return Err(format!(
                "tiny model after the refused load: {text:?} is not the start of the host's {host_tiny:?}"
            ));
        }
        Ok(())
    })();
    s.with_log("low-memory load", r)
}

/// `cargo +nightly fmt --check` and clippy (warnings are errors) on the kernel, which
/// the workspace-wide fmt/clippy runs do not reach (it is its own workspace).
pub fn lint() -> Result<(), String> {
    for args in [
        &["+nightly", "fmt", "--", "--check"][..],
        &["+nightly", "clippy", "--release", "--", "-D", "warnings"][..],
    ] {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(kernel_dir()).args(args);
        for var in [
            "RUSTUP_TOOLCHAIN",
            "RUSTC",
            "RUSTDOC",
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
        ] {
            cmd.env_remove(var);
        }
        let status = cmd
            .status()
            .map_err(|e| format!("running cargo {}: {e}", args.join(" ")))?;
        if !status.success() {
            return Err(format!(
                "kernel: `cargo {}` failed ({status})",
                args.join(" ")
            ));
        }
    }
    Ok(())
}

fn print_model_run(run: &ModelRun) {
    eprintln!("  tiny bench: {}", run.bench_tiny);
    eprintln!("  tiny bench decode loop: {}", run.bench_allocations);
    eprintln!("  SmolLM2: {}", run.smollm2_line);
    eprintln!("  Gemma 3: {}", run.gemma_line);
    eprintln!(
        "  SmolLM2 at context 512: {} bytes beyond the weights (bound {SMOLLM2_BEYOND_MAX})",
        run.smollm2_beyond
    );
    eprintln!(
        "  Ctrl-C during a prefill stopped it in {:.1} s",
        run.prefill_stop_s
    );
    eprintln!(
        "  free heap before loading Gemma {} bytes, after unloading it {} bytes",
        run.free_heap.0, run.free_heap.1
    );
}

/// `cargo xtask kernel-test [models]`: the whole kernel test suite (TCG), or with
/// `models` only the model session.
pub fn cmd_test(args: &[String]) -> Result<(), String> {
    ensure_tools()?;
    match args {
        [] => {}
        [only] if only == "models" => {
            let elf = build()?;
            let t = std::time::Instant::now();
            let run = test_model_session(&elf)?;
            print_model_run(&run);
            eprintln!("  model session took {} s", t.elapsed().as_secs());
            return Ok(());
        }
        other => {
            return Err(format!(
                "kernel-test takes no options or `models`, not {other:?}"
            ))
        }
    }
    deps::rustup_components(Some("nightly"), &["rust-src", "rustfmt", "clippy"])?;
    eprintln!("xtask: kernel test: rustfmt and clippy on the kernel");
    lint()?;
    let elf = build()?;
    eprintln!("xtask: kernel test: AVX2 instructions in the ELF");
    check_avx2(&elf)?;
    let isos = build_test_isos(&elf)?;
    eprintln!("xtask: kernel test: in-kernel tests (SeaBIOS, TCG, 2 cores)");
    test_in_kernel(&isos.test)?;
    eprintln!("xtask: kernel test: deliberate panic prints a backtrace and fails");
    test_panic(&isos.panic, &elf)?;
    eprintln!("xtask: kernel test: page fault on a write to code is reported");
    test_exception(
        &isos.fault,
        &elf,
        &["page fault (vector 14)", "faulting address (cr2)"],
        &["write_to_code", "kmain"],
    )?;
    eprintln!("xtask: kernel test: stack overflow hits the guard page (double fault on IST)");
    test_exception(&isos.overflow, &elf, &["double fault (vector 8)"], &[])?;
    eprintln!("xtask: kernel test: shell over serial, PS/2 keyboard and framebuffer (SeaBIOS)");
    let t = test_shell(&isos.normal)?;
    eprintln!("  SeaBIOS: prompt after {} ms", t.as_millis());
    eprintln!("xtask: kernel test: models in the ISO: registry, generate = host CLI, talk, bench");
    let t = std::time::Instant::now();
    let run = test_model_session(&elf)?;
    print_model_run(&run);
    eprintln!("  model session took {} s", t.elapsed().as_secs());
    eprintln!("xtask: kernel test: boot to the prompt under OVMF (UEFI)");
    let t = test_boot(&isos.normal, Firmware::Uefi)?;
    eprintln!("  OVMF: prompt after {} ms", t.as_millis());
    eprintln!("xtask: kernel tests passed");
    Ok(())
}

/// `cargo xtask kernel-boot-time [--runs N] [--uefi] [--model [NAME=]FILE]`: QEMU start
/// to shell prompt (TCG); with `--model` the ISO boots with that model loaded (GRUB
/// reads the module from the ISO, the kernel checks and loads it before the prompt).
pub fn cmd_boot_time(args: &[String]) -> Result<(), String> {
    let mut runs = 5usize;
    let mut firmware = Firmware::Bios;
    let mut model = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                runs = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--runs needs a number")?
            }
            "--uefi" => firmware = Firmware::Uefi,
            "--model" => {
                model = Some(ModelFile::parse(
                    it.next().ok_or("--model needs a GGUF file")?,
                )?)
            }
            other => return Err(format!("unknown option `{other}` for kernel-boot-time")),
        }
    }
    ensure_tools()?;
    let elf = build()?;
    let mut opts;
    let mut what = String::from("no model");
    if let Some(m) = model {
        let iso = target_dir().join("iso/embodios-boot-model.iso");
        what = format!("model `{}` loaded", m.name);
        let spec = IsoSpec {
            entry: Entry::Normal,
            timeout: 0,
            models: vec![m],
            default_model: None,
            custom: None,
        };
        make_iso_with(&elf, &iso, &spec)?;
        opts = tcg(&iso, firmware);
        opts.mem = "2G".into();
    } else {
        let iso = target_dir().join("iso/embodios-normal.iso");
        make_iso(&elf, &iso, Entry::Normal, 0)?;
        opts = tcg(&iso, firmware);
    }
    let mut times = Vec::new();
    let mut used = String::new();
    for _ in 0..runs.max(1) {
        let mut s = Session::spawn(&opts)?;
        let r = s.wait_for("embodios> ", BOOT_TIMEOUT * 3);
        let t = s.with_log("boot", r)?;
        if used.is_empty() {
            s.send(b"mem\r")?;
            let r = s
                .wait_for("used:", STEP_TIMEOUT)
                .and_then(|_| s.wait_for("embodios> ", STEP_TIMEOUT));
            s.with_log("mem", r)?;
            used = s
                .output()
                .lines()
                .filter(|l| l.starts_with("used:") || l.starts_with("heap:"))
                .collect::<Vec<_>>()
                .join("; ");
        }
        s.send(b"shutdown\r")?;
        let _ = s.wait_exit(STEP_TIMEOUT);
        times.push(t.as_millis());
    }
    times.sort_unstable();
    let size = std::fs::metadata(&elf).map(|m| m.len()).unwrap_or(0);
    println!(
        "boot to prompt ({firmware:?}, TCG, 2 cores, {}, {what}): runs {times:?} ms, median {} ms",
        opts.mem,
        times[times.len() / 2]
    );
    println!("kernel ELF: {} bytes ({})", size, elf.display());
    println!("memory at the prompt: {used}");
    Ok(())
}
