//! Vectorised f32 `exp`, GELU (tanh form) and softmax rows for the f32 executor, with
//! AVX-512 kernels chosen at run time and the plain scalar formulas elsewhere. f64 runs
//! (the proofs) never come here.
//!
//! `exp` is Cephes' `expf` scheme: `x = n ln2 + r` with |r| <= ln2/2, a degree-6
//! polynomial for `e^r`, then `2^n` by `vscalefps` (which also gives 0 and inf at the
//! ends); within 2 ulp of libm over the whole range (tested). GELU's tanh form is written
//! as `x * sigmoid(2u)` (`0.5 (1 + tanh u) = 1 / (1 + e^-2u)`, exactly), which needs one
//! exp and does not cancel for large negative x.

/// Elements below this go through the scalar loop (a vector's set-up costs more).
const MIN_VECTOR: usize = 16;

use crate::cpu::avx512;

/// GELU's tanh form, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, in place.
pub fn gelu_tanh(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x.len() >= MIN_VECTOR && avx512() {
        // SAFETY: AVX-512F was detected just above.
        unsafe { x86::gelu_tanh(x) };
        return;
    }
    x.iter_mut().for_each(|v| *v = super::act::gelu_tanh(*v));
}

/// `e^x` in place (the kernel the others use, tested on its own).
#[cfg(test)]
pub fn exp(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x.len() >= MIN_VECTOR && avx512() {
        // SAFETY: AVX-512F was detected just above.
        unsafe { x86::exp(x) };
        return;
    }
    x.iter_mut().for_each(|v| *v = v.exp());
}

