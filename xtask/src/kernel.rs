//! Kernel tasks: building the bare-metal kernel (nightly, build-std, hard-float target
//! JSON), making the GRUB ISO, running it in QEMU, and the kernel test suite (AVX2 in
//! the ELF, in-kernel tests, panic backtrace, serial shell session, SeaBIOS and OVMF
//! boots) plus the boot-time measurement.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::deps;
use crate::qemu::{self, Accel, Firmware, Session};

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

/// Makes a GRUB ISO (BIOS + UEFI) booting `entry` after `timeout` seconds.
pub fn make_iso(elf: &Path, out: &Path, entry: Entry, timeout: u32) -> Result<(), String> {
    let stage = target_dir().join(format!("iso-stage-{}", entry as u32));
    let _ = std::fs::remove_dir_all(&stage);
    let grub = stage.join("boot/grub");
    std::fs::create_dir_all(&grub).map_err(|e| format!("creating {}: {e}", grub.display()))?;
    std::fs::copy(elf, stage.join("boot/embodios-kernel"))
        .map_err(|e| format!("copying the kernel: {e}"))?;
    let template = std::fs::read_to_string(kernel_dir().join("grub/grub.cfg.in"))
        .map_err(|e| format!("reading grub.cfg.in: {e}"))?;
    let cfg = template
        .replace("@TIMEOUT@", &timeout.to_string())
        .replace("@DEFAULT@", &(entry as u32).to_string());
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

/// `cargo xtask iso [--out PATH] [--entry normal|nosmp|test|panic-test] [--timeout S]`.
pub fn cmd_iso(args: &[String]) -> Result<(), String> {
    let mut out = default_iso();
    let mut entry = Entry::Normal;
    let mut timeout = 3;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(it.next().ok_or("--out needs a path")?),
            "--entry" => entry = Entry::parse(it.next().ok_or("--entry needs a name")?)?,
            "--timeout" => {
                timeout = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--timeout needs seconds")?
            }
            other => return Err(format!("unknown option `{other}` for iso")),
        }
    }
    ensure_tools()?;
    let elf = build()?;
    make_iso(&elf, &out, entry, timeout)?;
    println!("{}", out.display());
    Ok(())
}

/// `cargo xtask run-kernel [--cores N] [--mem SIZE] [--accel kvm|tcg|auto] [--uefi]
/// [--entry E]`: boots the ISO with the serial console on this terminal.
pub fn cmd_run(args: &[String]) -> Result<(), String> {
    let mut cores = 2;
    let mut mem = "1G".to_string();
    let mut accel = Accel::Auto;
    let mut firmware = Firmware::Bios;
    let mut entry = Entry::Normal;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cores" => {
                cores = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--cores needs a number")?
            }
            "--mem" => mem = it.next().ok_or("--mem needs a size like 1G")?.clone(),
            "--accel" => accel = Accel::parse(it.next().ok_or("--accel needs kvm, tcg or auto")?)?,
            "--uefi" => firmware = Firmware::Uefi,
            "--entry" => entry = Entry::parse(it.next().ok_or("--entry needs a name")?)?,
            other => return Err(format!("unknown option `{other}` for run-kernel")),
        }
    }
    ensure_tools()?;
    let elf = build()?;
    let iso = target_dir().join("embodios-run.iso");
    make_iso(&elf, &iso, entry, 1)?;
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

fn with_log<T>(name: &str, s: &Session, r: Result<T, String>) -> Result<T, String> {
    r.map_err(|e| format!("{name}: {e}\n--- serial output ---\n{}\n---", s.output()))
}

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
        ] {
            if !out.contains(&format!("test {name} ... ok")) {
                return Err(format!("test {name} did not pass"));
            }
        }
        Ok(())
    })();
    with_log("in-kernel tests", &s, r)?;
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
    with_log("panic test", &s, r)
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
    with_log("exception test", &s, r)
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
                &["cores: 2 online of 2", "AVX2: on", "TSC:", "embodios> "],
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
    with_log("shell session", &s, r)
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
    with_log(&format!("boot under {firmware:?}"), &s, r)
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

/// `cargo xtask kernel-test`: the whole kernel test suite (TCG).
pub fn cmd_test(_args: &[String]) -> Result<(), String> {
    ensure_tools()?;
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
    eprintln!("xtask: kernel test: boot to the prompt under OVMF (UEFI)");
    let t = test_boot(&isos.normal, Firmware::Uefi)?;
    eprintln!("  OVMF: prompt after {} ms", t.as_millis());
    eprintln!("xtask: kernel tests passed");
    Ok(())
}

/// `cargo xtask kernel-boot-time [--runs N] [--uefi]`: QEMU start to shell prompt (TCG).
pub fn cmd_boot_time(args: &[String]) -> Result<(), String> {
    let mut runs = 5usize;
    let mut firmware = Firmware::Bios;
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
            other => return Err(format!("unknown option `{other}` for kernel-boot-time")),
        }
    }
    ensure_tools()?;
    let elf = build()?;
    let iso = target_dir().join("iso/embodios-normal.iso");
    make_iso(&elf, &iso, Entry::Normal, 0)?;
    let mut times = Vec::new();
    let mut used = String::new();
    for _ in 0..runs.max(1) {
        let mut s = Session::spawn(&tcg(&iso, firmware))?;
        let r = s.wait_for("embodios> ", BOOT_TIMEOUT);
        let t = with_log("boot", &s, r)?;
        if used.is_empty() {
            s.send(b"mem\r")?;
            let r = s
                .wait_for("used:", STEP_TIMEOUT)
                .and_then(|_| s.wait_for("embodios> ", STEP_TIMEOUT));
            with_log("mem", &s, r)?;
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
        "boot to prompt ({firmware:?}, TCG, 2 cores, 1 GiB): runs {times:?} ms, median {} ms",
        times[times.len() / 2]
    );
    println!("kernel ELF: {} bytes ({})", size, elf.display());
    println!("memory at the prompt: {used}");
    Ok(())
}
