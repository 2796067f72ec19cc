//! The EMBODIOS inference engine: transformer forward pass over GGUF weights for the
//! llama, Gemma 3, Qwen2 and Phi-2 families, sampling, chat templates and a streaming
//! generation loop.
//!
//! `no_std` + `alloc`, so the kernel links it unchanged; threads and clocks come from the
//! caller through the [`parallel::Parallel`] and [`generate::Clock`] traits
//! (`embodios-host` implements both with std).
//!
//! Numerics follow llama.cpp's CPU backend (f16 KV cache, activations quantised to the
//! weight type's dot-product partner, f64-accumulated norms, and the accumulation order
//! of its x86 AVX-512 kernels, see [`lanes`] and [`ops`]) so that greedy decoding gives
//! the same tokens, and the same logits bit for bit, on the same GGUF file.
//!
//! ```no_run
//! use embodios_engine::generate::Generator;
//! use embodios_engine::sampler::{Sampler, SamplerConfig};
//! use embodios_engine::{chat, Model, ModelOptions, NoClock, Sequential};
//! use embodios_gguf::GgufFile;
//! use embodios_tokenizer::Tokenizer;
//!
//! # fn main() -> Result<(), Box<dyn core::error::Error>> {
//! let bytes = std::fs::read("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let file = GgufFile::parse(&bytes)?;
//! let tokenizer = Tokenizer::from_gguf(&file)?;
//! let model = Model::load(&file, ModelOptions { max_context: Some(2048) })?;
//! let mut session = model.new_session();
//!
//! // A chat turn: render with the model's template, tokenize with special tokens.
//! let template = chat::ChatTemplate::from_gguf(&file)?;
//! let prompt = template.render(&[chat::Message::user("Hi!")], true)?;
//! let ids = tokenizer.encode(&prompt, true, true);
//!
//! let mut generator = Generator::new(Sampler::new(SamplerConfig::greedy()), 64);
//! let out = generator.run(&model, &mut session, &tokenizer, &ids, &Sequential, &NoClock,
//!     &mut |piece| { print!("{piece}"); true })?;
//! println!("\n[{:?}, {} tokens]", out.stop, out.stats.generated_tokens);
//! # Ok(())
//! # }
//! ```
#![no_std]
// `unsafe` only in `simd`, which allows it explicitly; everywhere else it is an error.
#![deny(unsafe_code)]

extern crate alloc;

pub mod chat;
mod f16table;
pub mod families;
pub mod generate;
pub mod kernels;
pub mod lanes;
pub mod matmul;
pub mod model;
pub mod ops;
pub mod parallel;
pub mod sampler;
pub mod session;
pub mod simd;
pub mod testmodel;
pub mod trig;

pub use chat::{ChatTemplate, ChatTemplateError, Message};
pub use families::Family;
pub use generate::{
    Checkpoint, Clock, Detokenize, GenerateError, Generation, GenerationStats, Generator, NoClock,
    StopReason,
};
pub use matmul::matmul;
pub use model::{Config, LoadError, Model, ModelOptions, WeightMatrix};
pub use parallel::{Parallel, Sequential};
pub use sampler::{Sampler, SamplerConfig};
pub use session::{EngineError, KvCache, Session, SessionBytes, SessionError, SessionOptions};
