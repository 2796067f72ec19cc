//! Loading a model for the CLI: reading the file, parsing GGUF, building the model and
//! tokenizer, and the options every generating command shares.

use crate::args::{ArgError, Args, Valued};
use embodios_engine::{Detokenize, Model, ModelOptions, SamplerConfig};
use embodios_gguf::GgufFile;
use embodios_tokenizer::Tokenizer;

/// Context length used when neither the user nor a smaller model limit says otherwise;
/// the same default as llama.cpp's tools.
const DEFAULT_CONTEXT: usize = 4096;

pub fn read_file(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read model file `{path}`: {e}"))
}

pub fn parse<'a>(path: &str, bytes: &'a [u8]) -> Result<GgufFile<'a>, String> {
    GgufFile::parse(bytes).map_err(|e| format!("`{path}` is not a valid GGUF file: {e}"))
}

/// The flags shared by `run` and `chat`: model, threads, context and sampling.
pub const COMMON_VALUED: [Valued; 10] = [
    ("--model", Some("-m")),
    ("--threads", Some("-t")),
    ("--ctx", Some("-c")),
    ("--temp", None),
    ("--top-k", None),
    ("--top-p", None),
    ("--min-p", None),
    ("--repeat-penalty", None),
    ("--seed", Some("-s")),
    ("--max-tokens", Some("-n")),
];

/// A model ready to generate with: borrowed from the file bytes.
pub struct Loaded<'a> {
    pub file: GgufFile<'a>,
    pub model: Model<'a>,
    pub tokenizer: Tokenizer,
}

impl<'a> Loaded<'a> {
    pub fn new(path: &str, bytes: &'a [u8], context: Option<usize>) -> Result<Self, String> {
        let file = parse(path, bytes)?;
        let tokenizer = Tokenizer::from_gguf(&file)
            .map_err(|e| format!("`{path}`: cannot build the tokenizer: {e}"))?;
        let options = ModelOptions {
            max_context: Some(context.unwrap_or(DEFAULT_CONTEXT)),
        };
        let model = Model::load(&file, options).map_err(|e| format!("`{path}`: {e}"))?;
        Ok(Self {
            file,
            model,
            tokenizer,
        })
    }
}

/// Sampling settings from the flags, starting from llama.cpp's defaults.
pub fn sampler_config(a: &Args) -> Result<SamplerConfig, ArgError> {
    let mut c = SamplerConfig::default();
    if let Some(v) = a.parsed("--temp")? {
        c.temperature = v;
    }
    if let Some(v) = a.parsed("--top-k")? {
        c.top_k = v;
    }
    if let Some(v) = a.parsed("--top-p")? {
        c.top_p = v;
    }
    if let Some(v) = a.parsed("--min-p")? {
        c.min_p = v;
    }
    if let Some(v) = a.parsed("--repeat-penalty")? {
        c.repeat_penalty = v;
    }
    if let Some(v) = a.parsed("--seed")? {
        c.seed = v;
    }
    Ok(c)
}

/// The thread count from `--threads`, else every available core.
pub fn thread_pool(a: &Args) -> Result<embodios_host::ThreadPool, String> {
    let pool = match a.parsed::<usize>("--threads").map_err(|e| e.to_string())? {
        Some(0) => return Err("--threads must be at least 1".into()),
        Some(n) => embodios_host::ThreadPool::new(n),
        None => embodios_host::ThreadPool::with_available_parallelism(),
    };
    pool.map_err(|e| format!("cannot start worker threads: {e}"))
}

/// The tokenizer as the generator sees it.
pub struct Detok<'t>(pub &'t Tokenizer);

impl Detokenize for Detok<'_> {
    fn token_bytes(&self, id: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0.token_to_piece(id, false));
    }

    fn is_eog(&self, id: u32) -> bool {
        self.0.is_eog(id)
    }
}
