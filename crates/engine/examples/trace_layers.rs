//! Debug aid: prints the engine's named intermediate vectors for one token as
//! `name-layer v0 v1 ...` lines (to compare with llama.cpp's graph callback dumps).
use embodios_engine::{Model, ModelOptions, Sequential};
use embodios_gguf::GgufFile;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bytes = std::fs::read(&args[0]).unwrap();
    let file = GgufFile::parse(&bytes).unwrap();
    let model = Model::load(
        &file,
        ModelOptions {
            max_context: Some(256),
        },
    )
    .unwrap();
    let mut s = model.new_session();
    s.trace = Some(|name, layer, v| {
        let vals: Vec<String> = v.iter().map(|x| format!("{x:e}")).collect();
        println!("{name}-{layer} {}", vals.join(" "));
        let _ = &vals;
    });
    let toks: Vec<u32> = args[1].split(',').map(|t| t.parse().unwrap()).collect();
    let logits = model.forward(&mut s, &toks, &Sequential).unwrap().to_vec();
    let vals: Vec<String> = logits.iter().map(|x| format!("{x:e}")).collect();
    println!("result_output {}", vals.join(" "));
}
