//! A fixed-size, stack-only text buffer for messages written from inside
//! the allocator, where `format!` would allocate (and could recurse).

/// 512 bytes on the stack; text past that is cut.
pub struct Buf {
    bytes: [u8; 512],
    len: usize,
}

impl Buf {
    /// An empty buffer.
    pub const fn new() -> Self {
        Buf {
            bytes: [0; 512],
            len: 0,
        }
    }

    /// Appends bytes, cutting what does not fit.
    pub fn push(&mut self, s: &[u8]) -> &mut Self {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self
    }

    /// Appends a decimal number.
    pub fn push_num(&mut self, mut v: u64) -> &mut Self {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&tmp[i..])
    }

    /// Appends `0x` and a hexadecimal number.
    pub fn push_hex(&mut self, mut v: u64) -> &mut Self {
        let mut tmp = [0u8; 16];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b"0123456789abcdef"[(v & 15) as usize];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        self.push(b"0x");
        self.push(&tmp[i..])
    }

    /// Appends `v` right-aligned in a field of `width` characters.
    pub fn push_num_padded(&mut self, v: u64, width: usize) -> &mut Self {
        let mut t = Buf::new();
        t.push_num(v);
        for _ in t.len..width {
            self.push(b" ");
        }
        self.push(t.as_bytes())
    }

    /// The text so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Default for Buf {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Buf;

    #[test]
    fn numbers_and_truncation() {
        let mut b = Buf::new();
        b.push(b"a=")
            .push_num(0)
            .push(b" ")
            .push_num(18446744073709551615);
        b.push(b" ")
            .push_hex(0xdead_beef)
            .push(b"|")
            .push_num_padded(42, 5);
        assert_eq!(b.as_bytes(), b"a=0 18446744073709551615 0xdeadbeef|   42");
        let mut big = Buf::new();
        for _ in 0..100 {
            big.push(b"0123456789");
        }
        assert_eq!(big.as_bytes().len(), 512);
    }
}
