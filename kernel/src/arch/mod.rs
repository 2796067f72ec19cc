//! Architecture-specific code. Only x86_64 exists so far.

#![allow(unsafe_code)]

pub mod x86_64;
