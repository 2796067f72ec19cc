//! `cargo xtask disk --model FILE ... --out IMG`: a raw disk image with a GPT (written
//! here) and one FAT32 partition (mtools `mformat`/`mmd`/`mcopy`) holding the models
//! under `/models`, each with a `.sha256` file beside it. Other layouts (MBR + FAT16,
//! no partition table, a non-FAT GPT partition) serve the kernel's disk tests.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Partition table and file system of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// GPT, one "Microsoft basic data" partition with FAT32.
    GptFat32,
    /// MBR, one type 0x06 partition with FAT16.
    MbrFat16,
    /// No partition table at all (zeros).
    Blank,
    /// GPT, one "Linux filesystem" partition that holds no FAT.
    GptLinux,
}

const SECTOR: u64 = 512;
/// First partition sector (1 MiB aligned).
const PART_START: u64 = 2048;

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A GUID in GPT's on-disk byte order from its text form.
fn guid(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let b: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("GUID constant"))
        .collect();
    let mut g = [0u8; 16];
    g[0..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
    g[4..6].copy_from_slice(&[b[5], b[4]]);
    g[6..8].copy_from_slice(&[b[7], b[6]]);
    g[8..16].copy_from_slice(&b[8..16]);
    g
}

fn write_at(f: &mut File, at: u64, bytes: &[u8]) -> Result<(), String> {
    f.seek(SeekFrom::Start(at))
        .and_then(|_| f.write_all(bytes))
        .map_err(|e| format!("writing the image: {e}"))
}

