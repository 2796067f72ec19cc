//! The `embodios` host command line: runs the EMBODIOS engine on Linux (run, chat,
//! tokenize, inspect, serve, quantize), the same engine code the kernel links.

mod args;
mod chat;
mod inspect;
mod loaded;
mod quantize;
mod run;
mod serve;
mod tokenize;

use std::process::ExitCode;

const USAGE: &str = "\
usage: embodios <command> [options]

commands:
  run       -m FILE (-p PROMPT | -f FILE) [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p P]
            [--repeat-penalty R] [--seed S] [--threads N] [--ctx N] [--stop TEXT] [--json]
            complete a raw prompt (no chat template), streaming the text
  chat      -m FILE [--system TEXT] [--template NAME] [sampling options as for run]
            multi-turn chat with the model's chat template; /exit, /reset inside
  tokenize  -m FILE TEXT [--json] [--no-bos] [--no-special]
            token ids of TEXT; with --decode, TEXT is a list of ids to turn into text
  inspect   -m FILE [--cpu]
            metadata and tensor table of a GGUF file; --cpu (with or without -m):
            the CPU's SIMD features and which kernel set the engine uses
  quantize  IN.gguf OUT.gguf --type TYPE [--threads N]
            rewrite a model with other weight types (Q8_0, Q4_K_M, Q4_0, ...,
            as llama.cpp's llama-quantize mixes them); metadata kept;
            --dry-run (without OUT) prints each tensor's new type
  serve     -m FILE [-m FILE...] [--port N] [--host ADDR] [--api-key KEY] [--threads N]
            [--ctx N] [--queue N]
            Ollama- and OpenAI-compatible HTTP API (default 127.0.0.1:11434)
";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = argv.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &argv[1..];
    let result = match command.as_str() {
        "run" => run::main(rest),
        "chat" => chat::main(rest),
        "tokenize" => tokenize::main(rest),
        "inspect" => inspect_main(rest),
        "serve" => serve::main(rest),
        "quantize" => quantize::main(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}` (try `embodios help`)")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("embodios: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn inspect_main(raw: &[String]) -> Result<(), String> {
    const SPEC: args::Spec = args::Spec {
        valued: &[&[("--model", Some("-m"))]],
        switches: &["--cpu"],
        max_positional: 0,
    };
    let a = args::Args::parse(&SPEC, raw).map_err(|e| e.to_string())?;
    if a.flag("--cpu") {
        print!("{}", inspect::cpu_report());
        if a.value("--model").is_none() {
            return Ok(());
        }
    }
    let path = a.required("--model").map_err(|e| e.to_string())?;
    let bytes = loaded::read_file(path)?;
    let file = loaded::parse(path, &bytes)?;
    print!("{}", inspect::report(&file, bytes.len() as u64));
    Ok(())
}
