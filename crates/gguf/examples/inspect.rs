//! Prints a GGUF file's metadata and tensors, and how long parsing took.
//!
//! `cargo run --release -p embodios-gguf --example inspect -- MODEL.gguf [--tensors]`

use std::fmt::Write as _;
use std::io::Write as _;

use embodios_gguf::{GgufFile, Value};

fn show(v: &Value) -> String {
    match v {
        Value::Str(_) => match v.as_str() {
            Some(s) if s.chars().count() > 60 => {
                format!("{:?}…", s.chars().take(60).collect::<String>())
            }
            Some(s) => format!("{s:?}"),
            None => format!("<{} non-UTF-8 bytes>", v.as_bytes().map_or(0, <[u8]>::len)),
        },
        Value::Array(items) => {
            let head: Vec<String> = items.iter().take(3).map(show).collect();
            let more = if items.len() > 3 { ", …" } else { "" };
            format!("[{}{more}] ({} items)", head.join(", "), items.len())
        }
        other => format!("{other:?}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: inspect MODEL.gguf [--tensors]");
        std::process::exit(2);
    };
    let bytes = std::fs::read(path).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1)
    });
    let start = std::time::Instant::now();
    let file = match GgufFile::parse(&bytes) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1)
        }
    };
    let took = start.elapsed();
    // Collected and written once, so that a closed pipe (`| head`) ends it quietly.
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{path}: GGUF v{}, {} keys, {} tensors, alignment {}, data at {}, parsed in {:.2} ms",
        file.version,
        file.metadata.len(),
        file.tensors.len(),
        file.alignment,
        file.data_offset,
        took.as_secs_f64() * 1e3
    );
    for (k, v) in &file.metadata {
        let _ = writeln!(out, "  {k}: {} = {}", v.type_name(), show(v));
    }
    if args.iter().any(|a| a == "--tensors") {
        for t in &file.tensors {
            let _ = writeln!(
                out,
                "  {} {} {:?} @{} ({} bytes)",
                t.name,
                t.ty,
                t.dims,
                t.offset,
                t.data.len()
            );
        }
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
}