/// Writes a protective MBR, the primary and backup GPT with one partition
/// `PART_START..=last` of type `type_guid`.
fn write_gpt(f: &mut File, sectors: u64, type_guid: &str, name: &str) -> Result<u64, String> {
    let last_usable = sectors - 34;
    let mut mbr = vec![0u8; 512];
    let e = &mut mbr[446..462];
    e[4] = 0xee;
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    e[12..16].copy_from_slice(&((sectors - 1).min(0xffff_ffff) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    write_at(f, 0, &mbr)?;

    let mut entries = vec![0u8; 128 * 128];
    entries[0..16].copy_from_slice(&guid(type_guid));
    entries[16..32].copy_from_slice(&guid("6A3B1C2D-4E5F-4A6B-9C7D-8E9FA0B1C2D3"));
    entries[32..40].copy_from_slice(&PART_START.to_le_bytes());
    entries[40..48].copy_from_slice(&last_usable.to_le_bytes());
    for (i, u) in name.encode_utf16().take(36).enumerate() {
        entries[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
    let entries_crc = crc32(&entries);
    let header = |current: u64, backup: u64, entries_lba: u64| -> Vec<u8> {
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&guid("1F2E3D4C-5B6A-4978-8695-A4B3C2D1E0F9"));
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    write_at(f, SECTOR, &header(1, sectors - 1, 2))?;
    write_at(f, 2 * SECTOR, &entries)?;
    write_at(f, (sectors - 33) * SECTOR, &entries)?;
    write_at(
        f,
        (sectors - 1) * SECTOR,
        &header(sectors - 1, 1, sectors - 33),
    )?;
    Ok(last_usable - PART_START + 1)
}

fn write_mbr(f: &mut File, sectors: u64, kind: u8) -> Result<u64, String> {
    let count = sectors - PART_START;
    let mut mbr = vec![0u8; 512];
    let e = &mut mbr[446..462];
    e[4] = kind;
    e[8..12].copy_from_slice(&(PART_START as u32).to_le_bytes());
    e[12..16].copy_from_slice(&(count as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    write_at(f, 0, &mbr)?;
    Ok(count)
}

fn mtools(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// SHA-256 of `bytes` as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One file to put under `/models`: its name there, its contents, and the digest
/// its `.sha256` file should state (`None`: no `.sha256` file).
pub struct DiskFile {
    /// Name under `/models`.
    pub name: String,
    /// Host file.
    pub path: PathBuf,
    /// Digest for the `.sha256` file beside it.
    pub sha256: Option<String>,
}

/// Builds the image `out` with `layout` and `files` under `/models`.
pub fn make_image(out: &Path, layout: Layout, files: &[DiskFile]) -> Result<(), String> {
    if !crate::deps::have("mformat") {
        crate::deps::apt_install(&["mtools"])?;
    }
    let mut total = 0u64;
    for f in files {
        total += fs::metadata(&f.path)
            .map_err(|e| format!("{}: {e}", f.path.display()))?
            .len();
    }
    let mib = 1u64 << 20;
    let size = ((total + total / 16) / mib + 48) * mib;
    let sectors = size / SECTOR;
    let _ = fs::remove_file(out);
    let mut img = File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    img.set_len(size)
        .map_err(|e| format!("sizing {}: {e}", out.display()))?;
    let (part_sectors, fat) = match layout {
        Layout::Blank => return Ok(()),
        Layout::GptLinux => {
            write_gpt(
                &mut img,
                sectors,
                "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
                "linux",
            )?;
            return Ok(());
        }
        Layout::GptFat32 => (
            write_gpt(
                &mut img,
                sectors,
                "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
                "EMBODIOS",
            )?,
            32,
        ),
        Layout::MbrFat16 => (write_mbr(&mut img, sectors, 0x06)?, 16),
    };
    drop(img);
    let target = format!("{}@@{}", out.display(), PART_START * SECTOR);
    let total_s = part_sectors.to_string();
    // FAT32 needs at least 65525 clusters, FAT16 fewer: pick the cluster size.
    let cluster = match fat {
        32 if part_sectors < 1 << 20 => "1",
        32 => "8",
        _ => "4",
    };
    let mut args = vec![
        "-i",
        target.as_str(),
        "-T",
        total_s.as_str(),
        "-h",
        "64",
        "-s",
        "32",
        "-c",
        cluster,
        "-v",
        "EMBODIOS",
    ];
    if fat == 32 {
        args.push("-F");
    }
    args.push("::");
    mtools("mformat", &args)?;
    mtools("mmd", &["-i", &target, "::/models"])?;
    let tmp = std::env::temp_dir().join(format!("embodios-disk-{}", std::process::id()));
    fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    for f in files {
        let dest = format!("::/models/{}", f.name);
        mtools("mcopy", &["-i", &target, &f.path.to_string_lossy(), &dest])?;
        if let Some(d) = &f.sha256 {
            let side = tmp.join(format!("{}.sha256", f.name));
            fs::write(&side, format!("{d}  {}\n", f.name))
                .map_err(|e| format!("{}: {e}", side.display()))?;
            mtools(
                "mcopy",
                &[
                    "-i",
                    &target,
                    &side.to_string_lossy(),
                    &format!("{dest}.sha256"),
                ],
            )?;
        }
    }
    let _ = fs::remove_dir_all(&tmp);
    Ok(())
}

/// `cargo xtask disk --model FILE ... [--fat16] --out IMG`.
pub fn cmd_disk(args: &[String]) -> Result<(), String> {
    let mut models = Vec::new();
    let mut out = None;
    let mut layout = Layout::GptFat32;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--model" => models.push(PathBuf::from(it.next().ok_or("--model needs a file")?)),
            "--out" => out = Some(PathBuf::from(it.next().ok_or("--out needs a path")?)),
            "--fat16" => layout = Layout::MbrFat16,
            other => {
                return Err(format!(
                    "unknown option `{other}` (usage: disk --model FILE ... [--fat16] --out IMG)"
                ))
            }
        }
    }
    let out = out.ok_or("disk needs --out IMG")?;
    let mut files = Vec::new();
    for m in &models {
        let bytes = fs::read(m).map_err(|e| format!("{}: {e}", m.display()))?;
        let name = m
            .file_name()
            .ok_or_else(|| format!("{}: not a file name", m.display()))?
            .to_string_lossy()
            .into_owned();
        files.push(DiskFile {
            name,
            path: m.clone(),
            sha256: Some(sha256_hex(&bytes)),
        });
    }
    make_image(&out, layout, &files)?;
    println!("{}", out.display());
    Ok(())
}
