//! `embodios quantize`: the type it gives each tensor equals llama.cpp's quantizer's choice
//! (golden from `scripts/golden/quant_mix_goldens.py`), a Q8_0 rewrite keeps the metadata
//! and stays within Q8_0's rounding bound of the source values, and bad types are refused.

use embodios_gguf::{GgmlType, GgufFile};
use embodios_testkit::TestModel;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_embodios");

fn embodios(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("embodios runs")
}

fn golden() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/smollm2_quant_mix.json");
    let text = std::fs::read_to_string(&path).expect("quantize goldens are committed");
    serde_json::from_str(&text).expect("goldens are JSON")
}

/// A fresh path in the temp directory for one test's output.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("embodios-quantize-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn every_tensor_gets_the_type_llama_cpp_gives_it() {
    let model = TestModel::SmolLm2.path();
    let golden = golden();
    let presets = golden.as_object().unwrap();
    assert!(presets.contains_key("Q4_K_M") && presets.contains_key("Q8_0"));
    for (preset, expected) in presets {
        let out = embodios(&[
            "quantize",
            model.to_str().unwrap(),
            "--type",
            preset,
            "--dry-run",
        ]);
        assert!(
            out.status.success(),
            "{preset}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let ours: std::collections::BTreeMap<&str, &str> = stdout
            .lines()
            .map(|l| l.split_once(' ').expect("`name type` lines"))
            .collect();
        let theirs = expected["types"].as_object().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{preset}: tensor count");
        for (name, ty) in theirs {
            assert_eq!(
                ours.get(name.as_str()).copied(),
                ty.as_str(),
                "{preset}: type of {name}"
            );
        }
    }
}

#[test]
fn q8_0_keeps_metadata_and_rounds_within_half_a_step() {
    let model = TestModel::SmolLm2.path();
    let out_path = scratch("smollm2-q8_0.gguf");
    let out = embodios(&[
        "quantize",
        model.to_str().unwrap(),
        out_path.to_str().unwrap(),
        "--type",
        "Q8_0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let src_bytes = std::fs::read(&model).unwrap();
    let dst_bytes = std::fs::read(&out_path).unwrap();
    std::fs::remove_file(&out_path).ok();
    let src = GgufFile::parse(&src_bytes).unwrap();
    let dst = GgufFile::parse(&dst_bytes).expect("the output parses");

    let want_file_type = golden()["Q8_0"]["file_type"].as_u64().unwrap() as u32;
    assert_eq!(dst.get_u32("general.file_type"), Some(want_file_type));
    assert_eq!(src.metadata.len(), dst.metadata.len());
    for ((ks, vs), (kd, vd)) in src.metadata.iter().zip(&dst.metadata) {
        assert_eq!(ks, kd, "metadata order");
        if *ks != "general.file_type" {
            assert_eq!(vs, vd, "metadata {ks}");
        }
    }

    assert_eq!(src.tensors.len(), dst.tensors.len());
    let mut checked = 0;
    for (s, d) in src.tensors.iter().zip(&dst.tensors) {
        assert_eq!((s.name, &s.dims), (d.name, &d.dims));
        if s.dims.len() < 2 {
            assert_eq!(d.ty, s.ty, "{} keeps its type", s.name);
            assert_eq!(d.data, s.data, "{} keeps its bytes", s.name);
            continue;
        }
        assert_eq!(d.ty, GgmlType::Q8_0, "{}", s.name);
        let n = s.n_elements() as usize;
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        embodios_quant::dequantize_row(s.ty, s.data, &mut a).unwrap();
        embodios_quant::dequantize_row(d.ty, d.data, &mut b).unwrap();
        // Q8_0 stores x / d rounded, d = max|x| / 127 kept as f16: the error of one value
        // is at most d/2 plus 127 times d's f16 rounding (2^-11 relative).
        for (block_a, block_b) in a.chunks(32).zip(b.chunks(32)) {
            let amax = block_a.iter().fold(0f32, |m, x| m.max(x.abs()));
            let bound = amax / 127.0 * (0.5 + 127.0 / 2048.0) + 1e-7;
            for (x, y) in block_a.iter().zip(block_b) {
                assert!(
                    (x - y).abs() <= bound,
                    "{}: {x} became {y} (bound {bound})",
                    s.name
                );
            }
        }
        checked += 1;
    }
    assert!(checked > 100, "only {checked} weight matrices were checked");
}

#[test]
fn unknown_types_and_missing_files_are_refused_without_output() {
    let model = TestModel::SmolLm2.path();
    let out_path = scratch("never.gguf");
    let out = embodios(&[
        "quantize",
        model.to_str().unwrap(),
        out_path.to_str().unwrap(),
        "--type",
        "Q9_9",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(
        stderr.contains("unknown quantization type `Q9_9`") && stderr.contains("Q4_K_M"),
        "{stderr}"
    );
    assert!(!out_path.exists());

    let out = embodios(&[
        "quantize",
        "/nonexistent/model.gguf",
        out_path.to_str().unwrap(),
        "--type",
        "Q8_0",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read model file"));
    assert!(!out_path.exists());
}
