//! Running the kernel in QEMU: choosing the accelerator (KVM only where it really runs
//! a guest), and a scripted session over the serial console (stdin/stdout pipes) with
//! timeouts on every wait, so a hung guest fails a test instead of blocking it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where Debian's ovmf package puts the UEFI firmware.
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// QEMU status for a kernel that wrote 0x10 to isa-debug-exit (success).
pub const EXIT_SUCCESS: i32 = 33;
/// QEMU status for a kernel that wrote 0x11 to isa-debug-exit (failure).
pub const EXIT_FAILURE: i32 = 35;

/// Firmware to boot with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (QEMU's default).
    Bios,
    /// OVMF (UEFI).
    Uefi,
}

/// Accelerator choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Use KVM when it can run the kernel, TCG otherwise.
    Auto,
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's emulator.
    Tcg,
}

impl Accel {
    /// Parses `auto`, `kvm` or `tcg`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!(
                "unknown accelerator `{other}` (use kvm, tcg or auto)"
            )),
        }
    }
}

/// How to start QEMU.
#[derive(Debug, Clone)]
pub struct Options {
    /// The ISO to boot.
    pub iso: PathBuf,
    /// Number of CPUs.
    pub cores: u32,
    /// Memory size in QEMU syntax (e.g. `1G`).
    pub mem: String,
    /// Firmware.
    pub firmware: Firmware,
    /// Accelerator actually used (resolve `Auto` with `resolve_accel` first).
    pub accel: Accel,
    /// Unix socket for the QEMU monitor (tests use it to type on the PS/2 keyboard and
    /// to take screenshots); None: no monitor.
    pub monitor: Option<PathBuf>,
}

impl Options {
    /// The QEMU command for these options, with the serial console on stdio.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("qemu-system-x86_64");
        match self.accel {
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            _ => cmd.args(["-accel", "tcg", "-cpu", "max"]),
        };
        cmd.args(["-smp", &self.cores.to_string(), "-m", &self.mem]);
        cmd.args(["-serial", "stdio", "-display", "none", "-no-reboot"]);
        match &self.monitor {
            Some(sock) => {
                let _ = std::fs::remove_file(sock);
                cmd.arg("-monitor")
                    .arg(format!("unix:{},server,nowait", sock.display()));
            }
            None => {
                cmd.args(["-monitor", "none"]);
            }
        }
        cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        if self.firmware == Firmware::Uefi {
            cmd.args(["-bios", OVMF]);
        }
        cmd.arg("-cdrom").arg(&self.iso);
        cmd
    }
}

/// Resolves `Auto`/`Kvm` to an accelerator that really runs the kernel. KVM must exist,
/// must not be the paravirtual `kvm_pvm` (which cannot run an ordinary guest), and must
/// boot `iso` to the kernel banner within a few seconds; otherwise TCG, with a notice.
pub fn resolve_accel(requested: Accel, iso: &Path) -> Accel {
    if requested == Accel::Tcg {
        return Accel::Tcg;
    }
    let why_not = if !Path::new("/dev/kvm").exists() {
        Some("/dev/kvm does not exist".to_string())
    } else if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        Some("/dev/kvm is not accessible".to_string())
    } else if Path::new("/sys/module/kvm_pvm").exists() {
        Some(
            "/dev/kvm is kvm_pvm, a paravirtual hypervisor that cannot run an ordinary guest"
                .to_string(),
        )
    } else {
        let probe = Options {
            iso: iso.to_path_buf(),
            cores: 1,
            mem: "256M".into(),
            firmware: Firmware::Bios,
            accel: Accel::Kvm,
            monitor: None,
        };
        match Session::spawn(&probe) {
            Ok(mut s) => match s.wait_for("EMBODIOS", Duration::from_secs(15)) {
                Ok(_) => None,
                Err(_) => Some("a KVM guest did not reach the kernel banner".to_string()),
            },
            Err(e) => Some(e),
        }
    };
    match why_not {
        None => Accel::Kvm,
        Some(reason) => {
            eprintln!("xtask: KVM unusable ({reason}); using TCG");
            Accel::Tcg
        }
    }
}

/// A running QEMU with its serial console captured.
pub struct Session {
    monitor_path: Option<PathBuf>,
    monitor: Option<std::os::unix::net::UnixStream>,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    cursor: usize,
    started: Instant,
}

impl Session {
    /// Starts QEMU with piped stdio.
    pub fn spawn(opts: &Options) -> Result<Self, String> {
        Self::spawn_with(opts, &[])
    }

