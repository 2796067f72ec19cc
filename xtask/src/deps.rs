//! Installing what the build and tests need on a fresh machine: Debian packages,
//! rustup targets and components.

use std::process::{Command, Stdio};

/// True when `program` runs (`program --version` exits successfully).
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Installs Debian packages with apt-get, running `apt-get update` first.
pub fn apt_install(packages: &[&str]) -> Result<(), String> {
    eprintln!("xtask: installing Debian packages: {}", packages.join(" "));
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let run = |args: &[&str]| -> Result<(), String> {
        let mut cmd = Command::new(sudo.first().copied().unwrap_or(args[0]));
        let rest = if sudo.is_empty() { &args[1..] } else { args };
        cmd.args(rest).env("DEBIAN_FRONTEND", "noninteractive");
        let status = cmd
            .status()
            .map_err(|e| format!("running {}: {e}", args.join(" ")))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`{}` failed ({status})", args.join(" ")))
        }
    };
    run(&["apt-get", "update", "-qq"])?;
    let mut args = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    run(&args)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Makes sure `python3 -m pip` works.
pub fn ensure_pip() -> Result<(), String> {
    let pip_ok = || {
        Command::new("python3")
            .args(["-m", "pip", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if pip_ok() {
        return Ok(());
    }
    apt_install(&["python3", "python3-pip"])?;
    if pip_ok() {
        Ok(())
    } else {
        Err("python3 -m pip still does not work after installing python3-pip".into())
    }
}

/// Makes sure `python3 -m venv` can make environments with pip in them.
pub fn ensure_venv() -> Result<(), String> {
    ensure_pip()?;
    let works = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if works {
        Ok(())
    } else {
        apt_install(&["python3-venv"])
    }
}

/// `rustup target add` for the given targets on the given toolchain (None: default).
pub fn rustup_targets(toolchain: Option<&str>, targets: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add"]);
    if let Some(tc) = toolchain {
        cmd.args(["--toolchain", tc]);
    }
    cmd.args(targets)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let status = cmd.status().map_err(|e| format!("running rustup: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`rustup target add {}` failed", targets.join(" ")))
    }
}

/// `rustup component add` on the given toolchain (None: default).
pub fn rustup_components(toolchain: Option<&str>, components: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "add"]);
    if let Some(tc) = toolchain {
        cmd.args(["--toolchain", tc]);
    }
    cmd.args(components)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let status = cmd.status().map_err(|e| format!("running rustup: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`rustup component add {}` failed",
            components.join(" ")
        ))
    }
}
