//! Deterministic draws from the seed: every choice the simulator makes about an id is
//! a hash of (seed, what is being chosen, the id), so the same id always gets the same
//! answer, whatever order requests arrive in. md5 is stable across Rust versions,
//! unlike `DefaultHasher`.

use md5::{Digest, Md5};

/// Draws for one key (an id, or an id and an attempt number).
#[derive(Debug, Clone)]
pub struct Draw {
    seed: u64,
    key: String,
}

impl Draw {
    pub fn new(seed: u64, key: impl Into<String>) -> Self {
        Self {
            seed,
            key: key.into(),
        }
    }

    /// A 64-bit hash of (seed, tag, key).
    pub fn bits(&self, tag: &str) -> u64 {
        let mut md5 = Md5::new();
        md5.update(self.seed.to_le_bytes());
        md5.update(tag.as_bytes());
        md5.update([0]);
        md5.update(self.key.as_bytes());
        let digest = md5.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    /// A number in [0, 1).
    pub fn unit(&self, tag: &str) -> f64 {
        (self.bits(tag) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A number in [0, n).
    pub fn below(&self, tag: &str, n: u64) -> u64 {
        if n == 0 { 0 } else { self.bits(tag) % n }
    }

    /// True with probability `p`.
    pub fn chance(&self, tag: &str, p: f64) -> bool {
        self.unit(tag) < p
    }

    /// One of `items`, uniformly.
    pub fn pick<'a, T>(&self, tag: &str, items: &'a [T]) -> &'a T {
        &items[self.below(tag, items.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_stable_and_spread() {
        let d = Draw::new(7, "v-1");
        assert_eq!(d.bits("x"), Draw::new(7, "v-1").bits("x"));
        assert_ne!(d.bits("x"), Draw::new(8, "v-1").bits("x"));
        assert_ne!(d.bits("x"), d.bits("y"));
        let hits = (0..10_000)
            .filter(|i| Draw::new(1, format!("id-{i}")).chance("c", 0.25))
            .count();
        assert!((2_200..2_800).contains(&hits), "{hits}");
    }
}
