//! Chat rendering against llama.cpp's `llama_chat_apply_template`, recorded by
//! `scripts/golden/model_chat_goldens.py` for built-in template names, marker strings
//! that steer llama.cpp's detection, and SmolLM2's own template.

mod common;

use common::golden;
use embodios_engine::chat::{apply_template, ChatTemplate, ChatTemplateError, Message};
use embodios_gguf::GgufFile;

#[test]
fn rendering_matches_llama_cpp_for_every_recorded_case() {
    let g = golden("chat_templates.json");
    let cases = g["cases"].as_array().expect("cases");
    assert!(cases.len() >= 60, "too few chat cases: {}", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let label = case["label"].as_str().unwrap();
        let tmpl = case["template"].as_str().unwrap();
        let msgs: Vec<Message<'_>> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let got = apply_template(tmpl, &msgs, add);
        match (case["expected"].as_str(), got) {
            (Some(want), Ok(got)) if want == got => {}
            (want, got) => failures.push(format!(
                "{label} (add_generation_prompt={add}, {} messages):\n  llama.cpp: {want:?}\n  ours:      {got:?}",
                msgs.len()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn smollm2_template_is_detected_as_chatml_from_the_file() {
    let bytes = std::fs::read(common::smollm2_path()).expect("read model");
    let file = GgufFile::parse(&bytes).expect("parse");
    assert_eq!(ChatTemplate::from_gguf(&file), Ok(ChatTemplate::ChatMl));
}

#[test]
fn families_are_detected_by_their_markers() {
    let cases = [
        ("{{ '<|im_start|>' }}", ChatTemplate::ChatMl),
        ("{{ '[INST] <<SYS>>' }}", ChatTemplate::Llama2Sys),
        ("{{ '[INST]' }}", ChatTemplate::Llama2),
        (
            "{{ '<|start_header_id|>' + '<|end_header_id|>' }}",
            ChatTemplate::Llama3,
        ),
        (
            "{{ '<|user|>' + eos_token + '<|assistant|>' }}",
            ChatTemplate::GlmEdge,
        ),
        ("{{ '<|user|>' + '<|endoftext|>' }}", ChatTemplate::Zephyr),
        ("{{ '<start_of_turn>' }}", ChatTemplate::Gemma),
        (
            "{{ '<|user|>' + '<|end|>' + '<|assistant|>' }}",
            ChatTemplate::Phi3,
        ),
        (
            "{{ '[SYSTEM_PROMPT]' + '[INST]' }}",
            ChatTemplate::MistralV7,
        ),
    ];
    for (tmpl, want) in cases {
        assert_eq!(ChatTemplate::detect(tmpl), Ok(want), "{tmpl}");
    }
    assert!(matches!(
        ChatTemplate::detect("{% for m in messages %}{{ m.content }}{% endfor %}"),
        Err(ChatTemplateError::Unrecognised { .. })
    ));
}
