//! Message framing and byte-exact verification.
//!
//! Every message is `size` bytes:
//!
//! | bytes        | content                                              |
//! |--------------|------------------------------------------------------|
//! | `0..4`       | connection id, `u32` little endian                   |
//! | `4..12`      | sequence number, `u64` little endian                 |
//! | `12..size`   | `BASE[i] ^ mix(conn, seq)`                           |
//!
//! `BASE` is one pseudo-random byte string shared by all connections (so memory does not
//! grow with the connection count) and `mix` is a byte derived from both the connection id
//! and the sequence number, so a message echoed on the wrong connection or out of order fails
//! in its header, and a corrupted body byte fails at its exact offset.
//!
//! Because TCP keeps order, the reader always knows which message (and which offset in it) the
//! next received byte belongs to, so verification is streaming: bytes are checked as they
//! arrive, in whatever chunks the kernel hands over, without buffering whole messages. The same
//! property lets the writer generate any message slice on demand, so large messages never need
//! a message-sized buffer.

use std::io;

use thiserror::Error;

/// Bytes taken by the header (connection id + sequence number); the minimum message size.
pub const HEADER_BYTES: usize = 12;

/// Seed of the shared body pattern. Fixed so that runs are reproducible byte for byte.
const PATTERN_SEED: u64 = 0x0ec4_0be7_c400_1e55;

/// Why a connection stopped before the deadline. The variant is the error *kind* counted in
/// reports (see [`ErrorKind`]).
#[derive(Debug, Error)]
pub enum ConnError {
    /// A socket error (reset, broken pipe, ...).
    #[error("connection {conn}: I/O error: {source}")]
    Io {
        /// Connection id.
        conn: u32,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An echoed byte differs from the byte that was sent at that position.
    #[error(
        "connection {conn}: mismatch in message seq {seq} at byte offset {offset}: \
         expected 0x{expected:02x}, got 0x{got:02x}"
    )]
    Mismatch {
        /// Connection id.
        conn: u32,
        /// Sequence number of the message being verified.
        seq: u64,
        /// Byte offset inside that message.
        offset: usize,
        /// The byte that was sent.
        expected: u8,
        /// The byte that came back.
        got: u8,
    },
    /// The server closed the connection at a message boundary.
    #[error(
        "connection {conn}: unexpected EOF: server closed the connection with {in_flight} \
         message(s) outstanding (next expected seq {seq})"
    )]
    Eof {
        /// Connection id.
        conn: u32,
        /// Next sequence number that was expected.
        seq: u64,
        /// Messages sent but not (fully) echoed.
        in_flight: u64,
    },
    /// The server closed the connection in the middle of a message.
    #[error(
        "connection {conn}: short read: server closed the connection after {got} of {size} \
         bytes of message seq {seq}"
    )]
    Short {
        /// Connection id.
        conn: u32,
        /// Sequence number of the truncated message.
        seq: u64,
        /// Bytes of it that arrived.
        got: usize,
        /// Message size.
        size: usize,
    },
    /// The server sent more bytes than the client had sent.
    #[error(
        "connection {conn}: server sent {bytes} byte(s) that were never sent \
         (from message seq {seq} offset {offset})"
    )]
    Unsolicited {
        /// Connection id.
        conn: u32,
        /// Sequence number the extra bytes would belong to.
        seq: u64,
        /// Offset inside that message.
        offset: usize,
        /// How many extra bytes arrived in the read that exposed them.
        bytes: usize,
    },
}

/// Error kinds, as counted in reports and the JSON `errors` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// [`ConnError::Io`]
    Io,
    /// [`ConnError::Mismatch`]
    Mismatch,
    /// [`ConnError::Eof`]
    Eof,
    /// [`ConnError::Short`]
    Short,
    /// [`ConnError::Unsolicited`]
    Unsolicited,
}

impl ErrorKind {
    /// All kinds, in report order.
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Io,
        ErrorKind::Mismatch,
        ErrorKind::Eof,
        ErrorKind::Short,
        ErrorKind::Unsolicited,
    ];

    /// Stable lower-case name used in text and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::Eof => "eof",
            ErrorKind::Short => "short",
            ErrorKind::Unsolicited => "unsolicited",
        }
    }
}

impl ConnError {
    /// The kind this error is counted under.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnError::Io { .. } => ErrorKind::Io,
            ConnError::Mismatch { .. } => ErrorKind::Mismatch,
            ConnError::Eof { .. } => ErrorKind::Eof,
            ConnError::Short { .. } => ErrorKind::Short,
            ConnError::Unsolicited { .. } => ErrorKind::Unsolicited,
        }
    }
}

