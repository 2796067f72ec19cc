//! Single-precision sine and cosine that round like the C library llama.cpp links on
//! x86-64 Linux (glibc 2.28+, whose `sinf`/`cosf` evaluate short polynomials in double
//! precision and, on CPUs with FMA, fuse their multiply-adds).
//!
//! RoPE's angles go through `cosf`/`sinf` once per position and pair. glibc's results
//! are within 0.56 ulp but not always correctly rounded, and the `libm` crate's differ
//! from them by one ulp on about 2% of RoPE angles; that ulp now and then flips an f16
//! rounding of K and the logits drift apart (SmolLM2 Q8_0 lost a greedy token after 45
//! steps). Same algorithm, same constants, same operation order: same bits.

/// Sine polynomial coefficients (odd powers 3, 5, 7) and cosine ones (even powers 2..8),
/// on |r| <= pi/4.
const S1: f64 = f64::from_bits(0xbfc5_5554_5995_a603); // -0x1.555545995a603p-3
const S2: f64 = f64::from_bits(0x3f81_1076_0523_0bc4); // 0x1.1107605230bc4p-7
const S3: f64 = f64::from_bits(0xbf29_94eb_3774_cf24); // -0x1.994eb3774cf24p-13
const C1: f64 = f64::from_bits(0xbfdf_ffff_fd0c_621c); // -0x1.ffffffd0c621cp-2
const C2: f64 = f64::from_bits(0x3fa5_5553_e106_8f19); // 0x1.55553e1068f19p-5
const C3: f64 = f64::from_bits(0xbf56_c087_e89a_359d); // -0x1.6c087e89a359dp-10
const C4: f64 = f64::from_bits(0x3ef9_9343_027b_f8c3); // 0x1.99343027bf8c3p-16

/// `a * b + c` with one rounding, as glibc's FMA build of these functions computes it.
#[inline(always)]
fn fma(a: f64, b: f64, c: f64) -> f64 {
    libm::fma(a, b, c)
}

fn sin_poly(x: f64, x2: f64) -> f32 {
    let x3 = x * x2;
    let s1 = fma(x2, S3, S2);
    let x7 = x3 * x2;
    let s = fma(x3, S1, x);
    fma(x7, s1, s) as f32
}

/// `neg` gives -cos (the polynomial with every coefficient negated).
fn cos_poly(x2: f64, neg: bool) -> f32 {
    let k = if neg { -1.0 } else { 1.0 };
    let x4 = x2 * x2;
    let c2 = fma(x2, k * C4, k * C3);
    let c1 = fma(x2, k * C1, k);
    let x6 = x4 * x2;
    let c = fma(x4, k * C2, c1);
    fma(x6, c2, c) as f32
}

/// 4/pi in overlapping 32-bit windows: entry `i` is bits `8i+7` down of 4/pi's binary
/// expansion (`floor(4/pi * 2^(8i+7)) mod 2^32`).
const INV_PIO4: [u32; 24] = [
    0xa2, 0xa2f9, 0xa2f983, 0xa2f9836e, 0xf9836e4e, 0x836e4e44, 0x6e4e4415, 0x4e441529, 0x441529fc,
    0x1529fc27, 0x29fc2757, 0xfc2757d1, 0x2757d1f5, 0x57d1f534, 0xd1f534dd, 0xf534ddc0, 0x34ddc0db,
    0xddc0db62, 0xc0db6295, 0xdb629599, 0x6295993c, 0x95993c43, 0x993c4390, 0x3c439041,
];

/// Reduction of |x| >= 120 (bits `xi`, sign ignored) modulo pi/2 in fixed point: the
/// 24-bit mantissa times 96 bits of 4/pi chosen by the exponent gives the angle in
/// quarter turns as a 2.62 fixed-point number; returns the remainder in radians and the
/// quadrant.
fn reduce_large(xi: u32) -> (f64, i32) {
    let base = ((xi >> 26) & 15) as usize;
    let shift = (xi >> 23) & 7;
    let m = ((xi & 0x00ff_ffff) | 0x0080_0000) << shift;
    let lo = m.wrapping_mul(INV_PIO4[base]);
    let mid = u64::from(m) * u64::from(INV_PIO4[base + 4]);
    let hi = u64::from(m) * u64::from(INV_PIO4[base + 8]);
    let mut r = ((hi >> 32) | (u64::from(lo) << 32)).wrapping_add(mid);
    let n = r.wrapping_add(1 << 61) >> 62;
    r = r.wrapping_sub(n << 62);
    // 2*pi / 2^64: one unit of the fixed-point remainder in radians.
    const PI63: f64 = f64::from_bits(0x3c19_21fb_5444_2d18); // 0x1.921FB54442D18p-62
    ((r as i64) as f64 * PI63, n as i32)
}

