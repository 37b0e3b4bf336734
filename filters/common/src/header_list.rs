//! Every header of one map, as the host hands them over in a single call: one buffer in the
//! proxy-wasm pairs layout (a little-endian `u32` count; a `u32` name length and a `u32` value
//! length per header; then each name and each value, each followed by a NUL). Looked up in
//! place, without copying names or values out: one call and one buffer instead of a call and
//! a buffer per header (in Envoy each read that returns data also calls back into the VM to
//! allocate it, which is most of what a read costs).

use crate::bytes::same_name;

/// A validated buffer of header pairs, with where each name and value lies in it.
pub struct HeaderList {
    bytes: Vec<u8>,
    /// Found once when the buffer is validated, so a lookup compares names and re-reads no
    /// lengths (a request's stages look up several headers in a list of ten or more).
    entries: Vec<Entry>,
}

/// Where one header's name and value lie in the buffer.
struct Entry {
    name_start: usize,
    name_end: usize,
    value_end: usize,
}

const WORD: usize = 4;

/// The pairs layout of no header at all (a count of zero).
pub const NO_PAIRS: [u8; WORD] = [0; WORD];

/// `pairs` in the pairs layout, as the host takes headers and metadata.
pub fn encode_pairs<V: AsRef<[u8]>>(pairs: &[(&str, V)]) -> Vec<u8> {
    let word = |length: usize| u32::try_from(length).unwrap_or(u32::MAX).to_le_bytes();
    let size = WORD + pairs.iter().map(|(name, value)| 2 * WORD + name.len() + value.as_ref().len() + 2).sum::<usize>();
    let mut wire = Vec::with_capacity(size);
    wire.extend(word(pairs.len()));
    for (name, value) in pairs {
        wire.extend(word(name.len()));
        wire.extend(word(value.as_ref().len()));
    }
    for (name, value) in pairs {
        wire.extend(name.as_bytes());
        wire.push(0);
        wire.extend(value.as_ref());
        wire.push(0);
    }
    wire
}

fn word(bytes: &[u8], at: usize) -> Option<usize> {
    let word: [u8; WORD] = bytes.get(at..at.checked_add(WORD)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

impl HeaderList {
    /// `None` when the buffer does not hold what its lengths say (the list is then not used).
    pub fn from_wire(bytes: Vec<u8>) -> Option<HeaderList> {
        let count = word(&bytes, 0)?;
        let sizes_end = count.checked_mul(2 * WORD)?.checked_add(WORD)?;
        if sizes_end > bytes.len() {
            return None;
        }
        let mut entries = Vec::with_capacity(count);
        let mut data = sizes_end;
        for index in 0..count {
            let sizes = WORD + index * 2 * WORD;
            let (name_length, value_length) = (word(&bytes, sizes)?, word(&bytes, sizes + WORD)?);
            let name_end = data.checked_add(name_length)?;
            let value_end = name_end.checked_add(1)?.checked_add(value_length)?;
            // Each name and value is followed by a NUL.
            if bytes.get(name_end) != Some(&0) || bytes.get(value_end) != Some(&0) {
                return None;
            }
            entries.push(Entry { name_start: data, name_end, value_end });
            data = value_end + 1;
        }
        Some(HeaderList { bytes, entries })
    }

    /// The first value of `name` (as the host's single read returns it); names compare
    /// without regard to ASCII case, as Envoy's lookups do.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let name = name.as_bytes();
        let entry = self.entries.iter().find(|entry| {
            entry.name_end - entry.name_start == name.len()
                && self.bytes.get(entry.name_start..entry.name_end).is_some_and(|known| same_name(known, name))
        })?;
        self.bytes.get(entry.name_end + 1..entry.value_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_value_of_a_name_in_any_case() {
        let wire = encode_pairs::<&[u8]>(&[(":path", b"/a?b"), ("x-key", b"one"), ("x-key", b"two"), ("empty", b"")]);
        let list = HeaderList::from_wire(wire).unwrap();
        assert_eq!(list.get(":path"), Some(&b"/a?b"[..]));
        assert_eq!(list.get("X-Key"), Some(&b"one"[..]));
        assert_eq!(list.get("empty"), Some(&b""[..]));
        assert_eq!(list.get("absent"), None);
    }

    #[test]
    fn values_need_not_be_text() {
        let list = HeaderList::from_wire(encode_pairs::<&[u8]>(&[("x-bin", b"\xff\x00\xfe")])).unwrap();
        assert_eq!(list.get("x-bin"), Some(&b"\xff\x00\xfe"[..]));
    }

    #[test]
    fn an_empty_list_holds_nothing() {
        let list = HeaderList::from_wire(NO_PAIRS.to_vec()).unwrap();
        assert_eq!(list.get(":path"), None);
    }

    #[test]
    fn a_buffer_that_does_not_hold_what_it_says_is_refused() {
        let wire = encode_pairs::<&[u8]>(&[(":path", b"/a"), ("x-key", b"value")]);
        for cut in 0..wire.len() {
            assert!(HeaderList::from_wire(wire[..cut].to_vec()).is_none(), "cut at {cut}");
        }
        let mut no_nul = wire.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert!(HeaderList::from_wire(no_nul).is_none());
        let mut huge_count = wire;
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderList::from_wire(huge_count).is_none());
        assert!(HeaderList::from_wire(Vec::new()).is_none());
    }
}
