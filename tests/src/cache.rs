//! Prompt caches as the providers document them, one state per emulator (caches are
//! organisation-wide, not per batch), shared by every provider's requests.
//!
//! - **Anthropic**: only prefixes ending at a `cache_control` breakpoint are cached (tools,
//!   then system, then messages), for their `ttl` (5 minutes or 1 hour, refreshed by a
//!   hit). A prefix shorter than the model's minimum ([`crate::model::min_cacheable`]) is
//!   never cached. A hit reads the longest cached breakpoint prefix; the tokens from
//!   there to the last breakpoint are written.
//! - **OpenAI**: automatic for prompts of 1,024 tokens or more; a hit covers the longest
//!   identical prefix seen before, in steps of 1,024 + a multiple of 128 tokens. Entries
//!   live [`OPENAI_TTL_S`] after their last use (the docs say 5 to 10 minutes of
//!   inactivity). Nothing is reported as written.
//! - **Gemini / Vertex**: implicit caching of repeated prefixes at or above the model's
//!   minimum, assumed in the same 128-token steps and with a [`GOOGLE_TTL_S`] lifetime
//!   (neither is documented).
//!
//! Batches are served best effort. The requests of a batch run in waves of
//! [`CacheConfig::wave_size`] concurrent requests, in the batch's results order: a prefix
//! written in a wave is visible only to later waves, and every wave moves the simulated
//! clock on by [`CacheConfig::wave_seconds`]. Beyond that a lookup misses at a seeded
//! rate: [`CacheConfig::miss_rate`], or [`CacheConfig::unkeyed_miss_rate`] for OpenAI
//! requests without `prompt_cache_key` (the key routes requests sharing a prefix to the
//! same machine; without it they spread). These rates are assumptions, not documented
//! figures. Everything is seeded, so the same requests in the same order replay.

use std::collections::HashMap;

use crate::model::Api;

/// How long an OpenAI prefix stays cached after its last use, in simulated seconds.
pub const OPENAI_TTL_S: u64 = 600;
/// How long a Gemini / Vertex implicit cache entry lives after its last use (assumed).
pub const GOOGLE_TTL_S: u64 = 600;
/// The smallest prefix OpenAI caches, and the step hits grow by beyond it.
pub const OPENAI_MIN_PREFIX: u64 = 1024;
/// The step cached prefixes grow by (OpenAI documents 128; Google assumed the same).
pub const PREFIX_STEP: u64 = 128;

/// The knobs of the simulated caches.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Requests of a batch that run at once: a prefix written in a wave is only visible
    /// to later waves. Default 16.
    pub wave_size: usize,
    /// Simulated seconds each wave takes (moves the clock that TTLs are checked
    /// against). Default 10.
    pub wave_seconds: u64,
    /// Chance that a lookup misses although the prefix is cached (best effort in
    /// batches). Default 0.05.
    pub miss_rate: f64,
    /// The same for OpenAI requests without `prompt_cache_key`. Default 0.30.
    pub unkeyed_miss_rate: f64,
    /// Seeds the misses (the emulator passes `Config::seed`).
    pub seed: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            wave_size: 16,
            wave_seconds: 10,
            miss_rate: 0.05,
            unkeyed_miss_rate: 0.30,
            seed: crate::common::DEFAULT_SEED,
        }
    }
}

/// A prefix the cache may hold: `tokens` long, kept `ttl_s` seconds after its last use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// Length of the prefix in tokens.
    pub tokens: u64,
    /// Hash of the prefix's tokens (and the provider and model).
    pub hash: u64,
    /// Lifetime after the last use, in simulated seconds.
    pub ttl_s: u64,
}

/// What a lookup found and wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheOutcome {
    /// Tokens read from the cache (the longest cached prefix).
    pub read: u64,
    /// Tokens written with a five-minute lifetime (Anthropic only reports writes).
    pub written_5m: u64,
    /// Tokens written with a one-hour lifetime.
    pub written_1h: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The wave that wrote it: visible from the next wave on.
    wave: u64,
    expires: u64,
}

