//! A tiny seeded random number generator (SplitMix64): the same numbers on every
//! machine and in every version, which the corpus generator and batch sampling need for
//! reproducible runs and exact resumes.

/// The seed a step's batches are drawn with: the phase's `seed` and the step's name.
/// Without the name every phase of a job (all seed 0 by default) would draw the same
/// rows at the same optimizer steps: a later phase reading a source again would re-read
/// exactly the windows an earlier one read (the word ledger showed it).
pub fn draw_seed(seed: u64, step_name: &str) -> u64 {
    Rng::for_stream(seed, name_hash(step_name)).next_u64()
}

#[derive(Debug, Clone)]
pub struct Rng(u64);

/// FNV-1a of `text`: a stable number for a name (a step, a picture), to seed streams by.
pub fn name_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// A generator for one (seed, stream) pair, e.g. one training step.
    pub fn for_stream(seed: u64, stream: u64) -> Self {
        let mut mixer = Self::new(seed);
        mixer.0 ^= stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        mixer.next_u64();
        mixer
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift: unbiased enough for sampling, and fast.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in [0, 1), from 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}
