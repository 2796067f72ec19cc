//! Products of quantised weight matrices with one or many quantised activation vectors,
//! rows spread over the [`Parallel`] workers. This is the engine's one hot kernel entry
//! point. For a batch of tokens every weight row is read once and multiplied with each
//! token's activations while it is in cache; each single dot product is the same call
//! as for one token, so a batch gives the same bits as its tokens one by one (given the
//! same [`DotOrder`]). Nothing here allocates: decoding a token must not touch the heap.

use core::sync::atomic::{AtomicUsize, Ordering};

use embodios_quant::{PanelFn, VecDot4Fn, VecDotFn, VecDotRows4Fn, VecDotTileFn};

use crate::kernels::{self, QuantError};
use crate::model::WeightMatrix;
use crate::ops::DotOrder;
use crate::parallel::Parallel;

/// Below this many dot products per worker the fork/join costs more than it saves.
const MIN_DOTS_PER_WORKER: usize = 16;

/// Most products one [`matmul_set`] takes (Q, K and V).
pub const MAX_PRODUCTS: usize = 3;

/// Most workers one product set is split over (more threads than this stay idle).
const MAX_WORKERS: usize = 64;

/// A chunk takes this share of the rows not yet cut, per worker: chunks shrink as the
/// set is worked through ("guided" scheduling), so the first ones are large (few claims)
/// and the last ones small, and the workers finish within a small chunk of each other.
/// (Equal chunks of an eighth per worker left one worker idle for half a chunk on
/// average at the end of every product set: ~150 sets per token.)
const SHARE_PER_WORKER: usize = 2;

