//! Payloads: fresh random bytes ([`random_bytes`], [`fill_random`]), windows of one shared
//! pseudo-random block that are cheap to make and compare ([`chunk`]), and seeded,
//! reproducible sequences ([`pattern`]).

use std::cell::Cell;
use std::sync::OnceLock;

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).unwrap();
        u64::from_ne_bytes(b) | 1
    });
}

/// The next value of this thread's xorshift generator (seeded from the OS).
pub fn next_random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        x
    })
}

pub fn fill_random(buf: &mut [u8]) {
    for c in buf.chunks_mut(8) {
        let v = next_random().to_ne_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// `len` pseudo-random bytes (any size).
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_random(&mut v);
    v
}

/// A 2 MiB block of deterministic pseudo-random bytes; `chunk(i, len)` picks a
/// distinct-looking window of it for frame `i` (cheap to generate and compare).
pub fn block() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| {
        let mut v = vec![0u8; 2 * 1024 * 1024];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for c in v.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_ne_bytes()[..c.len()]);
        }
        v
    })
}

/// Window `i` of [`block`], `len` ≤ 1 MiB bytes long.
pub fn chunk(i: usize, len: usize) -> &'static [u8] {
    assert!(len <= 1024 * 1024);
    let off = (i.wrapping_mul(7919) * 13) % (1024 * 1024);
    &block()[off..off + len]
}

/// `len` deterministic bytes for `seed`: the same seed gives the same bytes, other seeds
/// other bytes.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_repeat_per_seed() {
        assert_eq!(pattern(1000, 7), pattern(1000, 7));
        assert_ne!(pattern(1000, 7), pattern(1000, 8));
        assert_ne!(chunk(0, 4096), chunk(1, 4096));
        assert_eq!(random_bytes(13).len(), 13);
    }
}