/// First differing byte found by [`Pattern::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteMismatch {
    /// Offset inside the message.
    pub offset: usize,
    /// Byte that was sent.
    pub expected: u8,
    /// Byte that was received.
    pub got: u8,
}

/// SplitMix64: a tiny, well-mixed hash used for the pattern and the per-message mix byte.
#[inline]
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The deterministic content of every message of one size.
#[derive(Debug)]
pub struct Pattern {
    base: Box<[u8]>,
}

impl Pattern {
    /// Pattern for messages of `size` bytes (`size >= HEADER_BYTES`).
    pub fn new(size: usize) -> Pattern {
        assert!(size >= HEADER_BYTES, "message size below header size");
        let mut base = vec![0u8; size].into_boxed_slice();
        let mut state = PATTERN_SEED;
        for chunk in base.chunks_mut(8) {
            state = splitmix64(state);
            let bytes = state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Pattern { base }
    }

    /// Message size in bytes.
    pub fn size(&self) -> usize {
        self.base.len()
    }

    /// The byte XORed into the body of message `seq` on connection `conn`.
    #[inline]
    pub fn mix(conn: u32, seq: u64) -> u8 {
        (splitmix64((u64::from(conn) << 40) ^ seq) >> 56) as u8
    }

    fn header(conn: u32, seq: u64) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[..4].copy_from_slice(&conn.to_le_bytes());
        h[4..].copy_from_slice(&seq.to_le_bytes());
        h
    }

    /// The byte at `offset` of message `seq` on connection `conn`.
    pub fn expected_byte(&self, conn: u32, seq: u64, offset: usize) -> u8 {
        if offset < HEADER_BYTES {
            Self::header(conn, seq)[offset]
        } else {
            self.base[offset] ^ Self::mix(conn, seq)
        }
    }

    /// Write bytes `offset..offset + out.len()` of message `seq` on connection `conn`.
    pub fn fill(&self, conn: u32, seq: u64, offset: usize, out: &mut [u8]) {
        debug_assert!(offset + out.len() <= self.size());
        let mut pos = offset;
        let mut out = out;
        if pos < HEADER_BYTES {
            let header = Self::header(conn, seq);
            let n = (HEADER_BYTES - pos).min(out.len());
            out[..n].copy_from_slice(&header[pos..pos + n]);
            pos += n;
            out = &mut out[n..];
        }
        if out.is_empty() {
            return;
        }
        let mix = Self::mix(conn, seq);
        let base = &self.base[pos..pos + out.len()];
        for (o, b) in out.iter_mut().zip(base) {
            *o = b ^ mix;
        }
    }

    /// Check that `got` equals bytes `offset..offset + got.len()` of message `seq` on
    /// connection `conn`; on failure return the first differing byte.
    #[inline]
    pub fn verify(
        &self,
        conn: u32,
        seq: u64,
        offset: usize,
        got: &[u8],
    ) -> Result<(), ByteMismatch> {
        debug_assert!(offset + got.len() <= self.size());
        let mut pos = offset;
        let mut got = got;
        if pos < HEADER_BYTES {
            let header = Self::header(conn, seq);
            let n = (HEADER_BYTES - pos).min(got.len());
            for (i, (&g, &e)) in got[..n].iter().zip(&header[pos..pos + n]).enumerate() {
                if g != e {
                    return Err(ByteMismatch {
                        offset: pos + i,
                        expected: e,
                        got: g,
                    });
                }
            }
            pos += n;
            got = &got[n..];
        }
        if got.is_empty() {
            return Ok(());
        }
        let mix = Self::mix(conn, seq);
        let base = &self.base[pos..pos + got.len()];
        if body_matches(base, got, mix) {
            return Ok(());
        }
        // Slow path only on failure: find the exact offset.
        for (i, (&g, &b)) in got.iter().zip(base).enumerate() {
            if g != b ^ mix {
                return Err(ByteMismatch {
                    offset: pos + i,
                    expected: b ^ mix,
                    got: g,
                });
            }
        }
        unreachable!("body_matches said mismatch but no differing byte found")
    }
}

