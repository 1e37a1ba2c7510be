//! Order keys: what an event is kept in order with across processes.
//!
//! A key decides a partition in a table that every process and every
//! later build reads, so it must not change with the build: SipHash-1-3
//! with fixed keys, not `std`'s `DefaultHasher`, whose algorithm may
//! change between Rust releases.

use super::Meta;
use std::hash::{Hash, Hasher};

/// The key `#[event(key = field)]` gives: a stable hash of the field.
#[doc(hidden)]
pub fn order_key_of<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    value.hash(&mut hasher);
    hasher.finish()
}

/// The default key: the correlation id's low half, which is random in a
/// UUIDv7, so independent chains spread evenly.
pub(crate) fn of_correlation(meta: &Meta) -> u64 {
    meta.correlation_id.as_u64_pair().1
}

#[cfg(test)]
mod tests {
    use super::order_key_of;

    /// Pinned values: a change here moves events between partitions of
    /// every existing outbox, so it must never happen silently.
    #[test]
    fn keys_are_the_same_in_every_build() {
        assert_eq!(order_key_of(&42u64), 8_880_661_182_590_738_257);
        assert_eq!(order_key_of("order-42"), 6_293_875_150_500_586_733);
        // A `String` field and a `&str` of the same text share a key.
        assert_eq!(
            order_key_of(&String::from("order-42")),
            order_key_of("order-42")
        );
    }

    #[test]
    fn sequential_and_aligned_ids_spread() {
        for step in [1u64, 8, 64, 1024] {
            let mut buckets = [0u32; 8];
            for i in 0..8000u64 {
                buckets[(order_key_of(&(i * step)) % 8) as usize] += 1;
            }
            assert!(
                buckets.iter().all(|&n| (800..1200).contains(&n)),
                "step {step}: {buckets:?}"
            );
        }
    }
}
