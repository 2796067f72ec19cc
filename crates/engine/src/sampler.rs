//! Choosing the next token from logits: greedy, or llama.cpp's default chain
//! (repetition penalties, top-k, top-p, min-p, temperature, then a seeded random draw).

use alloc::collections::TryReserveError;
use alloc::vec::Vec;

/// Sampling settings. Defaults follow llama.cpp's common defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; `<= 0` means greedy (argmax).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; `0` disables.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities sum to at least `top_p`;
    /// `>= 1` disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; `<= 0` disables.
    pub min_p: f32,
    /// Penalty for tokens among the last `repeat_last_n`: positive logits are divided
    /// by it, negative ones multiplied; `1.0` disables.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at (`0` disables penalties).
    pub repeat_last_n: usize,
    /// Subtracted once per occurrence among the recent tokens.
    pub frequency_penalty: f32,
    /// Subtracted once if the token occurs among the recent tokens.
    pub presence_penalty: f32,
    /// PRNG seed; the same seed and inputs give the same tokens.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 0x454d_424f_4449_4f53,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding (temperature 0).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

/// xoshiro256** seeded through splitmix64: small, fast and fully deterministic.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A token candidate during sampling.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Candidate {
    id: u32,
    logit: f32,
}

/// Picks tokens from logits according to a [`SamplerConfig`].
#[derive(Clone, Debug)]
pub struct Sampler {
    pub config: SamplerConfig,
    rng: Rng,
    candidates: Vec<Candidate>,
    probs: Vec<f32>,
    /// The recent tokens, sorted, for the penalties (kept to reuse its memory).
    seen: Vec<u32>,
}

