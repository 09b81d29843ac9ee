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
