//! Matrix-vector product of a quantised weight matrix with a quantised activation
//! vector, rows spread over the [`Parallel`] workers. This is the engine's one hot
//! kernel entry point, kept separate so a SIMD version can replace it.

use alloc::vec::Vec;

use embodios_quant::VecDotFn;

use crate::kernels::{self, QuantError};
use crate::model::WeightMatrix;
use crate::ops::DotOrder;
use crate::parallel::{split_range, Parallel};

/// Below this many rows per worker the fork/join costs more than it saves.
const MIN_ROWS_PER_WORKER: usize = 16;

/// `out[r] = dot(w.row(r), x)` for every row, with `x_quantized` being the input vector
/// already quantised to `vec_dot_type(w.ty)` (see [`crate::kernels::quantize_act`]),
/// rounding as llama.cpp does when it evaluates a single token.
pub fn matmul(
    w: &WeightMatrix<'_>,
    x_quantized: &[u8],
    out: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), QuantError> {
    matmul_ordered(w, x_quantized, out, par, DotOrder::Single)
}

/// [`matmul`] with the rounding of llama.cpp's single-token or batch kernels (they
/// differ for float weights).
pub fn matmul_ordered(
    w: &WeightMatrix<'_>,
    x_quantized: &[u8],
    out: &mut [f32],
    par: &dyn Parallel,
    order: DotOrder,
) -> Result<(), QuantError> {
    matmul_set(
        &mut [Product {
            w,
            x: x_quantized,
            out,
        }],
        par,
        order,
    )
}

/// One matrix-vector product of a [`matmul_set`]: `out = w * x`, `x` already quantised
/// to `vec_dot_type(w.ty)`.
pub struct Product<'a, 'w> {
    pub w: &'a WeightMatrix<'w>,
    pub x: &'a [u8],
    pub out: &'a mut [f32],
}

/// Several independent products (Q, K and V of a layer; FFN gate and up) in one
/// fork/join: every worker takes its share of the rows of each product, so the workers
/// synchronise once instead of once per matrix.
pub fn matmul_set(
    products: &mut [Product<'_, '_>],
    par: &dyn Parallel,
    order: DotOrder,
) -> Result<(), QuantError> {
    // The inputs, copied out so that the outputs can be borrowed mutably on their own.
    let mut inputs: Vec<(&WeightMatrix<'_>, &[u8], VecDotFn)> = Vec::with_capacity(products.len());
    let mut total_rows = 0;
    for p in products.iter() {
        let w = p.w;
        let k = kernels::table(w.ty)?;
        let act_len = kernels::act_bytes(k.vec_dot_type, w.cols);
        if p.x.len() != act_len {
            return Err(QuantError::BadLength {
                expected: act_len,
                got: p.x.len(),
            });
        }
        if p.out.len() != w.rows || w.data.len() < w.rows * w.row_bytes {
            return Err(QuantError::BadLength {
                expected: w.rows,
                got: p.out.len(),
            });
        }
        let dot = crate::lanes::lane_dot(w.ty, order, w.cols).unwrap_or(k.vec_dot);
        inputs.push((w, p.x, dot));
        total_rows += w.rows;
    }
    let workers = par.threads().min(total_rows / MIN_ROWS_PER_WORKER).max(1);
    if workers == 1 {
        for (p, &(w, x, dot)) in products.iter_mut().zip(&inputs) {
            rows_into(w, dot, x, 0, p.out);
        }
        return Ok(());
    }
    // Each worker owns one contiguous slice of every output, handed over through an
    // uncontended lock so the engine needs no unsafe code to share the outputs.
    type Share<'o> = Vec<(usize, usize, &'o mut [f32])>;
    let mut shares: Vec<Share<'_>> = (0..workers).map(|_| Vec::new()).collect();
    for (pi, p) in products.iter_mut().enumerate() {
        let rows = p.w.rows;
        let mut rest: &mut [f32] = &mut *p.out;
        for (i, share) in shares.iter_mut().enumerate() {
            let r = split_range(rows, workers, i);
            let (head, tail) = rest.split_at_mut(r.len());
            share.push((pi, r.start, head));
            rest = tail;
        }
    }
    let parts: Vec<spin::Mutex<Share<'_>>> = shares.into_iter().map(spin::Mutex::new).collect();
    par.run(&|i| {
        if let Some(part) = parts.get(i) {
            for (pi, first, slice) in part.lock().iter_mut() {
                let (w, x, dot) = inputs[*pi];
                rows_into(w, dot, x, *first, slice);
            }
        }
    });
    Ok(())
}

/// Rows `first..first + out.len()` (lengths were validated by [`matmul`]).
fn rows_into(w: &WeightMatrix<'_>, dot: VecDotFn, x: &[u8], first: usize, out: &mut [f32]) {
    let rows = w.data.chunks_exact(w.row_bytes).skip(first);
    for (o, row) in out.iter_mut().zip(rows) {
        *o = dot(row, x);
    }
}
