//! Unmasking WebSocket payloads with the widest vectors the CPU has, detected at run time
//! (AVX2 on x86-64), falling back to `wire::frame::unmask`'s word loop elsewhere. It lives
//! here because calling a `#[target_feature]` function takes `unsafe`, which only `ring/`
//! may use; `wire` stays pure and takes it as its `Unmask` (see `FrameForwarder::with_unmask`).

/// Unmasks `data` in place; `offset` is the position of `data[0]` within the frame's
/// payload. Same result as `wire::frame::unmask`.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let len = data.len();
    unmask_to(data, 0, 0, len, mask, offset);
}

/// Unmasks the `len` bytes at `buf[from..]` into `buf[to..]` (`to <= from`) in one pass.
/// Same result as `wire::frame::unmask_to`, and the same panics.
pub fn unmask_to(buf: &mut [u8], from: usize, to: usize, len: usize, mask: [u8; 4], offset: usize) {
    assert!(
        to <= from && from + len <= buf.len(),
        "unmask_to out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if len >= 64 && std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above) and both ranges lie within
            // `buf` with `to <= from` (asserted above): what `unmask_to_avx2` requires.
            unsafe { unmask_to_avx2(buf, from, to, len, mask, offset) };
            return;
        }
    }
    crate::wire::frame::unmask_to(buf, from, to, len, mask, offset);
}

/// True when [`unmask`] takes the vector path on this CPU.
pub fn unmask_is_vectorized() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// 32 bytes per step (four steps unrolled), the rest by the word loop. Each step loads
/// before it stores and a store never goes past its own load's end (`to <= from`), so an
/// overlapping move towards the front reads every byte before it is overwritten.
///
/// # Safety
/// The CPU must support AVX2; `to <= from` and `from + len <= buf.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn unmask_to_avx2(
    buf: &mut [u8],
    from: usize,
    to: usize,
    len: usize,
    mask: [u8; 4],
    offset: usize,
) {
    use std::arch::x86_64::*;
    let key = crate::wire::frame::phased_mask(mask, offset);
    let kv = _mm256_set1_epi32(i32::from_ne_bytes(key));
    let vec_end = len / 32 * 32;
    // Both from one pointer: a store through `dst` must not invalidate `src`.
    let base = buf.as_mut_ptr();
    let src = base.add(from) as *const u8;
    let dst = base.add(to);
    let mut i = 0;
    // SAFETY (all loads and stores below): `i + 32 * k <= vec_end <= len` for every access,
    // so each 32-byte unaligned access lies within `buf[from..from + len]` (loads) or
    // `buf[to..to + len]` (stores), both inside `buf`, which we borrow mutably.
    while i + 128 <= vec_end {
        let s = src.add(i) as *const __m256i;
        let d = dst.add(i) as *mut __m256i;
        let v0 = _mm256_loadu_si256(s);
        let v1 = _mm256_loadu_si256(s.add(1));
        let v2 = _mm256_loadu_si256(s.add(2));
        let v3 = _mm256_loadu_si256(s.add(3));
        _mm256_storeu_si256(d, _mm256_xor_si256(v0, kv));
        _mm256_storeu_si256(d.add(1), _mm256_xor_si256(v1, kv));
        _mm256_storeu_si256(d.add(2), _mm256_xor_si256(v2, kv));
        _mm256_storeu_si256(d.add(3), _mm256_xor_si256(v3, kv));
        i += 128;
    }
    while i < vec_end {
        let v = _mm256_loadu_si256(src.add(i) as *const __m256i);
        _mm256_storeu_si256(dst.add(i) as *mut __m256i, _mm256_xor_si256(v, kv));
        i += 32;
    }
    // `vec_end` is a multiple of 4: the key keeps its phase.
    crate::wire::frame::unmask_to(
        buf,
        from + vec_end,
        to + vec_end,
        len - vec_end,
        mask,
        offset + vec_end,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_word_loop_at_every_offset_and_length() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in (0..300).chain([1023, 4096, 65536 + 5]) {
            for off in 0..8 {
                for start in 0..3 {
                    let orig: Vec<u8> = (0..len + start).map(|i| (i * 31 + 7) as u8).collect();
                    let mut a = orig.clone();
                    unmask(&mut a[start..], mask, off);
                    let mut b = orig.clone();
                    crate::wire::frame::unmask(&mut b[start..], mask, off);
                    assert_eq!(a, b, "len {len} offset {off} start {start}");
                }
            }
        }
    }

    #[test]
    fn moving_matches_the_word_loop() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in [64, 100, 127, 128, 129, 1024, 4099] {
            for shift in [0, 1, 4, 31, 32, 33, 200, 5000] {
                for off in 0..4 {
                    let orig: Vec<u8> = (0..len + shift + 9).map(|i| (i * 31 + 7) as u8).collect();
                    let mut a = orig.clone();
                    unmask_to(&mut a, 2 + shift, 2, len, mask, off);
                    let mut b = orig.clone();
                    crate::wire::frame::unmask_to(&mut b, 2 + shift, 2, len, mask, off);
                    assert_eq!(a, b, "len {len} shift {shift} offset {off}");
                }
            }
        }
    }
}
