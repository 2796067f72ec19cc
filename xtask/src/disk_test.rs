//! Kernel storage tests: boots the kernel under QEMU (TCG, q35) with disk images on
//! NVMe and on virtio-blk and checks `disks`, `ls` (GPT + FAT32, MBR + FAT16), that a
//! blank disk and a non-FAT partition are reported, `load disk:/...` of the tiny
//! random model giving the same greedy text as the same file loaded as a boot module
//! and as the host CLI (`embodios run --temp 0`), that a corrupted copy (SHA-256
//! mismatch) and a truncated one (GGUF bounds) are refused, and that a real device
//! read error in the middle of a load (QEMU's blkdebug driver fails one read with
//! EIO) is reported with the device's answer — all without losing free memory, with
//! the boot module still generating. Then SmolLM2 (93 MiB) is loaded from NVMe and
//! from virtio-blk and its greedy completion compared with the host CLI's.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::disk::{make_image, sha256_hex, DiskFile, Layout};
use crate::kernel::{self, Entry, IsoSpec, ModelFile};
use crate::qemu::{
    blkdebug_rules, disk_args, expect_all, host_greedy, smollm2_path, tiny_model, Disk, Options,
    Session,
};

/// Boot to the prompt.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// One command.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// Greedy tokens per generation (TCG is slow).
const TOKENS: usize = 8;
const PROMPT: &str = "Once upon a time";
/// SmolLM2's prompt and tokens (two, as the kernel tests: TCG is slow).
const FRANCE: &str = "The capital of France is";
const SMOL_TOKENS: usize = 2;
/// SmolLM2's file name on the disk image.
const SMOL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

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
    let out = s.run("mem", STEP_TIMEOUT)?;
    out.lines()
        .find(|l| l.starts_with("free frames:"))
        .map(|l| l.trim().to_string())
        .ok_or_else(|| format!("no free-memory line in `mem`:\n{out}"))
}

/// Milliseconds and MB/s of a `load diskN:` output (`read 93.1 MiB in 40 ms (2354.8
/// MB/s) from ...`).
fn read_rate(out: &str) -> Option<(u64, f64)> {
    let line = out.lines().find(|l| l.starts_with("read "))?;
    let ms = line
        .split_once(" in ")?
        .1
        .split_once(" ms")?
        .0
        .trim()
        .parse()
        .ok()?;
    let rate = line
        .split_once('(')?
        .1
        .split_once(" MB/s")?
        .0
        .trim()
        .parse()
        .ok()?;
    Some((ms, rate))
}

/// Byte offset of `file`'s contents inside the raw image `img` (FAT puts a file's
/// clusters on sector boundaries; mtools writes a new file's clusters in one run).
fn offset_in_image(img: &Path, file: &[u8]) -> Result<u64, String> {
    let image = fs::read(img).map_err(|e| format!("{}: {e}", img.display()))?;
    let head = &file[..file.len().min(4096)];
    (0..image.len().saturating_sub(file.len()))
        .step_by(512)
        .find(|&at| image[at..at + head.len()] == *head && image[at..at + file.len()] == *file)
        .map(|at| at as u64)
        .ok_or_else(|| format!("the file's bytes are not in one run in {}", img.display()))
}

/// One boot with the model image on `model_dev`.
struct Boot<'a> {
    name: &'a str,
    /// QEMU device for the model disk.
    model_dev: &'a str,
    /// Driver name `disks` must show for it.
    driver: &'a str,
    /// How the driver reports the injected read error.
    device_error: &'a str,
    /// Other disks: (device, image, what `disks` must say about it).
    others: Vec<(&'a str, PathBuf, &'a str)>,
}

/// What the boots share.
struct Images<'a> {
    iso: &'a Path,
    /// GPT + FAT32 with the tiny model, its corrupted and truncated copies.
    main: &'a Path,
    /// blkdebug rules failing one read inside the tiny model's data, once.
    rules: &'a Path,
    /// The tiny model's size.
    size: u64,
    /// The host CLI's greedy text on the tiny model.
    host: &'a str,
}

