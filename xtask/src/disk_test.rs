//! Kernel storage tests: boots the kernel under QEMU (TCG, q35) with disk images on
//! NVMe and on virtio-blk and checks `disks`, `ls` (GPT + FAT32, MBR + FAT16), that a
//! blank disk and a non-FAT partition are reported, `load disk:/...` of the tiny
//! random model giving the same greedy text as the same file loaded as a boot module
//! and as the host CLI (`embodios run --temp 0`),
//! and that a corrupted copy (SHA-256 mismatch) and a truncated one (GGUF bounds) are
//! refused without leaking the frames they took.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::disk::{make_image, sha256_hex, DiskFile, Layout};
use crate::kernel::{self, Entry, IsoSpec, ModelFile};
use crate::qemu::{Accel, Firmware, Options, Session};

/// Boot to the prompt.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// One command.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// Greedy tokens per generation (TCG is slow).
const TOKENS: usize = 8;
const PROMPT: &str = "Once upon a time";

fn smollm2() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("EMBODIOS_MODEL_SMOLLM2_135M") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    let spec = crate::models::find(crate::models::DEFAULT_MODEL)?;
    crate::models::fetch(spec)
        .map_err(|e| format!("model not found: run `cargo xtask fetch-model` ({e})"))
}

/// The engine's tiny random llama (SmolLM2's tokenizer) written into `dir`.
fn tiny_model(dir: &Path) -> Result<PathBuf, String> {
    let tiny = dir.join("tiny-llama.gguf");
    let status = Command::new("cargo")
        .current_dir(crate::workspace_root())
        .args(["run", "-q", "--release", "-p", "embodios-engine"])
        .args(["--example", "write_random_llama", "--"])
        .arg(&tiny)
        .arg(smollm2()?)
        .status()
        .map_err(|e| format!("running write_random_llama: {e}"))?;
    if !status.success() {
        return Err(format!("write_random_llama failed ({status})"));
    }
    Ok(tiny)
}

/// The host CLI's greedy completion: `embodios run --temp 0 --json`.
fn host_greedy(model: &Path, prompt: &str, tokens: usize) -> Result<String, String> {
    let out = Command::new("cargo")
        .current_dir(crate::workspace_root())
        .args([
            "run",
            "-q",
            "--release",
            "-p",
            "embodios-cli",
            "--bin",
            "embodios",
        ])
        .args([
            "--",
            "run",
            "--temp",
            "0",
            "--json",
            "-n",
            &tokens.to_string(),
        ])
        .args(["-p", prompt, "-m"])
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

/// Runs a shell command and returns what it printed up to the next prompt.
fn run(s: &mut Session, cmd: &str) -> Result<String, String> {
    let before = s.output().len();
    s.send(format!("{cmd}\r").as_bytes())?;
    s.wait_for(&format!("{cmd}\r\n"), STEP_TIMEOUT)
        .or_else(|_| s.wait_for(cmd, STEP_TIMEOUT))?;
    s.wait_for("embodios> ", STEP_TIMEOUT)?;
    let out = s.output();
    Ok(out.get(before..).unwrap_or(&out).replace('\r', ""))
}

fn must(what: &str, text: &str, wants: &[&str]) -> Result<(), String> {
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

/// The streamed text of a `generate` (between the echoed command and `[generate:`).
fn generated(out: &str, prompt: &str) -> Result<String, String> {
    let body = out
        .split_once(&format!("generate {prompt}\n"))
        .map(|(_, b)| b)
        .ok_or_else(|| format!("no generate echo in:\n{out}"))?;
    let text = body
        .split_once("\n[generate:")
        .map(|(t, _)| t)
        .ok_or_else(|| format!("no [generate: summary in:\n{out}"))?;
    Ok(text.to_string())
}

/// Free frames as `mem` prints them.
fn free_frames(s: &mut Session) -> Result<String, String> {
    let out = run(s, "mem")?;
    out.lines()
        .find(|l| l.starts_with("free frames:"))
        .map(|l| l.trim().to_string())
        .ok_or_else(|| format!("no free-memory line in `mem`:\n{out}"))
}

/// MB/s figure of a `load diskN:` output.
fn mb_per_s(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.starts_with("read "))?;
    let inner = line.split_once('(')?.1.split_once(" MB/s")?.0;
    inner.trim().parse().ok()
}

struct Boot<'a> {
    name: &'a str,
    /// QEMU device for the model disk.
    model_dev: &'a str,
    /// Driver name `disks` must show for it.
    driver: &'a str,
    /// Other disks: (device, image, what `disks` must say about it).
    others: Vec<(&'a str, PathBuf, &'a str)>,
}

