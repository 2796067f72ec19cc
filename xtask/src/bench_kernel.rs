//! The kernel rows of `cargo xtask bench`: the EMBODIOS kernel booted in QEMU with one
//! model as a module, `bench --json` run from the kernel command line (`exec=`), once per
//! thread count (`-smp N`, `threads=N`), labelled with the accelerator QEMU really used.

use crate::kernel::{self, Entry, IsoSpec, ModelFile};
use crate::qemu::{self, Accel, Firmware, Session};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One boot's figures.
pub struct KernelRow {
    pub threads: usize,
    pub accel: Accel,
    pub model: String,
    pub model_path: PathBuf,
    /// The `bench --json` line.
    pub json: serde_json::Value,
}

/// How long a boot may take to print `bench --json` (TCG is about 500 times slower than
/// the host: the tiny model takes seconds, SmolLM2 many minutes).
const KVM_TIMEOUT: Duration = Duration::from_secs(600);
const TCG_TIMEOUT: Duration = Duration::from_secs(3600);

/// Boots the kernel once per thread count with `model` and collects `bench --json`.
pub fn run(model: &Path, model_label: &str, threads: &[usize]) -> Result<Vec<KernelRow>, String> {
    kernel::ensure_tools()?;
    let elf = kernel::build()?;
    let dir = crate::models::cache_dir().join("bench").join("iso");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let model_mb = std::fs::metadata(model).map(|m| m.len() >> 20).unwrap_or(0);
    let mut accel = None;
    let mut rows = Vec::new();
    for &t in threads {
        let spec = IsoSpec {
            entry: Entry::Normal,
            timeout: 0,
            models: vec![ModelFile {
                name: "bench".into(),
                path: model.to_path_buf(),
            }],
            default_model: Some("bench".into()),
            custom: Some(format!("model=bench threads={t} exec=\"bench --json\"")),
        };
        let iso = dir.join(format!("bench-{t}.iso"));
        kernel::make_iso_with(&elf, &iso, &spec)?;
        let accel = *accel.get_or_insert_with(|| qemu::resolve_accel(Accel::Auto, &iso));
        let opts = qemu::Options {
            iso: iso.clone(),
            cores: t as u32,
            // The module is copied into guest memory; the engine needs room beside it.
            mem: format!("{}M", (2 * model_mb + 768).max(1024)),
            firmware: Firmware::Bios,
            accel,
            monitor: None,
        };
        eprintln!(
            "xtask: kernel bench in QEMU ({}), {t} core(s), model {model_label}",
            accel_label(accel)
        );
        let mut s = Session::spawn(&opts)?;
        let timeout = if accel == Accel::Kvm {
            KVM_TIMEOUT
        } else {
            TCG_TIMEOUT
        };
        s.wait_for("exec: done", timeout).map_err(|e| {
            format!(
                "kernel bench ({t} cores): {e}\n--- console ---\n{}",
                tail(&s.output(), 40)
            )
        })?;
        let out = s.output();
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with("{\"model\""))
            .ok_or_else(|| format!("kernel printed no bench JSON:\n{}", tail(&out, 40)))?;
        let json: serde_json::Value = serde_json::from_str(line.trim())
            .map_err(|e| format!("kernel bench JSON {line:?}: {e}"))?;
        rows.push(KernelRow {
            threads: t,
            accel,
            model: model_label.to_string(),
            model_path: model.to_path_buf(),
            json,
        });
    }
    Ok(rows)
}

/// "QEMU KVM" or "QEMU TCG".
pub fn accel_label(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "QEMU KVM",
        _ => "QEMU TCG",
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
