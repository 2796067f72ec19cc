//! `load disk:/path/model.gguf [as NAME]`: reads a GGUF file from a FAT volume straight
//! into the frames that hold it for good (one allocation, large reads with several
//! commands in flight, a progress bar with MB/s), checks it (GGUF bounds, SHA-256
//! against a `.sha256` file beside it), then registers and loads it as a model.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use sha2::{Digest, Sha256};

use super::fat::FatError;
use super::PathError;
use crate::arch::x86_64::time;
use crate::drivers::dma::FrameBuffer;
use crate::models::{human_bytes, Registry};

/// Why a model could not be loaded from disk.
#[derive(Debug, Clone)]
pub enum DiskLoadError {
    /// The path, disk or file system.
    Path(PathError),
    /// The file is empty.
    Empty,
    /// No run of free frames is large enough.
    OutOfMemory {
        /// Bytes needed.
        need: u64,
    },
    /// A read failed (the memory taken for the file was freed).
    Read {
        /// The disk and its driver (`disk0 (nvme)`).
        disk: String,
        /// Bytes of the file read before the piece (up to 8 MiB) that failed.
        at: u64,
        /// The file's size (and so the memory taken and freed).
        size: u64,
        /// The device's or the file system's error.
        error: FatError,
    },
    /// The `.sha256` file beside the model disagrees.
    Digest {
        /// Digest in the `.sha256` file.
        want: String,
        /// Digest of the bytes read.
        got: String,
    },
    /// The `.sha256` file holds no digest.
    BadDigestFile,
    /// The model checks or the engine refused it.
    Model(String),
}

impl fmt::Display for DiskLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskLoadError::Path(e) => write!(f, "{e}"),
            DiskLoadError::Empty => f.write_str("the file is empty"),
            DiskLoadError::OutOfMemory { need } => write!(
                f,
                "no free run of {} of physical memory for the model",
                human_bytes(*need)
            ),
            DiskLoadError::Read {
                disk,
                at,
                size,
                error,
            } => {
                write!(
                    f,
                    "read error on {disk} ({at} of the file's {size} bytes were read before \
                     the failing piece): "
                )?;
                match error {
                    FatError::Read(e) => write!(f, "{e}")?,
                    other => write!(f, "{other}")?,
                }
                write!(
                    f,
                    "; the {} taken for the file were freed, other models are untouched",
                    human_bytes(*size)
                )
            }
            DiskLoadError::Digest { want, got } => write!(
                f,
                "SHA-256 mismatch, file corrupted: the .sha256 file says {want}, the data is {got}"
            ),
            DiskLoadError::BadDigestFile => {
                f.write_str("the .sha256 file beside the model has no 64-digit hex digest")
            }
            DiskLoadError::Model(e) => write!(f, "refused: {e}"),
        }
    }
}

