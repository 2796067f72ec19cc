//! End-to-end tests of the `embodios` binary: llama.cpp's greedy text from `run`, and a
//! one-line error with a non-zero exit for bad files and bad flags.

use embodios_testkit::TestModel;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_embodios");

fn smollm2() -> PathBuf {
    TestModel::SmolLm2.path()
}

fn embodios(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("embodios runs")
}

fn golden() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/engine/tests/golden/smollm2_greedy.json");
    let text = std::fs::read_to_string(&path).expect("engine goldens are committed");
    serde_json::from_str(&text).expect("goldens are JSON")
}

#[test]
fn run_prints_what_llama_cpp_prints_for_the_capital_of_france() {
    let model = smollm2();
    let golden = golden();
    let case = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["prompt"] == "The capital of France is")
        .expect("golden case for the README prompt");
    let out = embodios(&[
        "run",
        "-m",
        model.to_str().unwrap(),
        "-p",
        "The capital of France is",
        "-n",
        "32",
        "--temp",
        "0",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    let json: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    assert_eq!(json["prompt_ids"], case["prompt_ids"]);
    assert_eq!(json["ids"], case["greedy_ids"]);
    assert_eq!(json["text"], case["greedy_text"]);
    // The streamed text (everything before the JSON line) is the same text.
    let streamed = &stdout[..stdout.len() - last.len() - 1];
    assert_eq!(
        streamed.trim_end_matches('\n'),
        case["greedy_text"].as_str().unwrap()
    );
    for key in ["ttft_ms", "prefill_tok_s", "decode_tok_s"] {
        assert!(json[key].as_f64().unwrap() > 0.0, "{key} = {}", json[key]);
    }
}

fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "stderr {stderr:?} lacks {needle:?}"
    );
}

#[test]
fn missing_file_is_a_one_line_error() {
    let out = embodios(&["inspect", "-m", "/nonexistent/model.gguf"]);
    assert_one_line_error(&out, "cannot read model file `/nonexistent/model.gguf`");
}

#[test]
fn a_file_that_is_not_gguf_is_a_one_line_error() {
    let dir = std::env::temp_dir().join(format!("embodios-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("not-a-model.gguf");
    std::fs::write(&path, b"this is plain text, not a model").unwrap();
    let out = embodios(&["run", "-m", path.to_str().unwrap(), "-p", "hi"]);
    assert_one_line_error(&out, "is not a valid GGUF file");

    let model = std::fs::read(smollm2()).unwrap();
    let truncated = dir.join("truncated.gguf");
    std::fs::write(&truncated, &model[..model.len() / 2]).unwrap();
    let out = embodios(&["tokenize", "-m", truncated.to_str().unwrap(), "hello"]);
    assert_one_line_error(&out, "is not a valid GGUF file");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_flags_are_one_line_errors() {
    let model = smollm2();
    let m = model.to_str().unwrap();
    assert_one_line_error(
        &embodios(&["run", "-m", m, "--bogus"]),
        "unknown option `--bogus`",
    );
    assert_one_line_error(
        &embodios(&["run", "-m", m, "-p", "x", "--temp", "hot"]),
        "invalid value `hot` for --temp",
    );
    assert_one_line_error(
        &embodios(&["run", "-m", m]),
        "missing required option --prompt (or --file)",
    );
    assert_one_line_error(&embodios(&["frobnicate"]), "unknown command `frobnicate`");
}

#[test]
fn tokenize_round_trips_through_decode() {
    let model = smollm2();
    let m = model.to_str().unwrap();
    let out = embodios(&["tokenize", "-m", m, "Hello, world!", "--json"]);
    assert!(out.status.success());
    let ids = String::from_utf8(out.stdout).unwrap();
    let parsed: Vec<u32> = serde_json::from_str(ids.trim()).unwrap();
    assert!(!parsed.is_empty());
    let out = embodios(&["tokenize", "-m", m, "--decode", ids.trim()]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "Hello, world!\n");
}

#[test]
fn inspect_lists_tensors_and_the_quant_mix() {
    let model = smollm2();
    let out = embodios(&["inspect", "-m", model.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("general.architecture = \"llama\""), "{text}");
    assert!(text.contains("token_embd.weight"));
    assert!(text.contains("Q8_0") && text.contains("Q4_1"));
    assert!(text.contains("576 x 49152"));
}

#[test]
fn inspect_cpu_names_the_active_kernel_set() {
    let out = embodios(&["inspect", "--cpu"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let set = text
        .lines()
        .find_map(|l| l.strip_prefix("kernel set: "))
        .expect("a kernel set line");
    let expected = if cfg!(target_arch = "x86_64") && std::is_x86_feature_detected!("avx2") {
        "avx2+fma"
    } else {
        "scalar"
    };
    assert_eq!(set, expected, "{text}");
    let panels = text
        .lines()
        .find_map(|l| l.strip_prefix("panel kernels: "))
        .expect("a panel kernels line");
    let avx512 = cfg!(target_arch = "x86_64")
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni");
    let expected = match (expected, avx512) {
        ("scalar", _) => "none",
        (_, true) => "avx512-vnni",
        _ => "avx2",
    };
    assert!(panels.starts_with(expected), "{text}");
}