/// The caches of one emulator: entries, the simulated clock and the wave counter.
#[derive(Debug)]
pub struct CacheState {
    config: CacheConfig,
    entries: HashMap<u64, Entry>,
    /// Simulated seconds.
    clock: u64,
    wave: u64,
    in_wave: usize,
    rng: u64,
}

impl CacheState {
    /// Empty caches at simulated time 0.
    pub fn new(config: CacheConfig) -> Self {
        let rng = config.seed ^ 0xCA_C4E5;
        Self {
            config,
            entries: HashMap::new(),
            clock: 0,
            wave: 0,
            in_wave: 0,
            rng,
        }
    }

    /// The simulated clock, in seconds.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// A new batch starts: its first request opens a new wave.
    pub fn start_batch(&mut self) {
        if self.in_wave > 0 {
            self.next_wave();
        }
    }

    /// Moves the simulated clock on without running anything (idle time).
    pub fn advance(&mut self, seconds: u64) {
        self.clock += seconds;
    }

    fn next_wave(&mut self) {
        self.wave += 1;
        self.in_wave = 0;
        self.clock += self.config.wave_seconds;
    }

    fn random_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One request's turn: reads the longest visible, live prefix among `prefixes`
    /// (unless the seeded miss strikes), then writes or refreshes every prefix, longest
    /// last. `keyed` is false for OpenAI requests without `prompt_cache_key`.
    ///
    /// `prefixes` must be in increasing length. Written tokens are the tokens past the
    /// read prefix up to the longest prefix, each span counted under the lifetime of
    /// the prefix it ends.
    pub fn lookup(&mut self, prefixes: &[Prefix], keyed: bool) -> CacheOutcome {
        if self.in_wave >= self.config.wave_size.max(1) {
            self.next_wave();
        }
        self.in_wave += 1;
        let rate = if keyed {
            self.config.miss_rate
        } else {
            self.config.unkeyed_miss_rate
        };
        let missed = !prefixes.is_empty() && self.random_unit() < rate;
        let (wave, clock) = (self.wave, self.clock);
        let hit = prefixes
            .iter()
            .rev()
            .find(|p| {
                !missed
                    && self
                        .entries
                        .get(&p.hash)
                        .is_some_and(|e| e.wave < wave && e.expires > clock)
            })
            .map_or(0, |p| p.tokens);
        let mut outcome = CacheOutcome {
            read: hit,
            ..CacheOutcome::default()
        };
        let mut covered = hit;
        for prefix in prefixes {
            let entry = self
                .entries
                .entry(prefix.hash)
                .or_insert(Entry { wave, expires: 0 });
            if entry.expires <= clock {
                // Expired entries are written anew.
                entry.wave = wave;
            }
            entry.expires = entry.expires.max(clock + prefix.ttl_s);
            if prefix.tokens > covered {
                let span = prefix.tokens - covered;
                if prefix.ttl_s >= ONE_HOUR_S {
                    outcome.written_1h += span;
                } else {
                    outcome.written_5m += span;
                }
                covered = prefix.tokens;
            }
        }
        outcome
    }
}

/// Anthropic's two cache lifetimes, in seconds.
pub const FIVE_MINUTES_S: u64 = 300;
/// The one-hour lifetime (`"ttl": "1h"`).
pub const ONE_HOUR_S: u64 = 3600;

/// Hashes token prefixes: `start` from the provider and model, then every token.
#[derive(Debug, Clone, Copy)]
pub struct PrefixHasher(u64);

impl PrefixHasher {
    /// A hash for prefixes of prompts sent to `model` through `api`.
    pub fn new(api: Api, model: &str) -> Self {
        let mut hasher = Self(0xCBF2_9CE4_8422_2325 ^ api as u64);
        for b in model.bytes() {
            hasher.push(u32::from(b));
        }
        hasher.push(u32::MAX);
        hasher
    }

