//! Unmasking WebSocket payloads with the widest vectors the CPU has, detected at run time
//! (AVX2 on x86-64), falling back to `wire::frame::unmask`'s word loop elsewhere. It lives
//! here because calling a `#[target_feature]` function takes `unsafe`, which only `ring/`
//! may use; `wire` stays pure and takes it as its `Unmask` (see `FrameForwarder::with_unmask`).

/// Unmasks `data` in place; `offset` is the position of `data[0]` within the frame's
/// payload. Same result as `wire::frame::unmask`.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if data.len() >= 64 && std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above), the only requirement of
            // `unmask_avx2` beyond a valid slice.
            unsafe { unmask_avx2(data, mask, offset) };
            return;
        }
    }
    crate::wire::frame::unmask(data, mask, offset);
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

/// 32 bytes per step (four steps unrolled), the rest by the word loop.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn unmask_avx2(data: &mut [u8], mask: [u8; 4], offset: usize) {
    use std::arch::x86_64::*;
    let mut key = [0u8; 4];
    for (i, k) in key.iter_mut().enumerate() {
        *k = mask[(offset + i) % 4];
    }
    let kv = _mm256_set1_epi32(i32::from_ne_bytes(key));
    let len = data.len();
    let vec_end = len / 32 * 32;
    let p = data.as_mut_ptr();
    let mut i = 0;
    // SAFETY (all loads and stores below): `i + 32 * k <= vec_end <= len` for every access,
    // so each 32-byte unaligned access lies within `data`, which we borrow mutably.
    while i + 128 <= vec_end {
        let a = p.add(i) as *mut __m256i;
        let v0 = _mm256_loadu_si256(a);
        let v1 = _mm256_loadu_si256(a.add(1));
        let v2 = _mm256_loadu_si256(a.add(2));
        let v3 = _mm256_loadu_si256(a.add(3));
        _mm256_storeu_si256(a, _mm256_xor_si256(v0, kv));
        _mm256_storeu_si256(a.add(1), _mm256_xor_si256(v1, kv));
        _mm256_storeu_si256(a.add(2), _mm256_xor_si256(v2, kv));
        _mm256_storeu_si256(a.add(3), _mm256_xor_si256(v3, kv));
        i += 128;
    }
    while i < vec_end {
        let a = p.add(i) as *mut __m256i;
        _mm256_storeu_si256(a, _mm256_xor_si256(_mm256_loadu_si256(a), kv));
        i += 32;
    }
    // `vec_end` is a multiple of 4: the key keeps its phase.
    crate::wire::frame::unmask(&mut data[vec_end..], mask, offset + vec_end);
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
}