/// `softmax(row * scale)` in place, the row's maximum subtracted before `exp` so that no
/// score overflows.
pub fn softmax_row(row: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if row.len() >= MIN_VECTOR && avx512() {
        // SAFETY: AVX-512F was detected just above.
        unsafe { x86::softmax_row(row, scale) };
        return;
    }
    row.iter_mut().for_each(|s| *s *= scale);
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for s in row.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|s| *s *= inv);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^8.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Cephes expf: e^r = 1 + r + r^2 (P0 r^5 + ... + P5).
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];

    /// `e^x` of 16 lanes; NaN stays NaN, below -104 gives 0, above 89 inf.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        // max/min return their second operand for a NaN one: NaN passes both.
        let x = _mm512_min_ps(
            _mm512_set1_ps(89.0),
            _mm512_max_ps(_mm512_set1_ps(-104.0), x),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let e = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_scalef_ps(e, n)
    }

    /// Runs `f` over `x` 16 lanes at a time, the tail through a masked load and store.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn each16(x: &mut [f32], f: impl Fn(__m512) -> __m512) {
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            // SAFETY: `c` holds 16 floats.
            unsafe { _mm512_storeu_ps(c.as_mut_ptr(), f(_mm512_loadu_ps(c.as_ptr()))) };
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let m: __mmask16 = (1u32 << tail.len()) as u16 - 1;
            // SAFETY: the mask covers exactly the tail's lanes.
            unsafe {
                let v = _mm512_maskz_loadu_ps(m, tail.as_ptr());
                _mm512_mask_storeu_ps(tail.as_mut_ptr(), m, f(v));
            }
        }
    }

    #[cfg(test)]
    #[target_feature(enable = "avx512f")]
    pub fn exp(x: &mut [f32]) {
        each16(x, |v| exp16(v));
    }

    #[target_feature(enable = "avx512f")]
    pub fn gelu_tanh(x: &mut [f32]) {
        // -2 sqrt(2/pi) and its product with 0.044715.
        let k = (-2.0 * (2.0 / std::f64::consts::PI).sqrt()) as f32;
        let kc = (-2.0 * (2.0 / std::f64::consts::PI).sqrt() * 0.044715) as f32;
        each16(x, |v| {
            // -2u = v (k + kc v^2); gelu = v / (1 + e^-2u).
            let v2 = _mm512_mul_ps(v, v);
            let m2u = _mm512_mul_ps(
                v,
                _mm512_fmadd_ps(v2, _mm512_set1_ps(kc), _mm512_set1_ps(k)),
            );
            let d = _mm512_add_ps(_mm512_set1_ps(1.0), exp16(m2u));
            _mm512_div_ps(v, d)
        });
    }

    #[target_feature(enable = "avx512f")]
    pub fn softmax_row(row: &mut [f32], scale: f32) {
        let n = row.len();
        let full = n - n % 16;
        let tail: __mmask16 = ((1u32 << (n - full)) - 1) as u16;
        let p = row.as_mut_ptr();
        let s = _mm512_set1_ps(scale);
        // SAFETY (every block below): full chunks lie inside `row`; the tail is read and
        // written through `tail`, which covers exactly its lanes.
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in (0..full).step_by(16) {
            unsafe {
                let v = _mm512_mul_ps(_mm512_loadu_ps(p.add(i)), s);
                _mm512_storeu_ps(p.add(i), v);
                max = _mm512_max_ps(max, v);
            }
        }
        unsafe {
            let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, p.add(full)), s);
            _mm512_mask_storeu_ps(p.add(full), tail, v);
            max = _mm512_mask_max_ps(max, tail, max, v);
        }
        let mx = _mm512_set1_ps(_mm512_reduce_max_ps(max));
        let mut sum = _mm512_setzero_ps();
        for i in (0..full).step_by(16) {
            unsafe {
                let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), mx));
                _mm512_storeu_ps(p.add(i), e);
                sum = _mm512_add_ps(sum, e);
            }
        }
        unsafe {
            let v = _mm512_maskz_loadu_ps(tail, p.add(full));
            let e = _mm512_maskz_mov_ps(tail, exp16(_mm512_sub_ps(v, mx)));
            _mm512_mask_storeu_ps(p.add(full), tail, e);
            sum = _mm512_add_ps(sum, e);
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
        each16(row, |v| _mm512_mul_ps(v, inv));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Awkward lengths: empty, below one vector, one vector, a vector and a tail.
    const LENGTHS: [usize; 8] = [0, 1, 7, 15, 16, 17, 33, 257];

    fn values(n: usize, seed: u64, spread: f32) -> Vec<f32> {
        super::super::testutil::random(n, seed)
            .iter()
            .map(|&v| v as f32 * spread)
            .collect()
    }

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_and_keeps_the_edges() {
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.0443).collect();
        xs.extend([
            0.0, -0.0, 88.7, 88.73, 89.5, -87.3, -103.0, -104.5, -1e30, 1e30,
        ]);
        xs.extend([f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE, 1e-30]);
        let mut got = xs.clone();
        exp(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let want = x.exp();
            if want.is_normal() {
                assert!(ulps(g, want) <= 2, "exp({x}) = {g}, libm {want}");
            } else {
                // Subnormal, zero or infinite: the same up to the subnormal's last bits.
                assert!(
                    (g - want).abs() <= 1e-44 || g == want,
                    "exp({x}) = {g}, libm {want}"
                );
            }
        }
        let mut nan = vec![f32::NAN; 17];
        exp(&mut nan);
        assert!(nan.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn gelu_tanh_matches_the_formula_on_every_length() {
        for (i, &n) in LENGTHS.iter().enumerate() {
            let xs = values(n, 40 + i as u64, 4.0);
            let mut got = xs.clone();
            gelu_tanh(&mut got);
            for (&x, &g) in xs.iter().zip(&got) {
                let want = super::super::act::gelu_tanh(x as f64);
                // A few ulp of the inputs' own size, as PyTorch's float32 formula rounds.
                let tol = 4.0 * f32::EPSILON as f64 * (x as f64).abs().max(1e-30);
                assert!(
                    (g as f64 - want).abs() <= tol,
                    "gelu_tanh({x}) = {g}, want {want}"
                );
            }
        }
        let mut edges = vec![-30.0, -10.0, 0.0, -0.0, 10.0, 30.0, 1e20, -1e20];
        edges.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
        edges.resize(16, 1.5);
        gelu_tanh(&mut edges);
        assert_eq!(edges[0], 0.0);
        assert!(edges[1].abs() < 1e-30);
        assert_eq!(edges[2], 0.0);
        assert_eq!(edges[4], 10.0);
        assert_eq!(edges[5], 30.0);
        assert_eq!(edges[6], 1e20);
        assert_eq!(edges[8], f32::INFINITY);
        assert!(edges[10].is_nan());
    }

    #[test]
    fn softmax_rows_match_f64_on_every_length() {
        for (i, &n) in LENGTHS.iter().enumerate().skip(1) {
            // Large spread: exp of the raw scores would overflow without the max.
            let xs = values(n, 60 + i as u64, 300.0);
            let mut got = xs.clone();
            softmax_row(&mut got, 0.125);
            let s: Vec<f64> = xs.iter().map(|&v| v as f64 * 0.125).collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|v| (v - max).exp()).sum();
            for (j, (&g, v)) in got.iter().zip(&s).enumerate() {
                let want = (v - max).exp() / z;
                // f32 rounds `v - max` to its ulp; exp turns that into a relative error.
                let tol = 4.0 * f32::EPSILON as f64 * (1.0 + (v - max).abs()) * want + 1e-44;
                assert!(
                    (g as f64 - want).abs() <= tol,
                    "row {n} [{j}]: {g} vs {want}"
                );
            }
        }
        let mut one = vec![-1e30f32; 20];
        one[17] = 5.0;
        softmax_row(&mut one, 1.0);
        assert_eq!(one[17], 1.0);
        assert!(one.iter().enumerate().all(|(j, &v)| j == 17 || v == 0.0));
    }
}
