//! HTTP/2 control frames a client can send without limit through hyper and h2: each
//! PING and each SETTINGS frame makes the server answer (a PING ACK, a SETTINGS ACK),
//! and neither crate bounds how many. `ControlFrames` is fed the connection's
//! (decrypted) bytes below hyper (by `conn::TrackedIo`), reads the frame headers as
//! they pass, and fails the read, which closes the connection, once a client sends
//! more of them than a token bucket allows: `CONTROL_BURST` at once,
//! `CONTROL_PER_SEC` a second after that.
//! ACKs (answers to the relay's own keep-alive PINGs and SETTINGS) are not counted.

use std::io;
use std::net::IpAddr;

use tokio::time::Instant;

/// PING and SETTINGS frames (not ACKs) a client may send at once. A well-behaved
/// client sends one SETTINGS at the start and a PING every few seconds at most.
pub const CONTROL_BURST: u64 = 100;
/// How many more a second it may send after the burst.
pub const CONTROL_PER_SEC: u64 = 10;

/// The client connection preface: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;
const HEADER_LEN: usize = 9;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// Reads HTTP/2 frame headers out of the bytes a client sends and keeps the token
/// bucket of its control frames.
#[derive(Debug)]
struct FrameCounter {
    /// Bytes still to pass over before the next frame header: the preface, then
    /// each frame's payload.
    skip: usize,
    header: [u8; HEADER_LEN],
    have: usize,
    /// Thousandths of a frame left in the bucket, as of `refilled`.
    tokens: u64,
    refilled: Instant,
    /// Control frames counted, for the log line.
    seen: u64,
}

impl FrameCounter {
    fn new() -> FrameCounter {
        FrameCounter {
            skip: PREFACE_LEN,
            header: [0; HEADER_LEN],
            have: 0,
            tokens: CONTROL_BURST * 1000,
            refilled: Instant::now(),
            seen: 0,
        }
    }

    /// Passes `bytes` (the next ones the client sent); `false` once the client has
    /// sent more control frames than the bucket allows.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < HEADER_LEN {
                break;
            }
            self.have = 0;
            let h = self.header;
            self.skip = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            if (kind == PING || kind == SETTINGS) && flags & ACK == 0 && !self.take() {
                return false;
            }
        }
        true
    }

    /// One control frame out of the bucket; `false` when it is empty.
    fn take(&mut self) -> bool {
        self.seen += 1;
        let now = Instant::now();
        let elapsed =
            u64::try_from(now.duration_since(self.refilled).as_millis()).unwrap_or(u64::MAX);
        self.tokens = self
            .tokens
            .saturating_add(elapsed.saturating_mul(CONTROL_PER_SEC))
            .min(CONTROL_BURST * 1000);
        self.refilled = now;
        match self.tokens.checked_sub(1000) {
            Some(left) => {
                self.tokens = left;
                true
            }
            None => false,
        }
    }
}

/// One HTTP/2 connection's count of its client's control frames (read by
/// `conn::TrackedIo` as the bytes pass).
#[derive(Debug)]
pub struct ControlFrames {
    counter: FrameCounter,
    peer: IpAddr,
}

impl ControlFrames {
    pub fn new(peer: IpAddr) -> ControlFrames {
        ControlFrames {
            counter: FrameCounter::new(),
            peer,
        }
    }

    /// Passes the next `bytes` the client sent; an error (which closes the
    /// connection) once it has sent too many control frames.
    pub fn check(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.counter.feed(bytes) {
            return Ok(());
        }
        tracing::warn!(
            address = %self.peer,
            frames = self.counter.seen,
            "HTTP/2 client sent PING/SETTINGS frames past {CONTROL_BURST} at once and {CONTROL_PER_SEC} a second; closing its connection"
        );
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "too many HTTP/2 PING/SETTINGS frames",
        ))
    }
}

/// One HTTP/2 frame on stream 0 (`kind`, `flags`, `payload`), as a client writes it:
/// for the tests of the limits above, here and against a real listener.
#[cfg(any(test, feature = "testing"))]
pub fn encode(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::encode as frame;

    fn preface() -> Vec<u8> {
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_flood_empties_the_bucket_acks_and_other_frames_do_not() {
        let mut c = FrameCounter::new();
        assert!(c.feed(&preface()));
        // Frames whose payload holds what looks like a PING header count for nothing.
        let tricky = frame(0x0, 0, &frame(PING, 0, &[0; 8]).repeat(50));
        for _ in 0..20 {
            assert!(c.feed(&tricky));
            assert!(c.feed(&frame(PING, ACK, &[0; 8])));
            assert!(c.feed(&frame(SETTINGS, ACK, &[])));
        }
        assert_eq!(c.seen, 0);
        let ping = frame(PING, 0, &[1; 8]);
        for _ in 0..CONTROL_BURST {
            assert!(c.feed(&ping));
        }
        assert!(!c.feed(&ping), "one past the burst");
    }

    #[tokio::test(start_paused = true)]
    async fn frames_split_across_reads_are_counted_and_the_bucket_refills() {
        let mut c = FrameCounter::new();
        let mut bytes = preface();
        for _ in 0..CONTROL_BURST {
            bytes.extend(frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]));
        }
        // One byte at a time: headers and payloads cut anywhere.
        for b in &bytes {
            assert!(c.feed(std::slice::from_ref(b)));
        }
        assert_eq!(c.seen, CONTROL_BURST);
        // A second later, CONTROL_PER_SEC more are allowed, and no more.
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let ping = frame(PING, 0, &[2; 8]);
        for _ in 0..CONTROL_PER_SEC {
            assert!(c.feed(&ping));
        }
        assert!(!c.feed(&ping));
    }
}