/// Default model name: the file name up to its first `.`, lower case.
fn default_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split('.').next().unwrap_or(file).to_ascii_lowercase()
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Reads the model at `spec` into frames, checks it and registers it as `name`.
/// Returns the slot name.
pub fn read_model(
    reg: &mut Registry,
    spec: &str,
    name: Option<&str>,
) -> Result<String, DiskLoadError> {
    let (_, path) = super::split_path(spec);
    let name = name.map_or_else(|| default_name(path), ToString::to_string);
    if reg.find(&name).is_ok() {
        return Err(DiskLoadError::Model(format!(
            "a model named `{name}` exists already (use `load {spec} as OTHER`)"
        )));
    }
    let (buf, digest_file) = super::with_volume(spec, |disk, vol, path| {
        let entry = vol.lookup(disk, path).map_err(PathError::Fs)?;
        if entry.dir {
            return Err(PathError::Fs(FatError::IsADirectory(path.to_string())));
        }
        let sidecar = match vol.read_small(disk, &format!("{path}.sha256"), 4096) {
            Ok(text) => Some(text),
            Err(FatError::NotFound(_)) => None,
            Err(e) => return Err(PathError::Fs(e)),
        };
        let size = u64::from(entry.size);
        let Some(mut buf) = (size > 0)
            .then(|| FrameBuffer::new(size as usize))
            .flatten()
        else {
            let e = if size == 0 {
                DiskLoadError::Empty
            } else {
                DiskLoadError::OutOfMemory { need: size }
            };
            return Ok((Err(e), sidecar));
        };
        // Bytes read so far (the progress callback's count), for an error message.
        let mut reached = 0u64;
        let t0 = time::uptime_us();
        let mut last_draw = 0u64;
        let mut draw = |done: u64| {
            reached = done;
            let now = time::uptime_us();
            if done < size && now - last_draw < 200_000 {
                return;
            }
            last_draw = now;
            let pct = done * 100 / size;
            let secs = (now - t0).max(1) as f64 / 1e6;
            let bar: String = (0..30)
                .map(|i| if i * 100 / 30 < pct { '#' } else { '.' })
                .collect();
            print!(
                "\r[{bar}] {pct:>3}% {} / {}  {:.1} MB/s",
                human_bytes(done),
                human_bytes(size),
                done as f64 / 1e6 / secs
            );
        };
        let r = vol.read_file(disk, &entry, buf.as_mut_slice(), &mut draw);
        println!();
        match r {
            Ok(()) => {
                let us = (time::uptime_us() - t0).max(1);
                println!(
                    "read {} in {} ms ({:.1} MB/s) from {} ({})",
                    human_bytes(size),
                    us / 1000,
                    size as f64 / us as f64,
                    disk.name,
                    disk.dev.driver()
                );
                Ok((Ok(buf), sidecar))
            }
            // `buf` drops here: the frames go back.
            Err(error) => Ok((
                Err(DiskLoadError::Read {
                    disk: format!("{} ({})", disk.name, disk.dev.driver()),
                    at: reached,
                    size,
                    error,
                }),
                sidecar,
            )),
        }
    })
    .map_err(DiskLoadError::Path)?;
    let buf = buf?;
    if let Some(text) = digest_file {
        let want = core::str::from_utf8(&text)
            .ok()
            .and_then(|t| t.split_ascii_whitespace().next())
            .filter(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_ascii_lowercase)
            .ok_or(DiskLoadError::BadDigestFile)?;
        let t0 = time::uptime_ms();
        let got = hex(&Sha256::digest(buf.as_slice()));
        if got != want {
            return Err(DiskLoadError::Digest { want, got });
        }
        println!(
            "SHA-256 matches {path}.sha256 ({} ms)",
            time::uptime_ms() - t0
        );
    }
    // Check before giving the frames away for good; a refused file frees them.
    match embodios_gguf::GgufFile::parse(buf.as_slice()) {
        Ok(f) if f.architecture().is_some() => {}
        Ok(_) => {
            return Err(DiskLoadError::Model(
                "not a model: the GGUF file has no `general.architecture`".to_string(),
            ))
        }
        Err(e) => return Err(DiskLoadError::Model(format!("not a valid GGUF file: {e}"))),
    }
    let bytes = buf.leak();
    reg.add_model(&name, bytes).map_err(DiskLoadError::Model)?;
    Ok(name)
}

/// The shell's `load diskN:/path [as NAME]`.
pub fn cmd(reg: &mut Registry, args: &[&str]) {
    let (spec, name) = match args {
        [spec] => (*spec, None),
        [spec, "as", name] => (*spec, Some(*name)),
        _ => {
            println!("usage: load [diskN]:/PATH/MODEL.gguf [as NAME]");
            return;
        }
    };
    match read_model(reg, spec, name) {
        Ok(name) => {
            let t0 = time::uptime_ms();
            match reg.load(&name) {
                Ok(()) => println!(
                    "loaded `{name}` from {spec} in {} ms{}",
                    time::uptime_ms() - t0,
                    if reg
                        .slots
                        .get(reg.active.unwrap_or(usize::MAX))
                        .is_some_and(|s| s.name == name)
                    {
                        " (active)"
                    } else {
                        ""
                    }
                ),
                Err(e) => println!("load: {e}"),
            }
        }
        Err(e) => println!("load: {spec}: {e}"),
    }
}

/// Lines for `models`: the GGUF files under `/models` on the disks not loaded yet.
pub fn print_disk_models(reg: &Registry) {
    let files: Vec<(String, u64)> = super::model_files();
    for (path, size) in files {
        let name = default_name(&path);
        if reg.find(&name).is_ok() {
            continue;
        }
        println!(
            "{:<12} {:<8} {:>8} {:>10}  {:<30} on disk: `load {path}`",
            name,
            "-",
            "-",
            human_bytes(size),
            "-"
        );
    }
}
