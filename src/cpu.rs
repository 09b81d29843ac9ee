//! What this CPU runs, and plain loops compiled a second time for AVX-512.
//!
//! The release binary targets baseline x86-64 (so it runs on any machine), where loops
//! vectorise to 128-bit SSE2 only. Kernels with intrinsics ask [`avx512`]; a plain
//! loop gets the wide registers by being written inside [`avx512_twice!`].

/// Whether this CPU has AVX-512 F and DQ (the kernels' and [`avx512_twice!`]'s features).
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A function whose body is compiled twice, for baseline x86-64 and for AVX-512, and runs
/// as the second where [`avx512`] allows. The two compute the same bits: Rust fuses no
/// multiply-adds and reorders no floating-point sums on its own, so only the vector width
/// changes.
#[macro_export]
macro_rules! avx512_twice {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn plain($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            if $crate::cpu::avx512() {
                #[target_feature(enable = "avx512f,avx512dq")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    plain($($arg),*)
                }
                // SAFETY: the CPU has the features `wide` is compiled for.
                return unsafe { wide($($arg),*) };
            }
            plain($($arg),*)
        }
    };
}

/// `sum f(x)` over `c` in `L` interleaved f64 lanes (lane `i` adds the values at `i mod L`),
/// then the lanes in order, then the values past the last whole group: a fixed order, so
/// the bits do not depend on threads, and `L` independent chains instead of one, so the
/// loop vectorises (inside [`avx512_twice!`], to the wide registers).
#[inline(always)]
pub fn lanes_sum<const L: usize, T: Copy>(c: &[T], f: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0.0f64; L];
    let groups = c.chunks_exact(L);
    let rest = groups.remainder();
    for g in groups {
        for (a, &x) in acc.iter_mut().zip(g) {
            *a += f(x);
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|&x| f(x)).sum::<f64>()
}
