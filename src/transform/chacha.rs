//! The keystream of rand_chacha's `ChaCha8Rng`, sixteen blocks at a time with AVX-512.
//!
//! Every free value r2rc draws comes from a keyed `ChaCha8Rng` stream
//! ([`super::fill::keyed_rng`]), and a large widening draws hundreds of millions of values:
//! rand_chacha's four-block AVX2 kernel took about a quarter of the streamed 1 GB widen.
//! Here each of sixteen 512-bit registers holds one state word of sixteen consecutive
//! blocks, so a double round is 96 vector operations for 1 KB of keystream; a 16 x 16
//! transpose puts the words back in stream order. The words are rand_chacha's (original
//! ChaCha: 64-bit block counter in words 12-13, 64-bit stream in 14-15, eight rounds), so
//! every student keeps its bits; tests compare with rand_chacha at every offset.

use rand_chacha::ChaCha8Rng;

/// u32 words per block.
const BLOCK: usize = 16;

/// A keyed stream: its key and its stream number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    key: [u32; 8],
    number: u64,
}

/// Where a stream is: the position of its next word, with the last sixteen blocks made (a
/// fill that ends inside them leaves the rest for the next).
#[derive(Debug, Clone)]
pub struct Position {
    stream: Stream,
    word: u128,
    /// Blocks `first .. first + WIDE`, when made.
    made: Option<u64>,
    blocks: [u32; WIDE * BLOCK],
}

impl Position {
    /// Where `rng` is now.
    pub fn of(rng: &ChaCha8Rng) -> Position {
        let seed = rng.get_seed();
        let stream = Stream {
            key: std::array::from_fn(|i| {
                u32::from_le_bytes(seed[4 * i..4 * i + 4].try_into().expect("4 bytes"))
            }),
            number: rng.get_stream(),
        };
        Position::new(stream, rng.get_word_pos())
    }

    /// Word `word` of `stream`.
    pub fn new(stream: Stream, word: u128) -> Position {
        Position {
            stream,
            word,
            made: None,
            blocks: [0; WIDE * BLOCK],
        }
    }

    /// Its stream.
    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// The stream's next `out.len()` words, in order; the position moves past them.
    pub fn fill(&mut self, out: &mut [u32]) {
        const GROUP: usize = WIDE * BLOCK;
        let mut o = 0;
        while o < out.len() {
            // The counter is 64 bits; higher bits wrap as rand_chacha's do.
            let block = (self.word / BLOCK as u128) as u64;
            let first = match self.made {
                Some(first) if block.wrapping_sub(first) < WIDE as u64 => first,
                _ if self.word.is_multiple_of(BLOCK as u128) && out.len() - o >= GROUP => {
                    // Whole blocks straight into the output.
                    let dst = (&mut out[o..o + GROUP]).try_into().expect("sixteen blocks");
                    make(&self.stream, block, dst);
                    o += GROUP;
                    self.word += GROUP as u128;
                    continue;
                }
                _ => {
                    make(&self.stream, block, &mut self.blocks);
                    self.made = Some(block);
                    block
                }
            };
            let at = (self.word - first as u128 * BLOCK as u128) as usize;
            let k = (GROUP - at).min(out.len() - o);
            out[o..o + k].copy_from_slice(&self.blocks[at..at + k]);
            o += k;
            self.word += k as u128;
        }
    }

    /// The position of its next word.
    pub fn word(&self) -> u128 {
        self.word
    }
}

/// Blocks `counter .. counter + 16` of a stream into `out`, in stream order.
fn make(stream: &Stream, counter: u64, out: &mut [u32; WIDE * BLOCK]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::avx512() {
        // SAFETY: the CPU has AVX-512 (checked above).
        unsafe { wide::blocks(stream, counter, out) };
        return;
    }
    make_plain(stream, counter, out);
}

/// [`make`] without vector registers.
fn make_plain(stream: &Stream, counter: u64, out: &mut [u32; WIDE * BLOCK]) {
    for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
        let init = state(stream, counter.wrapping_add(b as u64));
        let mut x = init;
        for _ in 0..4 {
            for [a, b, c, d] in ROUNDS {
                quarter(&mut x, a, b, c, d);
            }
        }
        for ((o, x), i) in out.iter_mut().zip(x).zip(init) {
            *o = x.wrapping_add(i);
        }
    }
}

/// Blocks per AVX-512 call.
const WIDE: usize = 16;

