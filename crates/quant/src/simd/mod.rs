//! SIMD kernel sets and the runtime choice between them and the scalar reference kernels.
//!
//! This module (and its children) is the only place in the crate allowed to use `unsafe`:
//! target-feature functions must be entered through a CPU-feature check, and vector
//! loads go through raw pointers. Every unsafe block carries a `// SAFETY:` comment.
//!
//! On x86_64 an AVX2+FMA(+F16C) set replaces the scalar `vec_dot` kernels when the CPU
//! and the OS (YMM state enabled in XCR0) support it; elsewhere only the scalar set exists.
#![deny(clippy::undocumented_unsafe_blocks)]

use core::sync::atomic::{AtomicBool, Ordering};

use crate::{GgmlType, Kernels, QuantizeFn};

// Only where SSE registers exist: soft-float targets such as `x86_64-unknown-none`
// cannot lower AVX code (LLVM rejects it), so there the scalar set is the only one. A
// kernel built for a custom hard-float target (SSE enabled) gets the AVX2 set, still
// subject to the run-time check (which also requires the OS to have enabled YMM state).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod x86_64;
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
use x86_64 as backend;

/// Stand-in where no SIMD set is compiled.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
mod backend {
    use crate::{GgmlType, Kernels, QuantizeFn};

    pub(super) const SET_NAME: &str = "scalar";

    pub(super) fn available() -> bool {
        false
    }

    pub(super) fn kernels(_: GgmlType) -> Option<&'static Kernels> {
        None
    }

    pub(super) fn act_quantizer(_: GgmlType) -> Option<QuantizeFn> {
        None
    }

    pub(super) fn vec_dot4(_: GgmlType) -> Option<crate::VecDot4Fn> {
        None
    }

    pub(super) fn tiled(_: GgmlType) -> Option<(crate::VecDotFn, crate::VecDot4Fn)> {
        None
    }

    pub(super) fn vec_dot_rows4(_: GgmlType) -> Option<crate::VecDotRows4Fn> {
        None
    }

    pub(super) fn tile(_: GgmlType) -> Option<crate::VecDotTileFn> {
        None
    }

    pub(super) fn panel(_: GgmlType) -> Option<crate::PanelFn> {
        None
    }
}

/// Set by [`crate::force_scalar`]: ignore the SIMD set even where the CPU has it. Starts
/// set when the crate was built with the environment variable `EMBODIOS_FORCE_SCALAR`
/// defined (a build-time switch, since `no_std` code cannot read the environment at run
/// time), so whole programs can be benchmarked on the scalar kernels.
static FORCE_SCALAR: AtomicBool = AtomicBool::new(option_env!("EMBODIOS_FORCE_SCALAR").is_some());

pub(crate) fn set_force_scalar(on: bool) {
    FORCE_SCALAR.store(on, Ordering::Relaxed);
}

/// The SIMD kernels of `ty`, if a SIMD set is usable right now (detected and not
/// overridden) and covers `ty`.
#[inline]
pub(crate) fn kernels(ty: GgmlType) -> Option<&'static Kernels> {
    if FORCE_SCALAR.load(Ordering::Relaxed) {
        return None;
    }
    simd_kernels(ty)
}

/// Name of the kernel set [`crate::kernels`] hands out.
pub(crate) fn active_set() -> &'static str {
    if !FORCE_SCALAR.load(Ordering::Relaxed) && backend::available() {
        backend::SET_NAME
    } else {
        "scalar"
    }
}

/// The SIMD kernels of `ty` regardless of the scalar override (but only if the CPU has
/// them): lets tests compare both sets in one process.
pub(crate) fn simd_kernels(ty: GgmlType) -> Option<&'static Kernels> {
    if backend::available() {
        backend::kernels(ty)
    } else {
        None
    }
}

/// The SIMD activation quantizer for format `ty`, if usable right now.
#[inline]
pub(crate) fn act_quantizer(ty: GgmlType) -> Option<QuantizeFn> {
    if FORCE_SCALAR.load(Ordering::Relaxed) {
        return None;
    }
    simd_act_quantizer(ty)
}

/// The SIMD activation quantizer for format `ty` regardless of the scalar override.
pub(crate) fn simd_act_quantizer(ty: GgmlType) -> Option<QuantizeFn> {
    if backend::available() {
        backend::act_quantizer(ty)
    } else {
        None
    }
}

/// The SIMD four-row dot product of `ty`, if a SIMD set is usable right now and has one.
pub(crate) fn vec_dot4(ty: GgmlType) -> Option<crate::VecDot4Fn> {
    if FORCE_SCALAR.load(Ordering::Relaxed) || !backend::available() {
        return None;
    }
    backend::vec_dot4(ty)
}

/// The SIMD tiled-order K-quant kernels of `ty` (one and four rows), if usable right now.
pub(crate) fn tiled(ty: GgmlType) -> Option<(crate::VecDotFn, crate::VecDot4Fn)> {
    if FORCE_SCALAR.load(Ordering::Relaxed) || !backend::available() {
        return None;
    }
    backend::tiled(ty)
}

/// The SIMD four-weight-row dot product of `ty`, if a SIMD set is usable and has one.
pub(crate) fn vec_dot_rows4(ty: GgmlType) -> Option<crate::VecDotRows4Fn> {
    if FORCE_SCALAR.load(Ordering::Relaxed) || !backend::available() {
        return None;
    }
    backend::vec_dot_rows4(ty)
}

/// The SIMD two-row by four-token tile of `ty` in the tiled K-quant order, if a SIMD set
/// is usable right now and has one.
pub(crate) fn tile(ty: GgmlType) -> Option<crate::VecDotTileFn> {
    if FORCE_SCALAR.load(Ordering::Relaxed) || !backend::available() {
        return None;
    }
    backend::tile(ty)
}

/// The SIMD panel kernel of `ty`, if a SIMD set is usable right now and has one.
pub(crate) fn panel(ty: GgmlType) -> Option<crate::PanelFn> {
    if FORCE_SCALAR.load(Ordering::Relaxed) || !backend::available() {
        return None;
    }
    backend::panel(ty)
}
