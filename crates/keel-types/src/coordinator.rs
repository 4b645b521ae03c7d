//! Which partition of a coordinator's internal topic (`__consumer_offsets`,
//! `__transaction_state`) owns a key: the same function as Kafka's, so a
//! client that computes it agrees with us.

/// The partition that holds `key` (a group id or a transactional id):
/// `abs(key.hashCode()) % partitions`, with Java's `String.hashCode` over
/// UTF-16 code units and Kafka's `Utils.abs` (which maps `i32::MIN` to 0).
pub fn partition_for(key: &str, partitions: i32) -> i32 {
    assert!(
        partitions > 0,
        "coordinator topic partitions {partitions} <= 0"
    );
    let hash = java_string_hash(key);
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions
}

/// Java's `String.hashCode`.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_for_matches_java_hash_code() {
        // Values of Java's "...".hashCode().
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("test-group"), 627_841_412);
        assert_eq!(java_string_hash("my-group"), -1_906_497_762);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        // 'ÿ' (U+00FF) and '€' (U+20AC): 255 * 31 + 8364.
        assert_eq!(java_string_hash("ÿ€"), 16_269);
        // A character outside the BMP hashes as its two UTF-16 surrogates.
        assert_eq!(java_string_hash("😀"), 1_772_899);
        assert_eq!(partition_for("", 50), 0);
        assert_eq!(partition_for("test-group", 50), 12);
        assert_eq!(partition_for("my-group", 50), 12);
        assert_eq!(partition_for("ÿ€", 50), 19);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE; Utils.abs maps it to 0.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
    }
}
