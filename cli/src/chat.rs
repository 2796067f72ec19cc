//! `embodios chat`: a multi-turn conversation with the model's chat template that keeps
//! the KV cache between turns.

use crate::args::{Args, Spec};
use crate::loaded::{self, Detok, Loaded, COMMON_VALUED};
use embodios_engine::{ChatTemplate, Generator, Message, Sampler, Session};
use embodios_host::StdClock;
use std::io::{BufRead, Write};

/// Tokens one reply may take when `-n` is not given.
const DEFAULT_REPLY_TOKENS: usize = 512;

const SPEC: Spec = Spec {
    valued: &[&COMMON_VALUED, &[("--system", None), ("--template", None)]],
    switches: &[],
    max_positional: 0,
};

pub fn main(raw: &[String]) -> Result<(), String> {
    let a = Args::parse(&SPEC, raw).map_err(|e| e.to_string())?;
    let path = a.required("--model").map_err(|e| e.to_string())?;
    let max_tokens = a
        .parsed::<usize>("--max-tokens")
        .map_err(|e| e.to_string())?
        .unwrap_or(DEFAULT_REPLY_TOKENS);
    let sampling = loaded::sampler_config(&a).map_err(|e| e.to_string())?;
    let pool = loaded::thread_pool(&a)?;
    let context = a.parsed::<usize>("--ctx").map_err(|e| e.to_string())?;

    let bytes = loaded::read_file(path)?;
    let m = Loaded::new(path, &bytes, context)?;
    let template = match a.value("--template") {
        Some(name) => ChatTemplate::from_name(name)
            .ok_or_else(|| format!("unknown chat template name `{name}`"))?,
        None => ChatTemplate::from_gguf(&m.file).map_err(|e| {
            format!("`{path}`: {e}; pass --template NAME (for example chatml) to choose one")
        })?,
    };

    let mut history: Vec<(String, String)> = Vec::new();
    if let Some(system) = a.value("--system") {
        history.push(("system".into(), system.into()));
    }
    let first_turn = history.len();
    let mut session = m.model.new_session();
    let mut generator = Generator::new(Sampler::new(sampling), max_tokens);
    let clock = StdClock::new();

    eprintln!(
        "embodios chat: {} ({} template). /exit to quit, /reset to start over.",
        m.file.get_str("general.name").unwrap_or(path),
        template.name()
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let Some(line) = lines.next() else { break };
        let line = line.map_err(|e| format!("reading input: {e}"))?;
        let line = line.trim_end_matches(['\r', '\n']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.truncate(first_turn);
                session.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        history.push(("user".into(), line.to_string()));
        let reply = reply(
            &m,
            &template,
            &history,
            &mut session,
            &mut generator,
            &pool,
            &clock,
        )?;
        history.push(("assistant".into(), reply));
    }
    Ok(())
}

/// Generates the assistant's reply to the conversation so far, reusing the part of the
/// KV cache that the new prompt shares with what the session already evaluated.
fn reply(
    m: &Loaded<'_>,
    template: &ChatTemplate,
    history: &[(String, String)],
    session: &mut Session,
    generator: &mut Generator,
    pool: &embodios_host::ThreadPool,
    clock: &StdClock,
) -> Result<String, String> {
    let messages: Vec<Message<'_>> = history
        .iter()
        .map(|(role, content)| Message::new(role, content))
        .collect();
    let prompt = template
        .render(&messages, true)
        .map_err(|e| format!("chat template: {e}"))?;
    let ids = m.tokenizer.encode(&prompt, true, true);
    let shared = session.reuse_prefix(&ids);

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let generation = generator
        .run(
            &m.model,
            session,
            &Detok(&m.tokenizer),
            &ids[shared..],
            pool,
            clock,
            &mut |piece| {
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
                true
            },
        )
        .map_err(|e| e.to_string())?;
    let _ = writeln!(out);
    Ok(generation.text)
}