/// The first state of block `counter`: "expand 32-byte k", the key, the counter, the stream.
fn state(stream: &Stream, counter: u64) -> [u32; BLOCK] {
    let mut s = [0u32; BLOCK];
    s[..4].copy_from_slice(&[0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574]);
    s[4..12].copy_from_slice(&stream.key);
    s[12] = counter as u32;
    s[13] = (counter >> 32) as u32;
    s[14] = stream.number as u32;
    s[15] = (stream.number >> 32) as u32;
    s
}

/// One double round: four column quarter rounds, then four diagonal ones.
const ROUNDS: [[usize; 4]; 8] = [
    [0, 4, 8, 12],
    [1, 5, 9, 13],
    [2, 6, 10, 14],
    [3, 7, 11, 15],
    [0, 5, 10, 15],
    [1, 6, 11, 12],
    [2, 7, 8, 13],
    [3, 4, 9, 14],
];

fn quarter(x: &mut [u32; BLOCK], a: usize, b: usize, c: usize, d: usize) {
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(16);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(12);
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(8);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(7);
}

#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::*;

    use super::{state, Stream, BLOCK, WIDE};

    /// Blocks `counter .. counter + 16` into `out`, in stream order.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn blocks(stream: &Stream, counter: u64, out: &mut [u32; WIDE * BLOCK]) {
        let first = state(stream, counter);
        let lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        let mut init = [_mm512_setzero_si512(); BLOCK];
        for (v, &w) in init.iter_mut().zip(&first) {
            *v = _mm512_set1_epi32(w as i32);
        }
        // Each lane's own counter, with the carry into the high word.
        let low = _mm512_add_epi32(init[12], lanes);
        let carry = _mm512_cmplt_epu32_mask(low, init[12]);
        init[12] = low;
        init[13] = _mm512_mask_add_epi32(init[13], carry, init[13], _mm512_set1_epi32(1));
        // Named registers, not an indexed array: indexing kept the state on the stack.
        macro_rules! quarter {
            ($a:ident, $b:ident, $c:ident, $d:ident) => {
                $a = _mm512_add_epi32($a, $b);
                $d = _mm512_rol_epi32::<16>(_mm512_xor_si512($d, $a));
                $c = _mm512_add_epi32($c, $d);
                $b = _mm512_rol_epi32::<12>(_mm512_xor_si512($b, $c));
                $a = _mm512_add_epi32($a, $b);
                $d = _mm512_rol_epi32::<8>(_mm512_xor_si512($d, $a));
                $c = _mm512_add_epi32($c, $d);
                $b = _mm512_rol_epi32::<7>(_mm512_xor_si512($b, $c));
            };
        }
        let [mut x0, mut x1, mut x2, mut x3, mut x4, mut x5, mut x6, mut x7, mut x8, mut x9, mut x10, mut x11, mut x12, mut x13, mut x14, mut x15] =
            init;
        // The double rounds of `ROUNDS`.
        for _ in 0..4 {
            quarter!(x0, x4, x8, x12);
            quarter!(x1, x5, x9, x13);
            quarter!(x2, x6, x10, x14);
            quarter!(x3, x7, x11, x15);
            quarter!(x0, x5, x10, x15);
            quarter!(x1, x6, x11, x12);
            quarter!(x2, x7, x8, x13);
            quarter!(x3, x4, x9, x14);
        }
        let mut x = [
            x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15,
        ];
        for (v, i) in x.iter_mut().zip(&init) {
            *v = _mm512_add_epi32(*v, *i);
        }
        // x[w] lane b is word w of block b; out wants block b's words together.
        let t = transpose(x);
        for (b, v) in t.iter().enumerate() {
            // SAFETY: `out` holds 16 blocks of 16 words.
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(b * BLOCK).cast(), *v) };
        }
    }

    /// The 16 x 16 transpose of 32-bit lanes: row `w` of the result is lane `w` of each input.
    #[target_feature(enable = "avx512f")]
    fn transpose(r: [__m512i; 16]) -> [__m512i; 16] {
        // Pairs of rows interleaved by 32-bit, then 64-bit lanes: 4 x 4 blocks within each
        // 128-bit lane.
        let mut a = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        let mut b = [_mm512_setzero_si512(); 16];
        for i in 0..4 {
            let (p, q) = (4 * i, 4 * i + 2);
            b[4 * i] = _mm512_unpacklo_epi64(a[p], a[q]);
            b[4 * i + 1] = _mm512_unpackhi_epi64(a[p], a[q]);
            b[4 * i + 2] = _mm512_unpacklo_epi64(a[p + 1], a[q + 1]);
            b[4 * i + 3] = _mm512_unpackhi_epi64(a[p + 1], a[q + 1]);
        }
        // b[4i + j] holds, in 128-bit lane l, words 4l + j of rows 4i .. 4i + 4. Gather
        // the 128-bit lanes: first pairs of row groups, then the pairs' pairs.
        let mut c = [_mm512_setzero_si512(); 16];
        for j in 0..4 {
            c[j] = _mm512_shuffle_i32x4::<0x88>(b[j], b[4 + j]);
            c[4 + j] = _mm512_shuffle_i32x4::<0xdd>(b[j], b[4 + j]);
            c[8 + j] = _mm512_shuffle_i32x4::<0x88>(b[8 + j], b[12 + j]);
            c[12 + j] = _mm512_shuffle_i32x4::<0xdd>(b[8 + j], b[12 + j]);
        }
        let mut out = [_mm512_setzero_si512(); 16];
        for j in 0..4 {
            out[j] = _mm512_shuffle_i32x4::<0x88>(c[j], c[8 + j]);
            out[8 + j] = _mm512_shuffle_i32x4::<0xdd>(c[j], c[8 + j]);
            out[4 + j] = _mm512_shuffle_i32x4::<0x88>(c[4 + j], c[12 + j]);
            out[12 + j] = _mm512_shuffle_i32x4::<0xdd>(c[4 + j], c[12 + j]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, RngCore, SeedableRng};

    use super::*;

    /// rand_chacha's words from `rng`'s position.
    fn reference(rng: &ChaCha8Rng, n: usize) -> Vec<u32> {
        let mut r = rng.clone();
        (0..n).map(|_| r.next_u32()).collect()
    }

    /// The same words as rand_chacha at every offset within a block, for lengths that end
    /// inside a block, cross the sixteen-block groups, and run long; with streams and
    /// counters near the 32-bit carry.
    #[test]
    fn the_words_are_rand_chachas() {
        let mut keys = ChaCha8Rng::seed_from_u64(7);
        for case in 0..6 {
            let mut seed = [0u8; 32];
            keys.fill_bytes(&mut seed);
            let mut rng = ChaCha8Rng::from_seed(seed);
            if case % 2 == 1 {
                rng.set_stream(keys.random());
            }
            let base: u128 = match case {
                // Blocks 2^32 - 5 .. : the counter's low word carries inside a group.
                2 | 3 => ((1u128 << 32) - 5) * 16,
                _ => keys.random_range(0..1_000_000u128),
            };
            for skip in [0u128, 1, 7, 15, 16, 17, 255, 256, 259] {
                rng.set_word_pos(base + skip);
                for n in [0, 1, 5, 16, 33, 255, 256, 257, 300, 4096 + 9] {
                    let want = reference(&rng, n);
                    let mut pos = Position::of(&rng);
                    let mut got = vec![0u32; n];
                    pos.fill(&mut got);
                    assert_eq!(got, want, "case {case} skip {skip} n {n}");
                    assert_eq!(pos.word(), base + skip + n as u128);
                }
            }
        }
    }

    /// The plain blocks (machines without AVX-512) are rand_chacha's too.
    #[test]
    fn plain_blocks_are_rand_chachas() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        rng.set_stream(5);
        for block in [0u64, 3, (1 << 32) - 7] {
            rng.set_word_pos(block as u128 * 16);
            let pos = Position::of(&rng);
            let mut got = [0u32; WIDE * BLOCK];
            make_plain(&pos.stream, block, &mut got);
            assert_eq!(got.to_vec(), reference(&rng, WIDE * BLOCK), "block {block}");
        }
    }

    /// Filling in pieces gives the words of filling at once.
    #[test]
    fn pieces_continue_the_stream() {
        let rng = ChaCha8Rng::seed_from_u64(3);
        let want = reference(&rng, 5000);
        let mut pos = Position::of(&rng);
        let mut got = vec![0u32; 5000];
        let mut at = 0;
        let mut step = 1;
        while at < got.len() {
            let k = step.min(got.len() - at);
            pos.fill(&mut got[at..at + k]);
            at += k;
            step = step * 3 + 1;
        }
        assert_eq!(got, want);
    }
}
