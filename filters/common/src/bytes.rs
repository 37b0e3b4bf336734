//! Byte comparisons for the per-request path.
//!
//! `==` on byte slices calls `memcmp`, which the wasm32 C library runs one byte per loop turn,
//! and `eq_ignore_ascii_case` folds the case of every byte of both sides (about twenty machine
//! instructions per byte in V8). Header names, label values and tokens are
//! compared on every request (a cached RS256 token is several hundred bytes), so these compare
//! eight bytes at a time.

const WORD: usize = 8;

/// Whether `a` and `b` hold the same bytes.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let Some(last) = a.len().checked_sub(WORD) else {
        return a.iter().zip(b).all(|(x, y)| x == y);
    };
    // The last word overlaps the one before it where the length is not a multiple of eight.
    let (words_a, words_b) = (a.chunks_exact(WORD), b.chunks_exact(WORD));
    word(a.get(last..)) == word(b.get(last..)) && words_a.zip(words_b).all(|(x, y)| word(Some(x)) == word(Some(y)))
}

/// Whether two header names are the same without regard to ASCII case, as Envoy's lookups
/// are. Envoy hands every name over in lower case and the filters look names up in lower
/// case (configured names are lower-cased when compiled), so the exact comparison answers nearly always; case is folded only where it does not.
pub fn same_name(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (equal(a, b) || a.eq_ignore_ascii_case(b))
}

fn word(bytes: Option<&[u8]>) -> u64 {
    u64::from_ne_bytes(bytes.and_then(|bytes| <[u8; WORD]>::try_from(bytes).ok()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_compares_every_byte() {
        assert!(equal(b"", b""));
        assert!(equal(b"GET", b"GET"));
        assert!(!equal(b"GET", b"GEX"));
        assert!(equal(b"abcdefgh", b"abcdefgh"));
        assert!(equal(b"abcdefgh.ijk", b"abcdefgh.ijk"));
        assert!(!equal(b"abcdefgh.ijk", b"abcdefgh.ijl"), "in the part after the last whole word");
        assert!(!equal(b"abcdefgX.ijk", b"abcdefgh.ijk"), "in a whole word");
        assert!(!equal(b"abcdefgh", b"abcdefgh."), "a prefix");
        let long = vec![b'x'; 700];
        for position in [0, 7, 8, 350, 692, 699] {
            let mut other = long.clone();
            other[position] = b'y';
            assert!(!equal(&long, &other), "differs at {position}");
        }
        assert!(equal(&long, &long.clone()));
    }

    #[test]
    fn names_compare_in_any_case() {
        assert!(same_name(b"x-gateway-consumer", b"x-gateway-consumer"));
        assert!(same_name(b"X-Gateway-Consumer", b"x-gateway-consumer"));
        assert!(same_name(b":path", b":PATH"));
        assert!(!same_name(b":path", b":pat"));
        assert!(!same_name(b"x-key-a", b"x-key-b"));
        assert!(!same_name(b"x-gateway-consumer", b"x-gateway-consumes"));
    }
}
