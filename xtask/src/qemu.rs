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
