//! Element-wise activations, softmax, and the error function GELU needs.

use rayon::prelude::*;

use super::float::Float;
use super::Tensor;
use crate::ir::Activation;

const CHUNK: usize = 1 << 14;

/// Applies `a` in place; `prelu` holds the per-channel slopes of a PReLU.
pub fn activation<T: Float>(mut x: Tensor<T>, a: &Activation, prelu: Option<&[T]>) -> Tensor<T> {
    match a {
        Activation::Identity => {}
        Activation::Relu => map(&mut x, relu),
        Activation::LeakyRelu { slope } => {
            let s = T::from_f64(*slope);
            map(&mut x, move |v| if v > T::zero() { v } else { v * s })
        }
        Activation::Prelu { .. } => {
            let slopes = prelu.expect("the executor passes PReLU slopes");
            let c = x.shape[1];
            let inner: usize = x.shape[2..].iter().product::<usize>().max(1);
            x.data.par_chunks_mut(c * inner).for_each(|sample| {
                for (plane, &s) in sample.chunks_mut(inner).zip(slopes) {
                    plane.iter_mut().for_each(|v| {
                        if *v < T::zero() {
                            *v *= s
                        }
                    });
                }
            });
        }
        Activation::Tanh => map(&mut x, |v| v.tanh()),
        Activation::Sigmoid => map(&mut x, |v| T::one() / (T::one() + (-v).exp())),
        Activation::Gelu => map(&mut x, |v| T::from_f64(gelu(v.to_f64()))),
        Activation::GeluTanh => match T::as_f32_mut(&mut x.data) {
            // f32: the vectorised kernel (same formula to a few ulp).
            Some(v) => v.par_chunks_mut(CHUNK).for_each(super::fastmath::gelu_tanh),
            None => map(&mut x, gelu_tanh),
        },
        Activation::Silu => map(&mut x, silu),
    }
    x
}

/// max(v, 0); NaN stays NaN, as in PyTorch.
#[inline]
pub fn relu<T: Float>(v: T) -> T {
    if v < T::zero() {
        T::zero()
    } else {
        v
    }
}

fn map<T: Float>(x: &mut Tensor<T>, f: impl Fn(T) -> T + Sync + Send) {
    x.data
        .par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(|v| *v = f(*v)));
}

/// Softmax over the features: dimension 1 of `[N, F]` and of `[N, C, H, W]` (the
/// channels), the last of a sequence `[N, T, F]` (each token on its own).
pub fn softmax<T: Float>(mut x: Tensor<T>) -> Tensor<T> {
    let (c, inner) = match x.shape[..] {
        [_, _, f] => (f, 1),
        _ => (x.shape[1], x.shape[2..].iter().product::<usize>().max(1)),
    };
    for sample in x.data.chunks_mut(c * inner) {
        for i in 0..inner {
            let max = (0..c)
                .map(|ch| sample[ch * inner + i])
                .fold(T::neg_infinity(), |m, v| if v > m { v } else { m });
            let mut sum = T::zero();
            for ch in 0..c {
                let e = (sample[ch * inner + i] - max).exp();
                sample[ch * inner + i] = e;
                sum += e;
            }
            for ch in 0..c {
                sample[ch * inner + i] = sample[ch * inner + i] / sum;
            }
        }
    }
    x
}

/// GELU's tanh form (PyTorch `approximate='tanh'`, GPT-2's `gelu_new`):
/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, in the run's precision like PyTorch.
pub fn gelu_tanh<T: Float>(x: T) -> T {
    let k = T::from_f64((2.0 / std::f64::consts::PI).sqrt());
    let c = T::from_f64(0.044715);
    let half = T::from_f64(0.5);
    half * x * (T::one() + (k * (x + c * x * x * x)).tanh())
}

/// SiLU (swish): `x * sigmoid(x)`.
pub fn silu<T: Float>(x: T) -> T {
    x / (T::one() + (-x).exp())
}

/// Exact GELU, `x * Phi(x)`, PyTorch's default (`approximate='none'`).
pub fn gelu(x: f64) -> f64 {
    let z = x * std::f64::consts::FRAC_1_SQRT_2;
    if z < -2.5 {
        // 1 + erf(z) would cancel; erfc keeps the small tail accurate.
        0.5 * x * erfc_large(-z)
    } else {
        0.5 * x * (1.0 + erf(z))
    }
}