    /// Starts QEMU with piped stdio and `extra` arguments appended (devices such as
    /// NICs with their `-netdev`).
    pub fn spawn_with(opts: &Options, extra: &[String]) -> Result<Self, String> {
        let mut cmd = opts.command();
        cmd.args(extra);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("starting {cmd:?}: {e}"))?;
        let out = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Session {
            monitor_path: opts.monitor.clone(),
            monitor: None,
            child,
            stdin,
            out,
            cursor: 0,
            started,
        })
    }

    /// Everything the guest printed so far (lossy UTF-8).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Waits until `needle` appears after the previous match; returns the time since
    /// QEMU started. Fails after `timeout` or when QEMU exits first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let out = self.out.lock().unwrap();
                if let Some(pos) = find(&out[self.cursor.min(out.len())..], needle.as_bytes()) {
                    self.cursor += pos + needle.len();
                    return Ok(self.started.elapsed());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {needle:?}"
                ));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                let out = self.out.lock().unwrap();
                if find(&out[self.cursor.min(out.len())..], needle.as_bytes()).is_none() {
                    return Err(format!("QEMU exited ({status}) before printing {needle:?}"));
                }
                continue;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends one command to the QEMU monitor (connecting on first use).
    pub fn monitor(&mut self, command: &str) -> Result<(), String> {
        if self.monitor.is_none() {
            let path = self
                .monitor_path
                .clone()
                .ok_or("QEMU was started without a monitor")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match std::os::unix::net::UnixStream::connect(&path) {
                    Ok(s) => {
                        self.monitor = Some(s);
                        break;
                    }
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!(
                            "connecting to the QEMU monitor {}: {e}",
                            path.display()
                        ))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        let m = self.monitor.as_mut().ok_or("no monitor")?;
        m.write_all(format!("{command}\n").as_bytes())
            .map_err(|e| format!("writing to the QEMU monitor: {e}"))?;
        // The monitor handles commands in order; give it a moment (sendkey holds keys
        // for 100 ms by default).
        std::thread::sleep(Duration::from_millis(150));
        Ok(())
    }

    /// Sends bytes to the guest's serial port.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("QEMU stdin closed")?;
        stdin
            .write_all(bytes)
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("writing to QEMU: {e}"))
    }

    /// Waits for QEMU to exit; kills it after `timeout`. Returns its exit status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                std::thread::sleep(Duration::from_millis(50)); // let the readers drain
                return status
                    .code()
                    .ok_or_else(|| format!("QEMU ended by a signal ({status})"));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!("QEMU still running after {timeout:?}; killed"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------
// Helpers shared by the QEMU test suites (disk tests now; the kernel and network
// tests script the same things): TCG options, disks on the command line (with
// blkdebug error injection), a shell command and its output, shutdown, the serial
// log on failure; and the host-side references the guest is compared with.
// ---------------------------------------------------------------------------------

/// The shell prompt.
pub const PROMPT: &str = "embodios> ";

impl Options {
    /// TCG (`-cpu max`), SeaBIOS, no monitor: how the tests boot `iso`.
    pub fn tcg(iso: &Path, cores: u32, mem: &str) -> Options {
        Options {
            iso: iso.to_path_buf(),
            cores,
            mem: mem.to_string(),
            firmware: Firmware::Bios,
            accel: Accel::Tcg,
            monitor: None,
        }
    }
}

/// A raw disk image attached to a QEMU device.
#[derive(Debug, Clone)]
pub struct Disk {
    /// The `-device` without its `drive=` (`nvme,serial=x`, `virtio-blk-pci`).
    pub device: String,
    /// The raw image.
    pub image: PathBuf,
    /// A blkdebug rules file: reads go through QEMU's error-injection driver.
    pub blkdebug: Option<PathBuf>,
}

impl Disk {
    /// `image` on `device`, no error injection.
    pub fn new(device: &str, image: &Path) -> Disk {
        Disk {
            device: device.to_string(),
            image: image.to_path_buf(),
            blkdebug: None,
        }
    }
}

/// `-drive`/`-device` arguments for `disks` (ids `d0`, `d1`, ...). A disk with
/// blkdebug rules is raw over blkdebug over the file, so the raw driver's read events
/// reach the rules.
pub fn disk_args(disks: &[Disk]) -> Vec<String> {
    let mut args = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        args.push("-drive".to_string());
        args.push(match &d.blkdebug {
            None => format!("file={},if=none,id=d{i},format=raw", d.image.display()),
            Some(rules) => format!(
                "if=none,id=d{i},driver=raw,file.driver=blkdebug,file.config={},\
                 file.image.driver=file,file.image.filename={}",
                rules.display(),
                d.image.display()
            ),
        });
        args.push("-device".to_string());
        args.push(format!("{},drive=d{i}", d.device));
    }
    args
}

