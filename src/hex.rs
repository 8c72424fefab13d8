//! Ids in lower-case hex: request ids, trace and span ids, job ids.

/// The two hex digits of every byte: one lookup per byte instead of a shift
/// and a lookup per digit (a request id and a traceparent cost 380
/// instructions the other way).
const PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// Lower-case hex of `n`'s last `out.len()` digits, into `out` (no allocation).
pub(crate) fn hex(out: &mut [u8], n: u128) {
    let bytes = n.to_be_bytes();
    let digits = out.len().min(32);
    let (zeros, out) = out.split_at_mut(out.len() - digits);
    zeros.fill(b'0');
    let (odd, even) = out.split_at_mut(digits % 2);
    if let Some(first) = odd.first_mut() {
        *first = PAIRS[usize::from(bytes[15 - even.len() / 2])][1];
    }
    let from = 16 - even.len() / 2;
    for (pair, &b) in even.chunks_exact_mut(2).zip(&bytes[from..]) {
        pair.copy_from_slice(&PAIRS[usize::from(b)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_fills_its_buffer_from_the_right() {
        let mut four = [0u8; 4];
        hex(&mut four, 0x1abcd);
        assert_eq!(&four, b"abcd");
        let mut three = [0u8; 3];
        hex(&mut three, 0x1abcd);
        assert_eq!(&three, b"bcd");
    }

    #[test]
    fn hex_matches_the_formatter_at_every_length() {
        for n in [
            0u128,
            1,
            0xf,
            0x10,
            0xdead_beef,
            u128::MAX,
            u128::MAX / 3,
            fastrand::u128(..),
        ] {
            let full = format!("{n:032x}");
            for len in 0..=32 {
                let mut out = vec![b'?'; len];
                hex(&mut out, n);
                assert_eq!(
                    std::str::from_utf8(&out).unwrap(),
                    &full[32 - len..],
                    "{n:x} at {len}"
                );
            }
            let mut wide = [b'?'; 34];
            hex(&mut wide, n);
            assert_eq!(&wide[..2], b"00", "more digits than a u128 has are zeros");
            assert_eq!(std::str::from_utf8(&wide[2..]).unwrap(), full);
        }
    }
}