/// The remainder of `y` modulo pi/2 (in [-pi/4, pi/4]), the quadrant (which picks the
/// polynomial) and the quadrant that sets the signs (for large negative `y` the
/// reduction ignores the sign, so it is added there), for pi/4 <= |y| < infinity.
fn reduce(y: f32) -> (f64, i32, i32) {
    let x = f64::from(y);
    if abstop12(y) < abstop12(120.0) {
        // 2/pi scaled by 2^24, so the rounded quadrant lands in bits 24..32.
        const HPI_INV: f64 = f64::from_bits(0x4164_5f30_6dc9_c883); // 0x1.45F306DC9C883p+23
        const HPI: f64 = core::f64::consts::FRAC_PI_2;
        let n = ((x * HPI_INV) as i32).wrapping_add(0x80_0000) >> 24;
        (fma(-f64::from(n), HPI, x), n, n)
    } else {
        let (r, n) = reduce_large(y.to_bits());
        (r, n, n + (y.to_bits() >> 31) as i32)
    }
}

fn abstop12(x: f32) -> u32 {
    (x.to_bits() >> 20) & 0x7ff
}

/// Sine and cosine of `pi/4 <= |y|` through the reduction, with the sign of sine in each
/// quadrant and the negated cosine polynomial in quadrants 2 and 3.
fn reduced(y: f32, want_cos: bool) -> f32 {
    let (r, n, q) = reduce(y);
    let sign = if (q & 3) == 1 || (q & 3) == 2 {
        -1.0
    } else {
        1.0
    };
    let neg = q & 2 != 0;
    let x = r * sign;
    let odd = (n & 1 != 0) != want_cos;
    if odd {
        cos_poly(r * r, neg)
    } else {
        sin_poly(x, r * r)
    }
}

const PIO4_TOP: u32 = 0x3f4; // abstop12 of pi/4 as f32

/// `sinf` as glibc computes it (finite inputs; NaN for infinities and NaN).
pub fn sinf(y: f32) -> f32 {
    if !y.is_finite() {
        return f32::NAN;
    }
    if abstop12(y) < PIO4_TOP {
        if abstop12(y) < abstop12(1.0 / 4096.0) {
            return y;
        }
        let x = f64::from(y);
        return sin_poly(x, x * x);
    }
    reduced(y, false)
}

/// `cosf` as glibc computes it (finite inputs; NaN for infinities and NaN).
pub fn cosf(y: f32) -> f32 {
    if !y.is_finite() {
        return f32::NAN;
    }
    if abstop12(y) < PIO4_TOP {
        if abstop12(y) < abstop12(1.0 / 4096.0) {
            return 1.0;
        }
        let x = f64::from(y);
        return cos_poly(x * x, false);
    }
    reduced(y, true)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// On x86-64 Linux, std's `f32::sin`/`cos` call glibc's `sinf`/`cosf`: every RoPE
    /// angle of bases 1e4, 1e5, 1e6 at positions below 8192, and a spread of other
    /// floats, must give the same bits. (glibc runs its FMA build of these on CPUs with
    /// FMA, as every machine llama.cpp's AVX2 kernels run on has; on a CPU without FMA
    /// glibc, and so llama.cpp, would round some of them differently.)
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
    fn sin_and_cos_match_glibc_bit_for_bit() {
        let mut bad = 0usize;
        let mut n = 0usize;
        let mut check = |a: f32| {
            n += 1;
            if sinf(a).to_bits() != a.sin().to_bits() || cosf(a).to_bits() != a.cos().to_bits() {
                if bad < 8 {
                    std::println!(
                        "{a:e}: ours {} {}, glibc {} {}",
                        sinf(a),
                        cosf(a),
                        a.sin(),
                        a.cos()
                    );
                }
                bad += 1;
            }
        };
        for base in [10_000.0f32, 100_000.0, 1_000_000.0] {
            for dims in [64usize, 128] {
                let ts = libm::powf(base, -2.0 / dims as f32);
                for pos in 0..8192 {
                    let mut theta = pos as f32;
                    for _ in 0..dims / 2 {
                        check(theta);
                        check(-theta);
                        theta *= ts;
                    }
                }
            }
        }
        let mut bits = 0x3000_0000u32;
        while bits < 0x4f80_0000 {
            check(f32::from_bits(bits));
            bits += 4099;
        }
        assert_eq!(bad, 0, "{bad} of {n} inputs differ from glibc");
    }
}