/// Index of the largest value (the first one on ties), or `None` for an empty slice.
pub fn argmax(logits: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|(i, _)| i)
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Self {
        let rng = Rng::new(config.seed);
        Self {
            config,
            rng,
            candidates: Vec::new(),
            probs: Vec::new(),
            seen: Vec::new(),
        }
    }

    /// Sizes the sampler's buffers up front for a vocabulary of `vocab_size` tokens and
    /// histories of up to `context` tokens, so that sampling allocates nothing
    /// afterwards (the buffers would otherwise grow on the first calls).
    pub fn reserve(&mut self, vocab_size: usize, context: usize) -> Result<(), TryReserveError> {
        // `try_reserve_exact` counts from the length, which `sample` leaves anywhere.
        let more = |len: usize, want: usize| want.saturating_sub(len);
        self.candidates
            .try_reserve_exact(more(self.candidates.len(), vocab_size))?;
        self.probs
            .try_reserve_exact(more(self.probs.len(), vocab_size))?;
        let recent = self.config.repeat_last_n.min(context);
        self.seen.try_reserve_exact(more(self.seen.len(), recent))?;
        Ok(())
    }

    /// Bytes [`Sampler::reserve`] takes at most.
    pub fn reserved_bytes(&self, vocab_size: usize, context: usize) -> usize {
        vocab_size * (core::mem::size_of::<Candidate>() + 4)
            + self.config.repeat_last_n.min(context) * 4
    }

    /// Restarts the random stream from the configured seed.
    pub fn reset(&mut self) {
        self.rng = Rng::new(self.config.seed);
    }

    /// The next token for `logits`, given the tokens so far (`history`, oldest first) for
    /// the repetition penalties. Returns `None` only for empty or all-NaN logits.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Option<u32> {
        self.candidates.clear();
        self.candidates
            .extend(
                logits
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| !l.is_nan())
                    .map(|(i, &logit)| Candidate {
                        id: i as u32,
                        logit,
                    }),
            );
        if self.candidates.is_empty() {
            return None;
        }
        self.apply_penalties(history);
        let cfg_temp = self.config.temperature;
        if cfg_temp <= 0.0 {
            return self.argmax_candidate();
        }
        self.apply_top_k();
        self.apply_top_p();
        self.apply_min_p();
        for c in &mut self.candidates {
            c.logit /= cfg_temp;
        }
        Some(self.draw())
    }

    fn argmax_candidate(&self) -> Option<u32> {
        let mut best = self.candidates.first()?;
        for c in &self.candidates[1..] {
            if c.logit > best.logit {
                best = c;
            }
        }
        Some(best.id)
    }

    fn apply_penalties(&mut self, history: &[u32]) {
        let cfg = &self.config;
        if cfg.repeat_last_n == 0
            || (cfg.repeat_penalty == 1.0
                && cfg.frequency_penalty == 0.0
                && cfg.presence_penalty == 0.0)
        {
            return;
        }
        let recent = &history[history.len().saturating_sub(cfg.repeat_last_n)..];
        let seen = &mut self.seen;
        seen.clear();
        seen.extend_from_slice(recent);
        seen.sort_unstable();
        let mut i = 0;
        while i < seen.len() {
            let tok = seen[i];
            let mut count = 0usize;
            while i < seen.len() && seen[i] == tok {
                count += 1;
                i += 1;
            }
            // Candidates are in id order (NaNs dropped), so a token sits at or before
            // its id; the direct index is the common case.
            let idx = match self.candidates.get(tok as usize) {
                Some(c) if c.id == tok => Some(tok as usize),
                _ => self.candidates.iter().position(|c| c.id == tok),
            };
            let Some(c) = idx.and_then(|i| self.candidates.get_mut(i)) else {
                continue;
            };
            if c.logit <= 0.0 {
                c.logit *= cfg.repeat_penalty;
            } else {
                c.logit /= cfg.repeat_penalty;
            }
            c.logit -= count as f32 * cfg.frequency_penalty + cfg.presence_penalty;
        }
    }

    fn sort_desc(&mut self) {
        self.candidates
            .sort_unstable_by(|a, b| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id)));
    }

    fn apply_top_k(&mut self) {
        let k = self.config.top_k;
        if k == 0 || k >= self.candidates.len() {
            self.sort_desc();
            return;
        }
        self.candidates.select_nth_unstable_by(k - 1, |a, b| {
            b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
        });
        self.candidates.truncate(k);
        self.sort_desc();
    }

    /// Softmax of the (sorted) candidates into `self.probs`.
    fn softmax(&mut self) {
        let max = self.candidates.first().map_or(0.0, |c| c.logit);
        self.probs.clear();
        let mut sum = 0.0f64;
        for c in &self.candidates {
            let e = libm::expf(c.logit - max);
            sum += f64::from(e);
            self.probs.push(e);
        }
        let inv = (1.0 / sum) as f32;
        for p in &mut self.probs {
            *p *= inv;
        }
    }

    fn apply_top_p(&mut self) {
        let p = self.config.top_p;
        if p >= 1.0 {
            return;
        }
        self.softmax();
        let mut cum = 0.0f32;
        let mut keep = self.candidates.len();
        for (i, &pi) in self.probs.iter().enumerate() {
            cum += pi;
            if cum >= p {
                keep = i + 1;
                break;
            }
        }
        self.candidates.truncate(keep.max(1));
    }

    fn apply_min_p(&mut self) {
        let p = self.config.min_p;
        if p <= 0.0 {
            return;
        }
        let Some(first) = self.candidates.first() else {
            return;
        };
        let min_logit = first.logit + libm::logf(p);
        let keep = self
            .candidates
            .iter()
            .position(|c| c.logit < min_logit)
            .unwrap_or(self.candidates.len())
            .max(1);
        self.candidates.truncate(keep);
    }

    fn draw(&mut self) -> u32 {
        self.softmax();
        let r = self.rng.next_f64() as f32;
        let mut cum = 0.0f32;
        for (c, &p) in self.candidates.iter().zip(&self.probs) {
            cum += p;
            if r < cum {
                return c.id;
            }
        }
        // Rounding left the sum just below r: take the last candidate.
        self.candidates.last().map_or(0, |c| c.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn logits() -> Vec<f32> {
        vec![0.5, 2.0, -1.0, 1.5, 3.0, -0.2, 0.0, 2.9]
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&logits(), &[]), Some(4));
        assert_eq!(argmax(&logits()), Some(4));
        assert_eq!(s.sample(&[], &[]), None);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 5.0,
            top_k: 1,
            ..SamplerConfig::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&logits(), &[]), Some(4));
        }
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let cfg = SamplerConfig {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..SamplerConfig::default()
        };
        let run = |cfg: SamplerConfig| {
            let mut s = Sampler::new(cfg);
            (0..64)
                .map(|_| s.sample(&logits(), &[]).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(cfg.clone()), run(cfg.clone()));
        assert_ne!(run(cfg.clone()), run(SamplerConfig { seed: 8, ..cfg }));
    }

    #[test]
    fn unfiltered_draws_follow_the_softmax() {
        let l = logits();
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 1,
            ..SamplerConfig::default()
        });
        let n = 40_000;
        let mut counts = [0usize; 8];
        for _ in 0..n {
            counts[s.sample(&l, &[]).unwrap() as usize] += 1;
        }
        let max = l.iter().cloned().fold(f32::MIN, f32::max);
        let z: f32 = l.iter().map(|v| (v - max).exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let p = (l[i] - max).exp() / z;
            let freq = c as f32 / n as f32;
            // 5 standard deviations of a binomial proportion.
            let tol = 5.0 * (p * (1.0 - p) / n as f32).sqrt() + 1e-4;
            assert!((freq - p).abs() < tol, "token {i}: {freq} vs {p}");
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // p = softmax: token 4 and 7 dominate.
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            seed: 3,
            ..SamplerConfig::default()
        });
        for _ in 0..200 {
            let t = s.sample(&logits(), &[]).unwrap();
            assert!(t == 4 || t == 7, "{t}");
        }
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            seed: 3,
            ..SamplerConfig::default()
        });
        for _ in 0..200 {
            // min_p 0.5 keeps logits >= 3.0 + ln 0.5 = 2.31: tokens 4 and 7.
            let t = s.sample(&logits(), &[]).unwrap();
            assert!(t == 4 || t == 7, "{t}");
        }
    }

    #[test]
    fn repetition_penalty_follows_llama_cpp_semantics() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 2.0,
            ..SamplerConfig::default()
        });
        // 3.0 / 2 = 1.5 < 2.9: the repeated token 4 loses to token 7.
        assert_eq!(s.sample(&logits(), &[4]), Some(7));
        // Repeating 4 and 7: 7 -> 1.45, 4 -> 1.5, 1 stays 2.0.
        assert_eq!(s.sample(&logits(), &[4, 7]), Some(1));
        // Negative logits are multiplied: token 2 (-1.0) becomes -2.0, never wins.
        let l = [-1.0f32, -1.5];
        assert_eq!(s.sample(&l, &[0]), Some(1));
        // Outside the window: no penalty.
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 2.0,
            repeat_last_n: 1,
            ..SamplerConfig::default()
        });
        assert_eq!(s.sample(&logits(), &[4, 0]), Some(4));
    }
}
