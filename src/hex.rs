//! Ids in lower-case hex: request ids, trace and span ids, job ids.

/// Lower-case hex of `n`'s last `out.len()` digits, into `out` (no allocation).
pub(crate) fn hex(out: &mut [u8], mut n: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
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
    }
}