/// The error function to about 1e-15 relative accuracy.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let r = if a < 2.5 {
        // erf(a) = 2/sqrt(pi) exp(-a^2) sum 2^n a^(2n+1) / (1*3*...*(2n+1)): all terms
        // positive, so no cancellation.
        let a2 = a * a;
        let mut term = a;
        let mut sum = a;
        let mut n = 0.0;
        while term > sum * 1e-17 {
            term *= 2.0 * a2 / (2.0 * n + 3.0);
            sum += term;
            n += 1.0;
        }
        std::f64::consts::FRAC_2_SQRT_PI * (-a2).exp() * sum
    } else {
        1.0 - erfc_large(a)
    };
    r.copysign(x)
}

/// erfc(z) for z >= 2.5 by its continued fraction
/// `exp(-z^2)/sqrt(pi) / (z + (1/2)/(z + 1/(z + (3/2)/(z + ...))))`.
fn erfc_large(z: f64) -> f64 {
    if z > 27.0 {
        return 0.0;
    }
    let mut f = z;
    for k in (1..=80).rev() {
        f = z + (k as f64 / 2.0) / f;
    }
    (-z * z).exp() / std::f64::consts::PI.sqrt() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_reference_values() {
        // Reference values from CPython's math.erf / math.erfc.
        let table = [
            (0.0, 0.0),
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (2.4999, 0.9995928300996666),
            (3.0, 0.9999779095030014),
            (-1.5, -0.9661051464753108),
        ];
        for (x, want) in table {
            assert!(
                (erf(x) - want).abs() < 1e-15,
                "erf({x}) = {} not {want}",
                erf(x)
            );
        }
        assert!((erfc_large(3.0) - 2.2090496998585438e-05).abs() < 1e-19);
        assert!((erfc_large(5.0) - 1.5374597944280351e-12).abs() < 1e-25);
        assert!((erfc_large(2.5) - 4.069520174449589e-04).abs() < 1e-17);
    }

    #[test]
    fn softmax_of_a_sequence_is_over_each_token() {
        let x = Tensor {
            shape: vec![1, 2, 3],
            data: vec![1.0, 2.0, 3.0, -5.0, 0.5, 800.0],
        };
        let y = softmax(x);
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|v| (v - 3.0).exp()).sum();
        for (i, v) in [1.0f64, 2.0, 3.0].iter().enumerate() {
            assert!((y.data[i] - (v - 3.0).exp() / z).abs() < 1e-15);
        }
        // A huge score does not overflow: its token's row is one-hot.
        assert_eq!(y.data[3..], [0.0, 0.0, 1.0]);
    }

    #[test]
    fn gelu_tanh_and_silu_match_reference_values() {
        // 0.5*x*(1+math.tanh(math.sqrt(2/math.pi)*(x+0.044715*x**3))) and
        // x/(1+math.exp(-x)) in CPython.
        let table = [
            (-3.0, -0.0036373920817729943, -0.14227761953270035),
            (-0.7, -0.16942986529488321, -0.2322685594822837),
            (0.0, 0.0, 0.0),
            (0.3, 0.18537092354275922, 0.1723327550434977),
            (2.5, 2.484915733910001, 2.3103545499468914),
        ];
        for (x, gt, si) in table {
            let (x, gt, si): (f64, f64, f64) = (x, gt, si);
            let (g, s) = (gelu_tanh(x), silu(x));
            assert!(
                (g - gt).abs() < 1e-15 * gt.abs().max(1.0),
                "gelu_tanh({x}) = {g}"
            );
            assert!(
                (s - si).abs() < 1e-15 * si.abs().max(1.0),
                "silu({x}) = {s}"
            );
            // The tanh form stays within 1e-3 of the erf form.
            assert!((g - gelu(x)).abs() < 1e-3);
        }
        assert_eq!(gelu_tanh(-20.0f32), -0.0);
        assert_eq!(silu(-1000.0f32), -0.0);
    }

    #[test]
    fn gelu_matches_reference_values() {
        // 0.5 * x * math.erfc(-x / sqrt(2)) in CPython.
        let table = [
            (-3.0, -0.004049694094890287),
            (-1.0, -0.15865525393145707),
            (0.0, 0.0),
            (0.5, 0.34573123063700656),
            (2.0, 1.9544997361036416),
            (-5.0, -1.4332578593959731e-06),
        ];
        for (x, want) in table {
            let got = gelu(x);
            assert!(
                (got - want).abs() < 1e-12 * want.abs().max(1.0),
                "gelu({x}) = {got} not {want}"
            );
        }
    }
}