/// Word-at-a-time comparison of `got` against `base ^ mix` (auto-vectorises).
#[inline]
fn body_matches(base: &[u8], got: &[u8], mix: u8) -> bool {
    let mix_word = u64::from_ne_bytes([mix; 8]);
    let mut acc = 0u64;
    let mut b8 = base.chunks_exact(8);
    let mut g8 = got.chunks_exact(8);
    for (b, g) in (&mut b8).zip(&mut g8) {
        let b = u64::from_ne_bytes(b.try_into().expect("8 bytes"));
        let g = u64::from_ne_bytes(g.try_into().expect("8 bytes"));
        acc |= b ^ g ^ mix_word;
    }
    let mut tail = 0u8;
    for (&b, &g) in b8.remainder().iter().zip(g8.remainder()) {
        tail |= b ^ g ^ mix;
    }
    acc == 0 && tail == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(p: &Pattern, conn: u32, seq: u64) -> Vec<u8> {
        let mut m = vec![0u8; p.size()];
        p.fill(conn, seq, 0, &mut m);
        m
    }

    #[test]
    fn header_carries_conn_and_seq() {
        let p = Pattern::new(64);
        let m = message(&p, 7, 0x0102_0304_0506_0708);
        assert_eq!(&m[..4], &7u32.to_le_bytes());
        assert_eq!(&m[4..12], &0x0102_0304_0506_0708u64.to_le_bytes());
    }

    #[test]
    fn fill_in_pieces_equals_fill_whole() {
        let p = Pattern::new(1000);
        let whole = message(&p, 3, 99);
        let mut pieces = vec![0u8; 1000];
        let mut off = 0;
        for step in [1usize, 5, 11, 17, 300, 666] {
            let end = (off + step).min(1000);
            p.fill(3, 99, off, &mut pieces[off..end]);
            off = end;
        }
        assert_eq!(off, 1000);
        assert_eq!(whole, pieces);
        for (i, &b) in whole.iter().enumerate() {
            assert_eq!(p.expected_byte(3, 99, i), b);
        }
    }

    #[test]
    fn messages_differ_by_conn_and_seq() {
        let p = Pattern::new(128);
        let a = message(&p, 1, 1);
        let b = message(&p, 1, 2);
        let c = message(&p, 2, 1);
        assert_ne!(a, b);
        assert_ne!(a, c);
        // the body differs too, not only the header (for most (conn, seq) pairs)
        let differing = (0..64u64)
            .filter(|&s| message(&p, 1, s)[12..] != message(&p, 1, s + 1)[12..])
            .count();
        assert!(differing > 60, "{differing}");
    }

    #[test]
    fn verify_accepts_exact_echo_in_any_chunking() {
        let p = Pattern::new(257);
        let m = message(&p, 5, 42);
        assert_eq!(p.verify(5, 42, 0, &m), Ok(()));
        for split in [1usize, 3, 11, 12, 13, 100, 256] {
            assert_eq!(p.verify(5, 42, 0, &m[..split]), Ok(()));
            assert_eq!(p.verify(5, 42, split, &m[split..]), Ok(()));
        }
    }

    #[test]
    fn verify_reports_exact_offset_of_every_corrupted_byte() {
        let p = Pattern::new(200);
        let m = message(&p, 9, 1234);
        for offset in 0..200 {
            let mut bad = m.clone();
            bad[offset] ^= 0x40;
            let err = p.verify(9, 1234, 0, &bad).unwrap_err();
            assert_eq!(
                err,
                ByteMismatch {
                    offset,
                    expected: m[offset],
                    got: m[offset] ^ 0x40
                }
            );
            // and when verified from a chunk starting mid-message
            if offset >= 50 {
                let err = p.verify(9, 1234, 50, &bad[50..]).unwrap_err();
                assert_eq!(err.offset, offset);
            }
        }
    }

    #[test]
    fn verify_rejects_message_of_other_connection_or_seq() {
        let p = Pattern::new(64);
        let other_conn = message(&p, 2, 10);
        assert_eq!(p.verify(1, 10, 0, &other_conn).unwrap_err().offset, 0);
        let other_seq = message(&p, 1, 11);
        assert_eq!(p.verify(1, 10, 0, &other_seq).unwrap_err().offset, 4);
    }

    #[test]
    fn error_kinds_and_messages_name_the_location() {
        let e = ConnError::Mismatch {
            conn: 3,
            seq: 17,
            offset: 40,
            expected: 0xab,
            got: 0x00,
        };
        assert_eq!(e.kind().as_str(), "mismatch");
        let s = e.to_string();
        assert!(
            s.contains("connection 3") && s.contains("seq 17") && s.contains("offset 40"),
            "{s}"
        );
        let e = ConnError::Short {
            conn: 1,
            seq: 2,
            got: 5,
            size: 64,
        };
        assert!(e.to_string().contains("after 5 of 64 bytes"));
    }
}
