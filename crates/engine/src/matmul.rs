//! Products of quantised weight matrices with one or many quantised activation vectors,
//! rows spread over the [`Parallel`] workers. This is the engine's one hot kernel entry
//! point. For a batch of tokens every weight row is read once and multiplied with each
//! token's activations while it is in cache; each single dot product is the same call
//! as for one token, so a batch gives the same bits as its tokens one by one (given the
//! same [`DotOrder`]). Nothing here allocates: decoding a token must not touch the heap.

use embodios_quant::{VecDot4Fn, VecDotFn};

use crate::kernels::{self, QuantError};
use crate::model::WeightMatrix;
use crate::ops::DotOrder;
use crate::parallel::{split_range, Parallel};

/// Below this many dot products per worker the fork/join costs more than it saves.
const MIN_DOTS_PER_WORKER: usize = 16;

/// Most products one [`matmul_set`] takes (Q, K and V).
pub const MAX_PRODUCTS: usize = 3;

/// Most workers one product set is split over (more threads than this stay idle); the
/// split lives on the stack, so it is bounded.
const MAX_WORKERS: usize = 64;

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
        1,
        &mut [],
        par,
        order,
    )
}

/// One product of a [`matmul_set`]: `out = w * x` for each token, `x` holding the
/// tokens' activations one after the other (each quantised to `vec_dot_type(w.ty)`)
/// and `out` the tokens' outputs one after the other (`tokens * w.rows` values).
pub struct Product<'a, 'w> {
    pub w: &'a WeightMatrix<'w>,
    pub x: &'a [u8],
    pub out: &'a mut [f32],
}

/// A product's validated inputs.
#[derive(Clone, Copy)]
struct Input<'a, 'w> {
    w: &'a WeightMatrix<'w>,
    x: &'a [u8],
    act_len: usize,
    dot: VecDotFn,
    /// Four tokens at a time with the same bits as `dot`, where a kernel exists.
    dot4: Option<VecDot4Fn>,
}