/// Most chunks one product set is cut into (the split lives on the stack, so it is
/// bounded; large matrices get larger chunks).
const MAX_CHUNKS: usize = 128;

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
    /// Four rows at a time for one token with the same bits as `dot`, where a kernel
    /// exists.
    rows4: Option<VecDotRows4Fn>,
    /// Two rows by four tokens at a time with the same bits as `dot`, where a kernel
    /// exists.
    tile: Option<VecDotTileFn>,
    /// A whole chunk of rows against all tokens in one call with the same bits as `dot`,
    /// where a kernel exists.
    panel: Option<PanelFn>,
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
        let rows4 = crate::lanes::lane_rows4(w.ty, order);
        let tile = crate::lanes::lane_tile(w.ty, order);
        let panel = crate::lanes::lane_panel(w.ty, order);
        *slot = Some(Input {
            w,
            x: p.x,
            act_len,
            dot,
            dot4,
            rows4,
            tile,
            panel,
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

    let threads = par.threads().clamp(1, MAX_WORKERS);
    let workers = threads
        .min(total_rows * tokens / MIN_DOTS_PER_WORKER)
        .max(1);
    if workers == 1 {
        for (t, input) in targets.iter_mut().zip(&inputs) {
            if let Some(input) = input {
                rows_into(input, tokens, 0, t);
            }
        }
    } else {
        // The rows are cut into shrinking chunks (several per worker, so that a worker
        // that starts late or runs slower takes fewer and all finish together), claimed in
        // order through an atomic counter. Each chunk's output slice is handed over
        // through an uncontended lock so the engine needs no unsafe code to share the
        // outputs; everything lives on the stack (nothing is allocated per token).
        // The smallest chunk: enough dot products to be worth a claim, and large enough
        // that the chunks fit the stack array. Sizes are multiples of four rows (the
        // four-row kernels' step; any cut gives the same bits).
        let min_chunk = MIN_DOTS_PER_WORKER
            .div_ceil(tokens)
            .max(total_rows.div_ceil(MAX_CHUNKS - MAX_PRODUCTS))
            .next_multiple_of(4);
        let mut uncut = total_rows;
        // Every chunk but each product's last has at least `min_chunk` rows, so there
        // are at most `total_rows / min_chunk + MAX_PRODUCTS <= MAX_CHUNKS` chunks: none
        // is dropped.
        type Chunk<'o> = Option<(usize, usize, &'o mut [f32])>;
        let chunks: [Line<spin::Mutex<Chunk<'_>>>; MAX_CHUNKS] =
            core::array::from_fn(|_| Line(spin::Mutex::new(None)));
        let mut n_chunks = 0;
        for (pi, (t, input)) in targets.iter_mut().zip(&inputs).enumerate() {
            let Some(input) = input else { continue };
            let mut rest: &mut [f32] = core::mem::take(t);
            let mut first = 0;
            while first < input.w.rows {
                let len = (uncut / (SHARE_PER_WORKER * workers))
                    .next_multiple_of(4)
                    .max(min_chunk)
                    .min(input.w.rows - first);
                uncut -= len;
                let (head, tail) = rest.split_at_mut(len * tokens);
                if let Some(c) = chunks.get(n_chunks) {
                    *c.0.lock() = Some((pi, first, head));
                }
                n_chunks += 1;
                rest = tail;
                first += len;
            }
        }
        // Worker `k` (of the first `workers`) starts with chunk `k`, the largest ones,
        // without touching the shared counter; the rest are claimed through it; at the
        // end every worker sweeps the first chunks for any whose worker never came. A
        // chunk is taken out of its slot (each is done once) and computed outside the
        // lock. Counter and slots sit on their own cache lines: a claim then moves at
        // most two lines between cores.
        let owned = workers.min(n_chunks);
        let next = Line(AtomicUsize::new(owned));
        let take = |i: usize| {
            let taken = chunks.get(i).and_then(|c| c.0.lock().take());
            if let Some((pi, first, slice)) = taken {
                if let Some(Some(input)) = inputs.get(pi) {
                    rows_into(input, tokens, first, slice);
                }
            }
        };
        par.run(&|k| {
            if k < owned {
                take(k);
            }
            loop {
                let i = next.0.fetch_add(1, Ordering::Relaxed);
                if i >= n_chunks {
                    break;
                }
                take(i);
            }
            for i in 0..owned {
                take(i);
            }
        });
    }

    if tokens > 1 {
        // Row-major results back to one output vector per token, the tokens split over
        // the workers (each writes whole output vectors, so the pieces are disjoint).
        let mut sources: [&[f32]; MAX_PRODUCTS] = [&[]; MAX_PRODUCTS];
        let mut rows_of = [0usize; MAX_PRODUCTS];
        {
            let mut rest: &[f32] = tmp;
            for ((src, r), p) in sources
                .iter_mut()
                .zip(rows_of.iter_mut())
                .zip(products.iter())
            {
                let (head, tail) = rest.split_at(p.w.rows * tokens);
                *src = head;
                *r = p.w.rows;
                rest = tail;
            }
        }
        let workers = threads.min(tokens / TOKENS_PER_TRANSPOSE_WORKER).max(1);
        if workers == 1 {
            for (pi, p) in products.iter_mut().enumerate() {
                transpose_tokens(sources[pi], rows_of[pi], tokens, 0, p.out);
            }
        } else {
            type Share<'o> = [Option<(usize, &'o mut [f32])>; MAX_PRODUCTS];
            let parts: [spin::Mutex<Share<'_>>; MAX_WORKERS] =
                core::array::from_fn(|_| spin::Mutex::new([const { None }; MAX_PRODUCTS]));
            for (pi, p) in products.iter_mut().enumerate() {
                let rows = rows_of[pi];
                let mut rest: &mut [f32] = &mut *p.out;
                for (i, part) in parts.iter().take(workers).enumerate() {
                    let r = crate::parallel::split_range(tokens, workers, i);
                    let (head, tail) = core::mem::take(&mut rest).split_at_mut(r.len() * rows);
                    part.lock()[pi] = Some((r.start, head));
                    rest = tail;
                }
            }
            // Claimed like the row chunks, so every part is done by whoever is free.
            let next = AtomicUsize::new(0);
            par.run(&|_| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(part) = parts.get(i).filter(|_| i < workers) else {
                    break;
                };
                for (pi, share) in part.lock().iter_mut().enumerate() {
                    if let Some((t0, out)) = share {
                        transpose_tokens(sources[pi], rows_of[pi], tokens, *t0, out);
                    }
                }
            });
        }
    }
    Ok(())
}

/// A value alone on its cache line, so that threads writing neighbouring values do not
/// pass the line back and forth.
#[repr(align(64))]
struct Line<T>(T);

/// Below this many tokens per worker the transposition stays on one thread.
const TOKENS_PER_TRANSPOSE_WORKER: usize = 8;

/// Copies tokens `t0..t0 + out.len() / rows` of the row-major `src` (`[row][token]`,
/// `tokens` per row) into `out` (`[token][row]`), sixteen tokens (one cache line of a
/// source row) at a time.
fn transpose_tokens(src: &[f32], rows: usize, tokens: usize, t0: usize, out: &mut [f32]) {
    let n = out.len() / rows.max(1);
    for (b, block) in out.chunks_mut(16 * rows.max(1)).enumerate() {
        let first = t0 + 16 * b;
        let width = (n - 16 * b).min(16);
        for (r, row) in src.chunks_exact(tokens).take(rows).enumerate() {
            for (j, &v) in row[first..first + width].iter().enumerate() {
                block[j * rows + r] = v;
            }
        }
    }
}