/// A blkdebug rules file failing, once, the first read that touches sector `sector`
/// with EIO.
pub fn blkdebug_rules(path: &Path, sector: u64) -> Result<(), String> {
    let text = format!(
        "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\nsector = \"{sector}\"\nonce = \"on\"\n"
    );
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Session {
    /// Waits for the end of boot (`boot took`) and the first prompt.
    pub fn wait_prompt(&mut self, timeout: Duration) -> Result<Duration, String> {
        self.wait_for("boot took", timeout)?;
        self.wait_for(PROMPT, timeout)
    }

    /// Runs one shell command: types it, waits for its echo and the next prompt, and
    /// returns what it printed (carriage returns removed).
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<String, String> {
        let before = self.out.lock().unwrap().len();
        self.send(format!("{cmd}\r").as_bytes())?;
        self.wait_for(&format!("{cmd}\r\n"), timeout)
            .or_else(|_| self.wait_for(cmd, timeout))?;
        self.wait_for(PROMPT, timeout)?;
        let out = self.out.lock().unwrap();
        let text = String::from_utf8_lossy(out.get(before..).unwrap_or(&out)).replace('\r', "");
        Ok(text)
    }

    /// `shutdown`: QEMU must power off with status 0.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<(), String> {
        self.send(b"shutdown\r")?;
        match self.wait_exit(timeout)? {
            0 => Ok(()),
            code => Err(format!("shutdown: QEMU exit status {code}")),
        }
    }

    /// `r`, with the whole serial output added to its error.
    pub fn with_log<T>(&self, what: &str, r: Result<T, String>) -> Result<T, String> {
        r.map_err(|e| format!("{what}: {e}\n--- serial output ---\n{}\n---", self.output()))
    }
}

/// Fails unless `text` holds every one of `wants`, or if it shows a kernel panic.
pub fn expect_all(what: &str, text: &str, wants: &[&str]) -> Result<(), String> {
    for w in wants {
        if !text.contains(w) {
            return Err(format!("{what}: expected {w:?} in:\n{text}"));
        }
    }
    if text.contains("KERNEL PANIC") {
        return Err(format!("{what}: kernel panic:\n{text}"));
    }
    Ok(())
}

/// A cached model file: `$ENV` when it names a file, else the model cache (fetched
/// and checked against its pinned SHA-256 if missing).
pub fn model_path(env: &str, name: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    let spec = crate::models::find(name)?;
    crate::models::fetch(spec)
        .map_err(|e| format!("model not found: run `cargo xtask fetch-model {name}` ({e})"))
}

/// SmolLM2: `$EMBODIOS_MODEL_SMOLLM2_135M`, else the model cache (fetched if needed).
pub fn smollm2_path() -> Result<PathBuf, String> {
    model_path("EMBODIOS_MODEL_SMOLLM2_135M", crate::models::DEFAULT_MODEL)
}

/// The engine's tiny random llama (SmolLM2's tokenizer and chat template), written
/// into `dir` by its `write_random_llama` example.
pub fn tiny_model(dir: &Path) -> Result<PathBuf, String> {
    let tiny = dir.join("tiny-llama.gguf");
    let status = Command::new("cargo")
        .current_dir(crate::workspace_root())
        .args(["run", "-q", "--release", "-p", "embodios-engine"])
        .args(["--example", "write_random_llama", "--"])
        .arg(&tiny)
        .arg(smollm2_path()?)
        .status()
        .map_err(|e| format!("running write_random_llama: {e}"))?;
    if !status.success() {
        return Err(format!("write_random_llama failed ({status})"));
    }
    Ok(tiny)
}

/// The host CLI's greedy completion (`embodios run --temp 0 --json`): the text the
/// guest must produce.
pub fn host_greedy(model: &Path, prompt: &str, tokens: usize) -> Result<String, String> {
    let out = Command::new("cargo")
        .current_dir(crate::workspace_root())
        .args(["run", "-q", "--release", "-p", "embodios-cli"])
        .args(["--bin", "embodios", "--", "run", "--temp", "0", "--json"])
        .args(["-n", &tokens.to_string(), "-p", prompt, "-m"])
        .arg(model)
        .output()
        .map_err(|e| format!("running the host CLI: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "host CLI failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("the host CLI printed no JSON line")?;
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("host CLI JSON: {e}"))?;
    v["text"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "host CLI JSON has no text".to_string())
}