/// Several independent products (Q, K and V of a layer; FFN gate and up) over a batch
/// of `tokens` in one fork/join: every worker takes its share of the rows of each
/// product, so the workers synchronise once instead of once per matrix. With more than
/// one token the results are first written row by row (each worker's rows are one
/// contiguous piece) into `tmp`, which must hold `tokens` times the products' rows, and
/// then copied into the token-major outputs.
pub fn matmul_set(
    products: &mut [Product<'_, '_>],
    tokens: usize,
    tmp: &mut [f32],
    par: &dyn Parallel,
    order: DotOrder,
) -> Result<(), QuantError> {
    if products.len() > MAX_PRODUCTS {
        return Err(QuantError::BadLength {
            expected: MAX_PRODUCTS,
            got: products.len(),
        });
    }
    let tokens = tokens.max(1);
    let mut inputs: [Option<Input<'_, '_>>; MAX_PRODUCTS] = [None; MAX_PRODUCTS];
    let mut total_rows = 0;
    for (slot, p) in inputs.iter_mut().zip(products.iter()) {
        let w = p.w;
        let k = kernels::table(w.ty)?;
        let act_len = kernels::act_bytes(k.vec_dot_type, w.cols);
        if p.x.len() != act_len * tokens {
            return Err(QuantError::BadLength {
                expected: act_len * tokens,
                got: p.x.len(),
            });
        }
        if p.out.len() != w.rows * tokens || w.data.len() < w.rows * w.row_bytes {
            return Err(QuantError::BadLength {
                expected: w.rows * tokens,
                got: p.out.len(),
            });
        }
        let dot = crate::lanes::lane_dot(w.ty, order, w.cols).unwrap_or(k.vec_dot);
        let dot4 = crate::lanes::lane_dot4(w.ty, order);
        *slot = Some(Input {
            w,
            x: p.x,
            act_len,
            dot,
            dot4,
        });
        total_rows += w.rows;
    }
    if tokens > 1 && tmp.len() < total_rows * tokens {
        return Err(QuantError::BadLength {
            expected: total_rows * tokens,
            got: tmp.len(),
        });
    }

    // Where each product's results go, `[row][token]`: the output itself for one
    // token, else a piece of `tmp`.
    let mut targets: [&mut [f32]; MAX_PRODUCTS] = [&mut [], &mut [], &mut []];
    {
        let mut rest: &mut [f32] = &mut *tmp;
        for (t, p) in targets.iter_mut().zip(products.iter_mut()) {
            if tokens == 1 {
                *t = &mut *p.out;
            } else {
                let (head, tail) = core::mem::take(&mut rest).split_at_mut(p.w.rows * tokens);
                *t = head;
                rest = tail;
            }
        }
    }

    let workers = par
        .threads()
        .min(total_rows * tokens / MIN_DOTS_PER_WORKER)
        .clamp(1, MAX_WORKERS);
    if workers == 1 {
        for (t, input) in targets.iter_mut().zip(&inputs) {
            if let Some(input) = input {
                rows_into(input, tokens, 0, t);
            }
        }
    } else {
        // Each worker owns one contiguous slice of every target, handed over through an
        // uncontended lock so the engine needs no unsafe code to share the outputs.
        type Share<'o> = [Option<(usize, &'o mut [f32])>; MAX_PRODUCTS];
        let parts: [spin::Mutex<Share<'_>>; MAX_WORKERS] =
            core::array::from_fn(|_| spin::Mutex::new([const { None }; MAX_PRODUCTS]));
        for (pi, (t, input)) in targets.iter_mut().zip(&inputs).enumerate() {
            let Some(input) = input else { continue };
            let mut rest: &mut [f32] = core::mem::take(t);
            for (i, part) in parts.iter().take(workers).enumerate() {
                let r = split_range(input.w.rows, workers, i);
                let (head, tail) = rest.split_at_mut(r.len() * tokens);
                part.lock()[pi] = Some((r.start, head));
                rest = tail;
            }
        }
        par.run(&|i| {
            if let Some(part) = parts.get(i) {
                for (share, input) in part.lock().iter_mut().zip(&inputs) {
                    if let (Some((first, slice)), Some(input)) = (share, input) {
                        rows_into(input, tokens, *first, slice);
                    }
                }
            }
        });
    }

    if tokens > 1 {
        // Row-major results back to one output vector per token.
        let mut rest: &[f32] = tmp;
        for p in products.iter_mut() {
            let rows = p.w.rows;
            let (head, tail) = rest.split_at(rows * tokens);
            for (r, col) in head.chunks_exact(tokens).enumerate() {
                for (t, &v) in col.iter().enumerate() {
                    p.out[t * rows + r] = v;
                }
            }
            rest = tail;
        }
    }
    Ok(())
}

/// Rows `first..` of one product for every token, into `out` laid out `[row][token]`
/// (lengths were validated by [`matmul_set`]): each weight row is used for all tokens
/// while it is in cache, four tokens per call where a four-token kernel exists.
fn rows_into(input: &Input<'_, '_>, tokens: usize, first: usize, out: &mut [f32]) {
    let w = input.w;
    let step = input.act_len.max(1);
    let rows = w.data.chunks_exact(w.row_bytes).skip(first);
    for (o, row) in out.chunks_exact_mut(tokens).zip(rows) {
        let mut done = 0;
        if let Some(dot4) = input.dot4 {
            for (o4, x4) in o.chunks_exact_mut(4).zip(input.x.chunks_exact(4 * step)) {
                let (x01, x23) = x4.split_at(2 * step);
                let (x0, x1) = x01.split_at(step);
                let (x2, x3) = x23.split_at(step);
                o4.copy_from_slice(&dot4(row, [x0, x1, x2, x3]));
                done += 4;
            }
        }
        for (v, x) in o[done..]
            .iter_mut()
            .zip(input.x.chunks_exact(step).skip(done))
        {
            *v = (input.dot)(row, x);
        }
    }
}
