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

/// `dst.copy_from_slice(src)` with non-temporal stores where the CPU has them (x86-64's
/// SSE2): the bytes go to memory without first reading `dst`'s lines into the cache and
/// without evicting what is there. For output that the device, not this CPU, reads next:
/// a streamed widen's buffers, whose ordinary stores read every line first (2.5 GB of
/// extra memory traffic for a 2.5 GB student, which slowed the device's own transfers).
pub fn copy_streaming(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy_streaming: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        // Ordinary stores up to the first 16-byte boundary of `dst`, then whole 16-byte
        // stores, then the rest.
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        dst[..head].copy_from_slice(&src[..head]);
        let body = (dst.len() - head) / 16 * 16;
        let (d, s) = (&mut dst[head..head + body], &src[head..head + body]);
        for (d, s) in d.chunks_exact_mut(16).zip(s.chunks_exact(16)) {
            // SAFETY: SSE2 is part of x86-64; `d` is 16 bytes at a 16-byte boundary and
            // `s` 16 readable bytes (an unaligned load).
            unsafe {
                _mm_stream_si128(
                    d.as_mut_ptr() as *mut __m128i,
                    _mm_loadu_si128(s.as_ptr() as *const __m128i),
                );
            }
        }
        dst[head + body..].copy_from_slice(&src[head + body..]);
        // SAFETY: SSE2. Non-temporal stores are weakly ordered: fenced before the bytes
        // are handed on (a channel's release does not order them).
        unsafe { _mm_sfence() };
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

#[cfg(test)]
mod tests {
    /// Every byte lands, whatever the destination's alignment (a head before the first
    /// 16-byte boundary, whole 16-byte stores, a tail) and length (shorter than one store
    /// included); bytes around the destination stay as they were.
    #[test]
    fn streaming_copies_every_byte() {
        let src: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for offset in [0, 1, 5, 15, 16, 17] {
            for len in [0, 1, 15, 16, 17, 31, 200, 983] {
                let mut buf = vec![0xAAu8; offset + len + 40];
                super::copy_streaming(&mut buf[offset..offset + len], &src[3..3 + len]);
                assert_eq!(
                    &buf[offset..offset + len],
                    &src[3..3 + len],
                    "{offset} {len}"
                );
                assert!(buf[..offset].iter().all(|&b| b == 0xAA), "{offset} {len}");
                assert!(
                    buf[offset + len..].iter().all(|&b| b == 0xAA),
                    "{offset} {len}"
                );
            }
        }
    }
}