/// Rows `first..` of one product for every token, into `out` laid out `[row][token]`
/// (lengths were validated by [`matmul_set`]): each weight row is used for all tokens
/// while it is in cache. A batch goes to the type's panel kernel where one exists (the
/// whole chunk in one call, tiles of several rows by several tokens; measured on
/// SmolLM2 and a TinyLlama-shaped model: 1.6x to 2.6x less CPU per prefill than the
/// four-token kernel per row), else four tokens per call where a four-token kernel
/// exists. One token (decoding) keeps the four-row kernel: a panel tile would waste
/// half of each register on it.
fn rows_into(input: &Input<'_, '_>, tokens: usize, first: usize, out: &mut [f32]) {
    let w = input.w;
    let step = input.act_len.max(1);
    if let (true, Some(panel)) = (tokens > 1, input.panel) {
        // The whole chunk in one call: register tiles of several rows by several tokens.
        let rows = out.len() / tokens;
        let start = first * w.row_bytes;
        if let Some(data) = w.data.get(start..start + rows * w.row_bytes) {
            panel(data, w.row_bytes, input.x, step, tokens, out);
            return;
        }
    }
    if let (1, Some(rows4)) = (tokens, input.rows4) {
        // One token: four rows per call (independent chains, one activation load).
        let x = &input.x[..step.min(input.x.len())];
        let mut rows = w.data.chunks_exact(w.row_bytes).skip(first);
        let mut quads = out.chunks_exact_mut(4);
        for o4 in &mut quads {
            let (Some(r0), Some(r1), Some(r2), Some(r3)) =
                (rows.next(), rows.next(), rows.next(), rows.next())
            else {
                return;
            };
            o4.copy_from_slice(&rows4([r0, r1, r2, r3], x));
        }
        for (o, row) in quads.into_remainder().iter_mut().zip(rows) {
            *o = (input.dot)(row, x);
        }
        return;
    }
    let mut rows = w.data.chunks_exact(w.row_bytes).skip(first);
    let mut out = out;
    if let (true, Some(tile)) = (tokens >= 4, input.tile) {
        // Two rows by four tokens per call (each activation block loaded once for both
        // rows); the tokens beyond the last four go one by one.
        let mut pairs = out.chunks_exact_mut(2 * tokens);
        for o2 in &mut pairs {
            let (Some(r0), Some(r1)) = (rows.next(), rows.next()) else {
                return;
            };
            let (o0, o1) = o2.split_at_mut(tokens);
            let mut done = 0;
            for ((a, b), x4) in o0
                .chunks_exact_mut(4)
                .zip(o1.chunks_exact_mut(4))
                .zip(input.x.chunks_exact(4 * step))
            {
                let [t0, t1] = tile([r0, r1], four_tokens(x4, step));
                a.copy_from_slice(&t0);
                b.copy_from_slice(&t1);
                done += 4;
            }
            for (t, x) in input.x.chunks_exact(step).enumerate().skip(done) {
                if let (Some(a), Some(b)) = (o0.get_mut(t), o1.get_mut(t)) {
                    *a = (input.dot)(r0, x);
                    *b = (input.dot)(r1, x);
                }
            }
        }
        out = pairs.into_remainder();
    }
    for (o, row) in out.chunks_exact_mut(tokens).zip(rows) {
        let mut done = 0;
        if let Some(dot4) = input.dot4 {
            for (o4, x4) in o.chunks_exact_mut(4).zip(input.x.chunks_exact(4 * step)) {
                o4.copy_from_slice(&dot4(row, four_tokens(x4, step)));
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

/// The four activation rows of `step` bytes each in `x4`.
fn four_tokens(x4: &[u8], step: usize) -> [&[u8]; 4] {
    let (x01, x23) = x4.split_at(2 * step);
    let (x0, x1) = x01.split_at(step);
    let (x2, x3) = x23.split_at(step);
    [x0, x1, x2, x3]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::Rng;
    use alloc::vec;
    use alloc::vec::Vec;
    use embodios_gguf::GgmlType;

    /// Runs the workers one after the other, so a test sees every worker index without
    /// threads.
    struct Serial(usize);

    impl Parallel for Serial {
        fn threads(&self) -> usize {
            self.0
        }

        fn run(&self, job: &(dyn Fn(usize) + Sync)) {
            for i in 0..self.0 {
                job(i);
            }
        }
    }

    /// Says it has `0` workers but only ever runs index 0 (a pool whose other workers
    /// never come): the work must still all be done.
    struct OnlyCaller(usize);

    impl Parallel for OnlyCaller {
        fn threads(&self) -> usize {
            self.0
        }

        fn run(&self, job: &(dyn Fn(usize) + Sync)) {
            job(0);
        }
    }

    fn weights(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
        let x: Vec<f32> = (0..rows * cols)
            .map(|_| rng.next_f64() as f32 * 2.0 - 1.0)
            .collect();
        let mut out = vec![0u8; ty.bytes_for((rows * cols) as u64).unwrap() as usize];
        for (src, dst) in x
            .chunks_exact(cols)
            .zip(out.chunks_exact_mut(ty.bytes_for(cols as u64).unwrap() as usize))
        {
            kernels::quantize_weights(ty, src, dst).unwrap();
        }
        out
    }

    #[test]
    fn chunked_product_sets_equal_one_worker_bit_for_bit() {
        let mut rng = Rng::new(77);
        for &(ty, rows, tokens) in &[
            (GgmlType::Q4_1, [5usize, 3, 3], 1usize),
            (GgmlType::Q8_0, [600, 190, 190], 1),
            (GgmlType::Q8_0, [2000, 7, 1], 1),
            (GgmlType::Q4_1, [97, 64, 64], 5),
            (GgmlType::Q4_0, [300, 1, 30], 9),
            (GgmlType::Q4_1, [97, 33, 64], 40),
            (GgmlType::Q8_0, [31, 7, 64], 13),
            // Two-row tiles: an odd row count, tokens beyond the last four.
            (GgmlType::Q4_K, [33, 8, 5], 14),
            (GgmlType::Q4_K, [6, 3, 2], 8),
            // K-quant panels (batches of eight or more): remainders of rows and tokens.
            (GgmlType::Q5_K, [9, 4, 7], 9),
            (GgmlType::Q6_K, [33, 8, 5], 14),
            (GgmlType::Q4_K, [70, 13, 1], 17),
        ] {
            // K-quant rows are whole 256-element super-blocks.
            let cols = if ty.block_elems() == 256 { 512 } else { 64 };
            let act_ty = kernels::act_type(ty).unwrap();
            let ws: Vec<Vec<u8>> = rows
                .iter()
                .map(|&r| weights(&mut rng, ty, r, cols))
                .collect();
            let mats: Vec<WeightMatrix<'_>> = ws
                .iter()
                .zip(rows)
                .map(|(d, r)| WeightMatrix {
                    name: "w".into(),
                    ty,
                    cols,
                    rows: r,
                    row_bytes: d.len() / r,
                    data: d,
                })
                .collect();
            let x: Vec<f32> = (0..cols * tokens)
                .map(|_| rng.next_f64() as f32 * 4.0 - 2.0)
                .collect();
            let n = kernels::act_bytes(act_ty, cols);
            let mut xq = vec![0u8; n * tokens];
            for (xt, q) in x.chunks_exact(cols).zip(xq.chunks_exact_mut(n)) {
                kernels::quantize_act(act_ty, xt, q).unwrap();
            }
            let total: usize = rows.iter().sum();
            let run = |par: &dyn Parallel| -> Vec<Vec<f32>> {
                let mut outs: Vec<Vec<f32>> = rows.iter().map(|r| vec![0.0; r * tokens]).collect();
                let mut tmp = vec![0.0; total * tokens];
                let [o0, o1, o2] = &mut outs[..] else {
                    unreachable!()
                };
                matmul_set(
                    &mut [
                        Product {
                            w: &mats[0],
                            x: &xq,
                            out: o0,
                        },
                        Product {
                            w: &mats[1],
                            x: &xq,
                            out: o1,
                        },
                        Product {
                            w: &mats[2],
                            x: &xq,
                            out: o2,
                        },
                    ],
                    tokens,
                    &mut tmp,
                    par,
                    DotOrder::for_batch(tokens),
                )
                .unwrap();
                outs
            };
            let want = run(&Serial(1));
            // 64 workers: the most chunks the stack array must hold.
            for workers in [2, 3, 7, 64] {
                for (got, how) in [
                    (run(&Serial(workers)), "all"),
                    (run(&OnlyCaller(workers)), "caller only"),
                ] {
                    for (g, w) in got.iter().zip(&want) {
                        let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{ty} rows {rows:?} tokens {tokens} workers {workers} ({how})"
                        );
                    }
                }
            }
            // And every single-worker result is the kernel's own dot product (whichever
            // of the one-row, four-token or two-row tile paths computed it).
            let k = kernels::table(ty).unwrap();
            let dot =
                crate::lanes::lane_dot(ty, DotOrder::for_batch(tokens), cols).unwrap_or(k.vec_dot);
            for r in 0..rows[0] {
                for (t, x) in xq.chunks_exact(n).enumerate() {
                    let d = dot(mats[0].row(r), x);
                    let got = want[0][t * rows[0] + r];
                    assert_eq!(got.to_bits(), d.to_bits(), "{ty} row {r} token {t}");
                }
            }
        }
    }
}