    /// Adds one token.
    pub fn push(&mut self, token: u32) {
        self.0 = (self.0 ^ u64::from(token)).wrapping_mul(0x0000_0100_0000_01B3);
        self.0 ^= self.0 >> 29;
    }

    /// The hash of the tokens so far.
    pub fn hash(&self) -> u64 {
        self.0
    }
}

/// The prefixes an automatic cache (OpenAI, Google) keeps of `tokens`: every
/// `min + k·PREFIX_STEP` tokens long, up to the whole prompt.
pub fn automatic_prefixes(
    api: Api,
    model: &str,
    tokens: &[u32],
    min: u64,
    ttl_s: u64,
) -> Vec<Prefix> {
    let mut hasher = PrefixHasher::new(api, model);
    let mut out = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        hasher.push(*token);
        let length = i as u64 + 1;
        if length >= min && (length - min).is_multiple_of(PREFIX_STEP) {
            out.push(Prefix {
                tokens: length,
                hash: hasher.hash(),
                ttl_s,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(miss_rate: f64) -> CacheConfig {
        CacheConfig {
            miss_rate,
            unkeyed_miss_rate: miss_rate,
            wave_size: 2,
            wave_seconds: 10,
            seed: 1,
        }
    }

    fn prefix(tokens: u64, hash: u64, ttl_s: u64) -> Prefix {
        Prefix {
            tokens,
            hash,
            ttl_s,
        }
    }

    #[test]
    fn writes_are_visible_from_the_next_wave_and_expire() {
        let mut cache = CacheState::new(config(0.0));
        let p = [prefix(1000, 1, 300), prefix(2000, 2, 300)];
        // Wave 0: both requests write, neither reads.
        assert_eq!(cache.lookup(&p, true).read, 0);
        assert_eq!(cache.lookup(&p, true).read, 0);
        // Wave 1 reads the longest.
        let hit = cache.lookup(&p, true);
        assert_eq!(hit.read, 2000);
        assert_eq!(hit.written_5m, 0);
        // Past the TTL (no use in between) it is written again.
        cache.advance(400);
        cache.start_batch();
        let again = cache.lookup(&p, true);
        assert_eq!(again.read, 0);
        assert_eq!(again.written_5m, 2000);
    }

    #[test]
    fn written_spans_take_the_lifetime_of_their_prefix() {
        let mut cache = CacheState::new(config(0.0));
        let p = [prefix(1000, 1, ONE_HOUR_S), prefix(1500, 2, FIVE_MINUTES_S)];
        let first = cache.lookup(&p, true);
        assert_eq!((first.written_1h, first.written_5m), (1000, 500));
        cache.start_batch();
        cache.advance(1000);
        // The 5-minute entry died, the hour one lives.
        let later = cache.lookup(&p, true);
        assert_eq!(later.read, 1000);
        assert_eq!((later.written_1h, later.written_5m), (0, 500));
    }

    #[test]
    fn misses_are_seeded() {
        let run = || {
            let mut cache = CacheState::new(config(0.5));
            let p = [prefix(1024, 9, 600)];
            (0..40)
                .map(|_| cache.lookup(&p, true).read)
                .collect::<Vec<_>>()
        };
        let reads = run();
        assert_eq!(reads, run());
        let hits = reads.iter().filter(|r| **r > 0).count();
        assert!((5..35).contains(&hits), "{reads:?}");
    }

    #[test]
    fn automatic_prefixes_step_by_128_from_the_minimum() {
        let tokens: Vec<u32> = (0..1500).collect();
        let lengths: Vec<u64> = automatic_prefixes(Api::OpenAi, "m", &tokens, 1024, 600)
            .iter()
            .map(|p| p.tokens)
            .collect();
        assert_eq!(lengths, vec![1024, 1152, 1280, 1408]);
        let other = automatic_prefixes(Api::OpenAi, "n", &tokens, 1024, 600);
        assert_ne!(
            other[0].hash,
            automatic_prefixes(Api::OpenAi, "m", &tokens, 1024, 600)[0].hash
        );
    }
}
