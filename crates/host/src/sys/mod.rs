//! Host platform code: what needs the operating system's threads directly. The rest of
//! the crate forbids `unsafe`; this module is where it is allowed.

pub mod thread_pool;
