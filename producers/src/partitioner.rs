//! Kafka's default key partitioner, bit-for-bit.
//!
//! The Java client places a keyed record on `to_positive(murmur2(key)) % partitions`. The
//! embedded SQLite log uses the same function, so a session id maps to the same partition
//! number in either back end, and anything that predicts a session's partition (lane
//! assignment, tests) can do so without asking the broker.
//!
//! librdkafka only agrees when its producer is configured with
//! `partitioner = murmur2_random` ([`RDKAFKA_PARTITIONER`]); its default,
//! `consistent_random`, hashes with CRC32 and would place sessions elsewhere.

/// Value for librdkafka's `partitioner` setting that makes it partition keyed records like
/// the Java client and [`partition_for_key`]; the rdkafka producer must set it.
pub const RDKAFKA_PARTITIONER: &str = "murmur2_random";

/// Seed of Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
const SEED: u32 = 0x9747_b28c;
/// Multiplier of MurmurHash2.
const M: u32 = 0x5bd1_e995;
/// Shift of MurmurHash2.
const R: u32 = 24;

/// MurmurHash2 (32-bit) exactly as `org.apache.kafka.common.utils.Utils.murmur2` computes
/// it, returned as Java's signed `int`; the basis of Kafka's key partitioning.
///
/// Java arrays hold at most `i32::MAX` bytes, so Java never sees longer keys; for longer
/// inputs the length mixed into the seed is truncated to 32 bits, as a C port would do.
#[must_use]
pub fn murmur2(data: &[u8]) -> i32 {
    // Java's `int` arithmetic is two's-complement wrapping, and `>>>` is a logical shift:
    // both are exactly u32 wrapping ops and `>>`.
    let length = data.len();
    #[allow(clippy::cast_possible_truncation)] // intended: Java mixes an int length
    let mut h: u32 = SEED ^ (length as u32);

    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    // Java's fall-through `switch (length % 4)`.
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;

    // Reinterpret the bits as Java's signed int.
    i32::from_ne_bytes(h.to_ne_bytes())
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which would overflow on
/// `i32::MIN` and map `x` and `-x` together), so a hash can index a partition.
#[must_use]
pub const fn to_positive(number: i32) -> i32 {
    number & 0x7fff_ffff
}

/// The partition Kafka's default partitioner chooses for a keyed record:
/// `to_positive(murmur2(key)) % partitions`. This is what puts a session on the same
/// partition in the embedded log and in Kafka.
///
/// `partitions` should be at least 1 (the topic catalog guarantees it); a non-positive
/// count is treated as 1, i.e. everything goes to partition 0, rather than panicking.
#[must_use]
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    to_positive(murmur2(key)) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reinterprets an unsigned hex literal as the signed Java int the tables are written in.
    fn java_int(bits: u32) -> i32 {
        i32::from_ne_bytes(bits.to_ne_bytes())
    }

    #[test]
    fn matches_librdkafka_java_vectors() {
        // librdkafka src/rdmurmur2.c, `unittest_murmur2`, array `java_murmur2_results`
        // (values produced by the Java client). The keys there are pointer offsets into two
        // strings: "1234"+1.."1234"+3 and "PreAmble…"+1.."PreAmble…"+3, so e.g. 0x4a62b377
        // is the hash of "reAmbleWillBeRemoved,ThePrePartThatIs" (not of "reamble"), and
        // "PreAmble…"+2 hashes to 0xe0e4e09e (a quoted 0xe0e3b2ad for "eamble" matches
        // neither the Java algorithm nor librdkafka's table). Cross-checked against the
        // independent Java UtilsTest vectors below.
        let vectors: &[(&str, u32)] = &[
            ("kafka", 0xd067_cf64),
            ("giberish123456789", 0x8f55_2b0c),
            ("1234", 0x9fc9_7b14),
            ("234", 0xe7c0_09ca),
            ("34", 0x8739_30da),
            ("4", 0x5a4b_5ca1),
            ("PreAmbleWillBeRemoved,ThePrePartThatIs", 0x7842_4f1c),
            ("reAmbleWillBeRemoved,ThePrePartThatIs", 0x4a62_b377),
            ("eAmbleWillBeRemoved,ThePrePartThatIs", 0xe0e4_e09e),
            ("AmbleWillBeRemoved,ThePrePartThatIs", 0x62b8_b43f),
            ("", 0x106e_08d9),
        ];
        for &(key, expected) in vectors {
            assert_eq!(
                murmur2(key.as_bytes()),
                java_int(expected),
                "murmur2({key:?}) = {:#010x}, expected {expected:#010x}",
                murmur2(key.as_bytes())
            );
        }
    }

    #[test]
    fn matches_kafka_utils_test_vectors() {
        // org.apache.kafka.common.utils.UtilsTest#testMurmur2 (Java signed ints).
        let vectors: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for &(key, expected) in vectors {
            assert_eq!(
                murmur2(key),
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn high_bytes_are_unsigned() {
        // Java masks each byte with 0xff; a sign-extending port would differ here.
        let key = [0xffu8, 0x80, 0x7f, 0x00, 0xfe, 0x81, 0x01];
        let h = murmur2(&key);
        assert_eq!(h, murmur2(&key), "deterministic");
        assert_ne!(h, murmur2(&[0x7f, 0x80, 0x7f, 0x00, 0xfe, 0x81, 0x01]));
    }

    #[test]
    fn to_positive_clears_only_the_sign_bit() {
        assert_eq!(to_positive(0), 0);
        assert_eq!(to_positive(5), 5);
        assert_eq!(to_positive(-1), i32::MAX);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(java_int(0xd067_cf64)), 0x5067_cf64);
    }

    #[test]
    fn partitions_follow_the_java_formula() {
        for key in ["kafka", "session-1", "sales-team_01", "", "x"] {
            for partitions in [1, 3, 12, 100] {
                let p = partition_for_key(key.as_bytes(), partitions);
                assert!((0..partitions).contains(&p), "{key} -> {p} of {partitions}");
                assert_eq!(p, to_positive(murmur2(key.as_bytes())) % partitions);
            }
        }
        // 0x5067cf64 = 1349963620; 1349963620 % 12 = 4.
        assert_eq!(partition_for_key(b"kafka", 12), 4);
        assert_eq!(partition_for_key(b"anything", 1), 0);
    }

    #[test]
    fn non_positive_partition_counts_do_not_panic() {
        assert_eq!(partition_for_key(b"kafka", 0), 0);
        assert_eq!(partition_for_key(b"kafka", -5), 0);
    }
}
