//! Checks on a name's bytes, eight at a time: the kernel programs run them
//! (`monitor-ebpf/src/allowed.rs`), where a loop over bytes cost the
//! verifier a walk per byte; here they are tested on the host.

const ONES: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// 0x80 in each byte of `x` that is zero, 0 in the others (exact: the
/// additions cannot carry from one byte into the next).
#[inline(always)]
pub const fn zero_bytes(x: u64) -> u64 {
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// The bytes of a word that count: the first `valid` (more than 8: all).
#[inline(always)]
const fn valid_mask(valid: u64) -> u64 {
    if valid >= 8 {
        u64::MAX
    } else {
        (1u64 << (valid * 8)) - 1
    }
}

/// One word of a name (its bytes in memory order, read little-endian), of
/// which the first `valid` bytes count (more than 8: all). `carry` says
/// whether the previous word ended with `/` (0x80 in its lowest byte, as
/// returned). Returns whether the word holds `//` or `/.` (counting a `/`
/// that ended the previous word), and the carry for the next word.
#[inline(always)]
pub const fn slash_pairs(word: u64, valid: u64, carry: u64) -> (bool, u64) {
    let mask = valid_mask(valid);
    let slash = zero_bytes(word ^ (ONES * b'/' as u64)) & mask;
    let dot = zero_bytes(word ^ (ONES * b'.' as u64)) & mask;
    let after_slash = (slash << 8) | carry;
    (after_slash & (slash | dot) != 0, slash >> 56)
}

/// As [`slash_pairs`], for `..`: whether the word holds two dots in a row
/// (counting a `.` that ended the previous word), and the carry.
#[inline(always)]
pub const fn dot_pairs(word: u64, valid: u64, carry: u64) -> (bool, u64) {
    let dot = zero_bytes(word ^ (ONES * b'.' as u64)) & valid_mask(valid);
    (((dot << 8) | carry) & dot != 0, dot >> 56)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// The name checked as the kernel does, word by word, with `pairs`.
    fn word_by_word(name: &[u8], pairs: fn(u64, u64, u64) -> (bool, u64)) -> bool {
        let mut padded: Vec<u8> = name.to_vec();
        // What lies past the name is left from earlier ones: anything.
        padded.extend_from_slice(b"//..//..");
        let mut carry = 0;
        for start in (0..name.len()).step_by(8) {
            let word = u64::from_le_bytes(padded[start..start + 8].try_into().unwrap());
            let (found, next) = pairs(word, (name.len() - start) as u64, carry);
            if found {
                return true;
            }
            carry = next;
        }
        false
    }

    fn has_slash_pair(name: &[u8]) -> bool {
        word_by_word(name, slash_pairs)
    }

    fn has_dot_pair(name: &[u8]) -> bool {
        word_by_word(name, dot_pairs)
    }

    fn bytewise_dots(name: &[u8]) -> bool {
        name.windows(2).any(|w| w == b"..")
    }

    fn bytewise(name: &[u8]) -> bool {
        name.windows(2)
            .any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'))
    }

    #[test]
    fn zero_bytes_marks_exactly_the_zero_bytes() {
        assert_eq!(zero_bytes(0), 0x8080_8080_8080_8080);
        assert_eq!(zero_bytes(u64::MAX), 0);
        assert_eq!(zero_bytes(0x0100_ff00_8000_0001), 0x0080_0080_0080_8000);
    }

    #[test]
    fn pairs_are_found_within_and_across_words() {
        for name in [
            &b"/usr//include/x.h"[..],
            b"/usr/./x",
            b"/usr/include/.hidden",
            b"/usr/../etc/shadow",
            b"/usr/inc/../../etc",
            b"/abcdef//x",
            b"/abcdef/.x",
            b"/abcdefg/.x",
            b"/usr/include/",
            b"//",
        ] {
            assert_eq!(has_slash_pair(name), bytewise(name), "{name:?}");
        }
        assert!(has_slash_pair(b"/abcdef//x"), "`//` across two words");
        assert!(has_slash_pair(b"/abcdef/.x"), "`/.` across two words");
    }

    #[test]
    fn plain_names_pass_whatever_follows_them() {
        for name in [
            &b"/usr/include/x86_64-linux-gnu/c++/12/bits/c++config.h"[..],
            b"/usr/include/x.h",
            b"/usr/include/a..b",
            b"/usr/include/x.",
            b"/usr/include/x/",
            b"/abcdef/",
            b"/",
        ] {
            assert!(!has_slash_pair(name), "{name:?}");
            assert_eq!(has_slash_pair(name), bytewise(name), "{name:?}");
        }
    }

    #[test]
    fn every_short_name_agrees_with_a_byte_by_byte_check() {
        let alphabet = [b'/', b'.', b'a'];
        for len in 1..=10u32 {
            for code in 0..3u32.pow(len) {
                let name: Vec<u8> = (0..len)
                    .map(|i| alphabet[(code / 3u32.pow(i) % 3) as usize])
                    .collect();
                assert_eq!(has_slash_pair(&name), bytewise(&name), "{name:?}");
                assert_eq!(has_dot_pair(&name), bytewise_dots(&name), "{name:?}");
            }
        }
    }

    #[test]
    fn dot_pairs_are_found_within_and_across_words_and_nowhere_else() {
        for name in [
            &b"a/../b"[..],
            b"..",
            b"abcdefg..",
            b"abcdefgh..",
            b"abcdefghijklmno..",
        ] {
            assert!(has_dot_pair(name), "{name:?}");
        }
        for name in [
            &b"a/./b.h"[..],
            b".",
            b"abcdefg.",
            b"a.b.c.d.e.f.g.h.i",
            b"",
        ] {
            assert!(!has_dot_pair(name), "{name:?}");
        }
    }
}