fn boot_case(b: &Boot, iso: &Path, main_img: &Path, size: u64, host: &str) -> Result<f64, String> {
    let opts = Options {
        iso: iso.to_path_buf(),
        cores: 2,
        mem: "1G".into(),
        firmware: Firmware::Bios,
        accel: Accel::Tcg,
        monitor: None,
    };
    let mut extra: Vec<String> = ["-machine", "q35", "-boot", "d", "-nic", "none"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut disks = vec![(b.model_dev, main_img.to_path_buf())];
    disks.extend(b.others.iter().map(|(d, p, _)| (*d, p.clone())));
    for (i, (dev, img)) in disks.iter().enumerate() {
        extra.push("-drive".into());
        extra.push(format!("file={},if=none,id=d{i},format=raw", img.display()));
        extra.push("-device".into());
        extra.push(format!("{dev},drive=d{i}"));
    }
    let mut s = Session::spawn_with(&opts, &extra)?;
    let r = (|| -> Result<f64, String> {
        s.wait_for("boot took", BOOT_TIMEOUT)?;
        s.wait_for("embodios> ", STEP_TIMEOUT)?;
        let out = run(&mut s, "disks")?;
        must(
            "disks",
            &out,
            &[
                &format!("disk0  {}", b.driver),
                "GPT, 1 partition(s)",
                "Microsoft basic data \"EMBODIOS\"  FAT32",
            ],
        )?;
        for (_, _, want) in &b.others {
            must("disks (other disks)", &out, &[want])?;
        }
        let out = run(&mut s, "ls disk0:/models")?;
        must(
            "ls",
            &out,
            &[
                &format!("{size}  tiny-llama.gguf"),
                "tiny-llama.gguf.sha256",
                "corrupt-llama.gguf",
                "truncated-llama.gguf",
            ],
        )?;
        for (i, (_, _, want)) in b.others.iter().enumerate() {
            let out = run(&mut s, &format!("ls disk{}:/", i + 1))?;
            if want.contains("FAT16") {
                must("ls on FAT16", &out, &["(FAT16)", "models/"])?;
            } else {
                must("ls on a disk without FAT", &out, &["ls: disk"])?;
            }
        }
        let out = run(&mut s, "models")?;
        must(
            "models",
            &out,
            &["on disk: `load disk0:/models/corrupt-llama.gguf`"],
        )?;
        run(&mut s, "set temp 0")?;
        run(&mut s, &format!("set max_tokens {TOKENS}"))?;
        let module_text = generated(&run(&mut s, &format!("generate {PROMPT}"))?, PROMPT)?;
        let before = free_frames(&mut s)?;
        let out = run(&mut s, "load disk0:/models/corrupt-llama.gguf")?;
        must(
            "corrupted model",
            &out,
            &["load: disk0:/models/corrupt-llama.gguf: SHA-256 mismatch, file corrupted"],
        )?;
        let out = run(&mut s, "load disk0:/models/truncated-llama.gguf")?;
        must(
            "truncated model",
            &out,
            &["load: disk0:/models/truncated-llama.gguf: refused: not a valid GGUF file"],
        )?;
        let after = free_frames(&mut s)?;
        if before != after {
            return Err(format!(
                "refused loads leaked memory: before `{before}`, after `{after}`"
            ));
        }
        let out = run(&mut s, "load disk0:/models/tiny-llama.gguf as fromdisk")?;
        must(
            "load from disk",
            &out,
            &[
                "SHA-256 matches",
                "loaded `fromdisk` from disk0:/models/tiny-llama.gguf",
            ],
        )?;
        let rate = mb_per_s(&out).ok_or_else(|| format!("no MB/s in:\n{out}"))?;
        run(&mut s, "switch fromdisk")?;
        let disk_text = generated(&run(&mut s, &format!("generate {PROMPT}"))?, PROMPT)?;
        if disk_text != host {
            return Err(format!(
                "greedy text from the disk-loaded model {disk_text:?} differs from the host \
                 CLI's {host:?}"
            ));
        }
        if disk_text != module_text {
            return Err(format!(
                "greedy text from the disk-loaded model {disk_text:?} differs from the \
                 module-loaded one {module_text:?}"
            ));
        }
        eprintln!(
            "xtask: disk test: {}: disks/ls ok, corrupted and truncated refused, \
             load {rate:.1} MB/s, greedy text equal to the module's and the host CLI's: {disk_text:?}",
            b.name
        );
        s.send(b"shutdown\r")?;
        let code = s.wait_exit(STEP_TIMEOUT)?;
        if code != 0 {
            return Err(format!("shutdown exit status {code}"));
        }
        Ok(rate)
    })();
    r.map_err(|e| {
        format!(
            "disk test {}: {e}\n--- serial output ---\n{}",
            b.name,
            s.output()
        )
    })
}

/// SmolLM2 (93 MiB) from an NVMe disk: load (SHA-256 checked) and a 2-token greedy
/// completion equal to the host CLI's. Returns the load rate.
fn smollm2_case(iso: &Path, dir: &Path) -> Result<f64, String> {
    const FRANCE: &str = "The capital of France is";
    let smol = smollm2()?;
    let bytes = fs::read(&smol).map_err(|e| format!("{}: {e}", smol.display()))?;
    let img = dir.join("smollm2.img");
    make_image(
        &img,
        Layout::GptFat32,
        &[DiskFile {
            name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            path: smol.clone(),
            sha256: Some(sha256_hex(&bytes)),
        }],
    )?;
    drop(bytes);
    let host = host_greedy(&smol, FRANCE, 2)?;
    let opts = Options {
        iso: iso.to_path_buf(),
        cores: 2,
        mem: "2G".into(),
        firmware: Firmware::Bios,
        accel: Accel::Tcg,
        monitor: None,
    };
    let extra: Vec<String> = [
        "-machine",
        "q35",
        "-boot",
        "d",
        "-nic",
        "none",
        "-drive",
        &format!("file={},if=none,id=d0,format=raw", img.display()),
        "-device",
        "nvme,serial=smollm2,drive=d0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut s = Session::spawn_with(&opts, &extra)?;
    let r = (|| -> Result<f64, String> {
        s.wait_for("boot took", BOOT_TIMEOUT)?;
        s.wait_for("embodios> ", STEP_TIMEOUT)?;
        let out = run(
            &mut s,
            "load disk0:/models/SmolLM2-135M-Instruct.Q4_1.gguf as smol",
        )?;
        must("SmolLM2 load", &out, &["SHA-256 matches", "loaded `smol`"])?;
        let rate = mb_per_s(&out).ok_or_else(|| format!("no MB/s in:\n{out}"))?;
        run(&mut s, "switch smol")?;
        run(&mut s, "set temp 0")?;
        run(&mut s, "set max_tokens 2")?;
        let text = generated(&run(&mut s, &format!("generate {FRANCE}"))?, FRANCE)?;
        if text != host {
            return Err(format!(
                "SmolLM2 from disk: greedy {text:?}, host CLI {host:?}"
            ));
        }
        eprintln!(
            "xtask: disk test: SmolLM2 from NVMe: load {rate:.1} MB/s, greedy {text:?} = host"
        );
        s.send(b"shutdown\r")?;
        s.wait_exit(STEP_TIMEOUT)?;
        Ok(rate)
    })();
    r.map_err(|e| {
        format!(
            "disk test SmolLM2: {e}\n--- serial output ---\n{}",
            s.output()
        )
    })
}

/// `cargo xtask disk-test`: NVMe and virtio-blk boots (see the module comment).
pub fn test_disks() -> Result<(), String> {
    let t0 = Instant::now();
    kernel::ensure_tools()?;
    let elf = kernel::build()?;
    let dir = kernel::kernel_elf()
        .parent()
        .ok_or("kernel ELF has no directory")?
        .join("disk-test");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tiny = tiny_model(&dir)?;
    let host = host_greedy(&tiny, PROMPT, TOKENS)?;
    let bytes = fs::read(&tiny).map_err(|e| format!("{}: {e}", tiny.display()))?;
    let digest = sha256_hex(&bytes);
    // A copy with bytes changed in the middle (tensor data) keeps a valid GGUF
    // structure: only the SHA-256 can catch it.
    let mut corrupt = bytes.clone();
    let mid = corrupt.len() / 2;
    for b in &mut corrupt[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let corrupt_path = dir.join("corrupt-llama.gguf");
    fs::write(&corrupt_path, &corrupt).map_err(|e| format!("{e}"))?;
    let trunc_path = dir.join("truncated-llama.gguf");
    fs::write(&trunc_path, &bytes[..bytes.len() * 2 / 3]).map_err(|e| format!("{e}"))?;
    let files = vec![
        DiskFile {
            name: "tiny-llama.gguf".into(),
            path: tiny.clone(),
            sha256: Some(digest.clone()),
        },
        DiskFile {
            name: "corrupt-llama.gguf".into(),
            path: corrupt_path,
            sha256: Some(digest.clone()),
        },
        DiskFile {
            name: "truncated-llama.gguf".into(),
            path: trunc_path,
            sha256: None,
        },
    ];
    let main_img = dir.join("models-gpt-fat32.img");
    make_image(&main_img, Layout::GptFat32, &files)?;
    let fat16 = dir.join("mbr-fat16.img");
    make_image(
        &fat16,
        Layout::MbrFat16,
        &[DiskFile {
            name: "tiny-llama.gguf".into(),
            path: tiny.clone(),
            sha256: Some(digest),
        }],
    )?;
    let blank = dir.join("blank.img");
    make_image(&blank, Layout::Blank, &[])?;
    let linux = dir.join("gpt-linux.img");
    make_image(&linux, Layout::GptLinux, &[])?;

    let iso = dir.join("disk-test.iso");
    let mut spec = IsoSpec::plain(Entry::Normal, 0);
    spec.models.push(ModelFile {
        name: "tiny".into(),
        path: tiny,
    });
    kernel::make_iso_with(&elf, &iso, &spec)?;

    let size = bytes.len() as u64;
    let nvme = Boot {
        name: "NVMe",
        model_dev: "nvme,serial=embodios",
        driver: "nvme",
        others: vec![
            ("virtio-blk-pci", blank, "no partition table"),
            ("virtio-blk-pci", linux, "Linux filesystem"),
        ],
    };
    let rate_nvme = boot_case(&nvme, &iso, &main_img, size, &host)?;
    let virtio = Boot {
        name: "virtio-blk",
        model_dev: "virtio-blk-pci",
        driver: "virtio-blk",
        others: vec![("nvme,serial=second", fat16, "FAT16 (type 0x06)")],
    };
    let rate_virtio = boot_case(&virtio, &iso, &main_img, size, &host)?;
    let rate_smol = smollm2_case(&iso, &dir)?;
    eprintln!(
        "xtask: disk test passed in {:.0} s (load of {} bytes: NVMe {rate_nvme:.1} MB/s, \
         virtio-blk {rate_virtio:.1} MB/s; SmolLM2 93 MiB from NVMe {rate_smol:.1} MB/s)",
        t0.elapsed().as_secs_f64(),
        size
    );
    Ok(())
}