fn boot_case(b: &Boot, im: &Images) -> Result<f64, String> {
    let mut extra: Vec<String> = ["-machine", "q35", "-boot", "d", "-nic", "none"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut disks = vec![Disk {
        blkdebug: Some(im.rules.to_path_buf()),
        ..Disk::new(b.model_dev, im.main)
    }];
    disks.extend(b.others.iter().map(|(d, p, _)| Disk::new(d, p)));
    extra.extend(disk_args(&disks));
    let mut s = Session::spawn_with(&Options::tcg(im.iso, 2, "1G"), &extra)?;
    let r = (|| -> Result<f64, String> {
        s.wait_prompt(BOOT_TIMEOUT)?;
        let out = s.run("disks", STEP_TIMEOUT)?;
        expect_all(
            "disks",
            &out,
            &[
                &format!("disk0  {}", b.driver),
                "GPT, 1 partition(s)",
                "Microsoft basic data \"EMBODIOS\"  FAT32",
            ],
        )?;
        for (_, _, want) in &b.others {
            expect_all("disks (other disks)", &out, &[want])?;
        }
        let out = s.run("ls disk0:/models", STEP_TIMEOUT)?;
        expect_all(
            "ls",
            &out,
            &[
                &format!("{}  tiny-llama.gguf", im.size),
                "tiny-llama.gguf.sha256",
                "corrupt-llama.gguf",
                "truncated-llama.gguf",
            ],
        )?;
        for (i, (_, _, want)) in b.others.iter().enumerate() {
            let out = s.run(&format!("ls disk{}:/", i + 1), STEP_TIMEOUT)?;
            if want.contains("FAT16") {
                expect_all("ls on FAT16", &out, &["(FAT16)", "models/"])?;
            } else {
                expect_all("ls on a disk without FAT", &out, &["ls: disk"])?;
            }
        }
        let out = s.run("models", STEP_TIMEOUT)?;
        expect_all(
            "models",
            &out,
            &["on disk: `load disk0:/models/corrupt-llama.gguf`"],
        )?;
        s.run("set temp 0", STEP_TIMEOUT)?;
        s.run(&format!("set max_tokens {TOKENS}"), STEP_TIMEOUT)?;
        let generate = format!("generate {PROMPT}");
        let module_text = generated(&s.run(&generate, STEP_TIMEOUT)?, PROMPT)?;
        let before = free_frames(&mut s)?;
        let out = s.run("load disk0:/models/corrupt-llama.gguf", STEP_TIMEOUT)?;
        expect_all(
            "corrupted model",
            &out,
            &["load: disk0:/models/corrupt-llama.gguf: SHA-256 mismatch, file corrupted"],
        )?;
        let out = s.run("load disk0:/models/truncated-llama.gguf", STEP_TIMEOUT)?;
        expect_all(
            "truncated model",
            &out,
            &["load: disk0:/models/truncated-llama.gguf: refused: not a valid GGUF file"],
        )?;
        // The device fails one read in the middle of the file (blkdebug, EIO).
        let out = s.run("load disk0:/models/tiny-llama.gguf as broken", STEP_TIMEOUT)?;
        expect_all(
            "read error mid-load",
            &out,
            &[
                &format!(
                    "load: disk0:/models/tiny-llama.gguf: read error on disk0 ({}) (",
                    b.driver
                ),
                b.device_error,
                "(reading sectors ",
                "were freed, other models are untouched",
            ],
        )?;
        let error_line = out
            .lines()
            .find(|l| l.contains("read error on"))
            .unwrap_or_default()
            .to_string();
        // The boot module still generates the same text.
        let again = generated(&s.run(&generate, STEP_TIMEOUT)?, PROMPT)?;
        if again != module_text {
            return Err(format!(
                "after the read error the module model gave {again:?}, before {module_text:?}"
            ));
        }
        let after = free_frames(&mut s)?;
        if before != after {
            return Err(format!(
                "refused or failed loads leaked memory: before `{before}`, after `{after}`"
            ));
        }
        let out = s.run(
            "load disk0:/models/tiny-llama.gguf as fromdisk",
            STEP_TIMEOUT,
        )?;
        expect_all(
            "load from disk",
            &out,
            &[
                "SHA-256 matches",
                "loaded `fromdisk` from disk0:/models/tiny-llama.gguf",
            ],
        )?;
        let (_, rate) = read_rate(&out).ok_or_else(|| format!("no MB/s in:\n{out}"))?;
        s.run("switch fromdisk", STEP_TIMEOUT)?;
        let disk_text = generated(&s.run(&generate, STEP_TIMEOUT)?, PROMPT)?;
        if disk_text != im.host {
            return Err(format!(
                "greedy text from the disk-loaded model {disk_text:?} differs from the host \
                 CLI's {:?}",
                im.host
            ));
        }
        if disk_text != module_text {
            return Err(format!(
                "greedy text from the disk-loaded model {disk_text:?} differs from the \
                 module-loaded one {module_text:?}"
            ));
        }
        eprintln!(
            "xtask: disk test: {}: disks/ls ok, corrupted and truncated refused; injected \
             read error: {:?}; {before} before, {after} after; the module still generates",
            b.name,
            error_line.trim()
        );
        eprintln!(
            "xtask: disk test: {}: load {rate:.1} MB/s, greedy text equal to the module's \
             and the host CLI's: {disk_text:?}",
            b.name
        );
        s.shutdown(STEP_TIMEOUT)?;
        Ok(rate)
    })();
    s.with_log(&format!("disk test {}", b.name), r)
}

/// SmolLM2 from `device`: load (SHA-256 checked) and a 2-token greedy completion
/// equal to the host CLI's. Returns the read time (ms) and rate (MB/s).
fn smollm2_case(
    name: &str,
    device: &str,
    iso: &Path,
    img: &Path,
    host: &str,
) -> Result<(u64, f64), String> {
    let mut extra: Vec<String> = ["-machine", "q35", "-boot", "d", "-nic", "none"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    extra.extend(disk_args(&[Disk::new(device, img)]));
    let mut s = Session::spawn_with(&Options::tcg(iso, 2, "2G"), &extra)?;
    let r = (|| -> Result<(u64, f64), String> {
        s.wait_prompt(BOOT_TIMEOUT)?;
        let t0 = Instant::now();
        let out = s.run(
            &format!("load disk0:/models/{SMOL_FILE} as smol"),
            STEP_TIMEOUT,
        )?;
        expect_all("SmolLM2 load", &out, &["SHA-256 matches", "loaded `smol`"])?;
        let load_s = t0.elapsed().as_secs_f64();
        let (ms, rate) = read_rate(&out).ok_or_else(|| format!("no MB/s in:\n{out}"))?;
        let sha_ms = out
            .lines()
            .find(|l| l.starts_with("SHA-256 matches"))
            .and_then(|l| {
                l.rsplit_once('(')?
                    .1
                    .strip_suffix(" ms)")?
                    .parse::<u64>()
                    .ok()
            })
            .ok_or_else(|| format!("no SHA-256 time in:\n{out}"))?;
        s.run("switch smol", STEP_TIMEOUT)?;
        s.run("set temp 0", STEP_TIMEOUT)?;
        s.run(&format!("set max_tokens {SMOL_TOKENS}"), STEP_TIMEOUT)?;
        let text = generated(&s.run(&format!("generate {FRANCE}"), STEP_TIMEOUT)?, FRANCE)?;
        if text != host {
            return Err(format!(
                "SmolLM2 from {name}: greedy {text:?}, host CLI {host:?}"
            ));
        }
        // `EMBODIOS_DISK_TEST_LOADS=N`: N - 1 more reads of the same file, for the
        // spread of the read time (each copy stays in memory: N <= 5 fits in 2 GiB).
        let extra_loads: usize = std::env::var("EMBODIOS_DISK_TEST_LOADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1usize)
            .clamp(1, 5)
            - 1;
        let mut reads = vec![(ms, rate)];
        for k in 0..extra_loads {
            let out = s.run(
                &format!("load disk0:/models/{SMOL_FILE} as smol{}", k + 2),
                STEP_TIMEOUT,
            )?;
            expect_all("SmolLM2 load again", &out, &["SHA-256 matches"])?;
            reads.push(read_rate(&out).ok_or_else(|| format!("no MB/s in:\n{out}"))?);
        }
        if reads.len() > 1 {
            let list: Vec<String> = reads
                .iter()
                .map(|(ms, r)| format!("{ms} ms ({r:.0} MB/s)"))
                .collect();
            eprintln!(
                "xtask: disk test: SmolLM2 from {name}, {} reads: {}",
                reads.len(),
                list.join(", ")
            );
        }
        eprintln!(
            "xtask: disk test: SmolLM2 from {name}: read in {ms} ms ({rate:.1} MB/s), SHA-256 \
             {sha_ms} ms, whole `load` (read, SHA-256, checks, KV cache) {load_s:.1} s; greedy \
             {text:?} = host"
        );
        s.shutdown(STEP_TIMEOUT)?;
        Ok((ms, rate))
    })();
    s.with_log(&format!("disk test SmolLM2 from {name}"), r)
}

/// `cargo xtask disk-test`: NVMe and virtio-blk boots (see the module comment).
///
/// `EMBODIOS_DISK_TEST_ONLY=nvme|virtio-blk|smollm2` runs only that part (while
/// working on one path; `cargo xtask test` runs them all).
pub fn test_disks() -> Result<(), String> {
    let t0 = Instant::now();
    let only = std::env::var("EMBODIOS_DISK_TEST_ONLY")
        .ok()
        .filter(|v| !v.is_empty());
    if let Some(o) = &only {
        if !["nvme", "virtio-blk", "smollm2"].contains(&o.as_str()) {
            return Err(format!(
                "EMBODIOS_DISK_TEST_ONLY={o}: expected nvme, virtio-blk or smollm2"
            ));
        }
        eprintln!("xtask: disk test: only {o} (EMBODIOS_DISK_TEST_ONLY)");
    }
    let wanted = |part: &str| only.as_deref().is_none_or(|o| o == part);
    kernel::ensure_tools()?;
    let elf = kernel::build()?;
    let dir = kernel::kernel_elf()
        .parent()
        .ok_or("kernel ELF has no directory")?
        .join("disk-test");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tiny = tiny_model(&dir)?;
    let iso = dir.join("disk-test.iso");
    let mut spec = IsoSpec::plain(Entry::Normal, 0);
    spec.models.push(ModelFile {
        name: "tiny".into(),
        path: tiny.clone(),
    });
    kernel::make_iso_with(&elf, &iso, &spec)?;
    let mut summary = Vec::new();

    if wanted("nvme") || wanted("virtio-blk") {
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
        // The injected error: the first read touching a sector in the middle of the
        // tiny model's data fails once.
        let at = offset_in_image(&main_img, &bytes)?;
        let sector = (at + bytes.len() as u64 / 2) / 512;
        let rules = dir.join("read-error.blkdebug");
        blkdebug_rules(&rules, sector)?;
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
        let images = Images {
            iso: &iso,
            main: &main_img,
            rules: &rules,
            size: bytes.len() as u64,
            host: &host,
        };
        if wanted("nvme") {
            let nvme = Boot {
                name: "NVMe",
                model_dev: "nvme,serial=embodios",
                driver: "nvme",
                device_error: "NVMe command failed: status type 0x2, code 0x81 \
                               (unrecovered read error)",
                others: vec![
                    ("virtio-blk-pci", blank, "no partition table"),
                    ("virtio-blk-pci", linux, "Linux filesystem"),
                ],
            };
            let rate = boot_case(&nvme, &images)?;
            summary.push(format!("tiny model from NVMe {rate:.1} MB/s"));
        }
        if wanted("virtio-blk") {
            let virtio = Boot {
                name: "virtio-blk",
                model_dev: "virtio-blk-pci",
                driver: "virtio-blk",
                device_error: "virtio-blk: the device reported an I/O error (VIRTIO_BLK_S_IOERR)",
                others: vec![("nvme,serial=second", fat16, "FAT16 (type 0x06)")],
            };
            let rate = boot_case(&virtio, &images)?;
            summary.push(format!("tiny model from virtio-blk {rate:.1} MB/s"));
        }
    }

    if wanted("smollm2") {
        let smol = smollm2_path()?;
        let bytes = fs::read(&smol).map_err(|e| format!("{}: {e}", smol.display()))?;
        let img = dir.join("smollm2.img");
        make_image(
            &img,
            Layout::GptFat32,
            &[DiskFile {
                name: SMOL_FILE.into(),
                path: smol.clone(),
                sha256: Some(sha256_hex(&bytes)),
            }],
        )?;
        drop(bytes);
        let host = host_greedy(&smol, FRANCE, SMOL_TOKENS)?;
        for (name, device) in [
            ("NVMe", "nvme,serial=smollm2"),
            ("virtio-blk", "virtio-blk-pci"),
        ] {
            let (ms, rate) = smollm2_case(name, device, &iso, &img, &host)?;
            summary.push(format!("SmolLM2 from {name} in {ms} ms ({rate:.1} MB/s)"));
        }
    }
    eprintln!(
        "xtask: disk test passed in {:.0} s ({})",
        t0.elapsed().as_secs_f64(),
        summary.join("; ")
    );
    Ok(())
}
