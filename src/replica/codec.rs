//! The copy format: zstd, then age (unless the replica is unencrypted), as one stream.
//!
//! Compression comes first because encrypted bytes do not compress. Both directions
//! are blocking code (zstd and age are `std::io`), run on a blocking thread and joined
//! to the async upload or download by a bounded channel of parts: memory stays at a
//! few parts whatever the size of the backup.
//!
//! A stream may end with a *digest trailer* (segments do, [`Sealed::digest_trailer`]):
//! a zstd skippable frame holding the SHA-256 of the compressed bytes before it. zstd
//! passes over it, so `zstd -d` still reads the stream; [`decoder_with_trailer`]
//! checks it as the bytes go by. Hashing the compressed bytes rather than what they
//! decode to makes the check of a segment cost a few percent of its decoding (the
//! frames of a busy second compress fifty to one) instead of more than the decoding.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::ReplicaError;
use crate::config::Encryption;

/// zstd level: 3 is zstd's own default, several hundred MB/s per core.
const ZSTD_LEVEL: i32 = 3;
/// Inputs from this size on (snapshots, backups, large segments) are compressed on
/// several threads.
const MULTITHREAD_FROM_BYTES: u64 = 16 << 20;
const MULTITHREAD_JOB_BYTES: u32 = 2 << 20;

/// The first word of a digest trailer (little-endian, as zstd reads it): one of the
/// sixteen skippable-frame magic numbers zstd reserves for other uses, `0x184D2A50` to
/// `0x184D2A5F`.
pub const TRAILER_MAGIC: u32 = 0x184D_2A5D;
/// A digest trailer's length: the magic, the frame's length (32, little-endian), the
/// SHA-256.
pub const TRAILER_BYTES: usize = 8 + 32;

/// What a digest trailer begins with: its magic and its length after these 8 bytes.
fn trailer_head() -> [u8; 8] {
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&TRAILER_MAGIC.to_le_bytes());
    head[4..].copy_from_slice(&32u32.to_le_bytes());
    head
}

/// The digest trailer of compressed bytes whose SHA-256 is `digest`.
fn trailer(digest: &[u8; 32]) -> [u8; TRAILER_BYTES] {
    let mut out = [0u8; TRAILER_BYTES];
    out[..8].copy_from_slice(&trailer_head());
    out[8..].copy_from_slice(digest);
    out
}

/// Size and SHA-256 of what was written (the stored object's bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub bytes: u64,
    pub sha256: String,
}

/// Cuts the encoded stream into parts of `part_size` and sends them on; hashes as it goes.
struct PartSink {
    part: Vec<u8>,
    part_size: usize,
    hasher: Sha256,
    bytes: u64,
    parts: mpsc::Sender<Bytes>,
}

impl PartSink {
    fn send(&mut self, part: Vec<u8>) -> io::Result<()> {
        self.parts
            .blocking_send(Bytes::from(part))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    fn finish(mut self) -> io::Result<Written> {
        let last = std::mem::take(&mut self.part);
        if !last.is_empty() {
            self.send(last)?;
        }
        Ok(Written {
            bytes: self.bytes,
            sha256: hex::encode(self.hasher.finalize()),
        })
    }
}

impl Write for PartSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            let room = self.part_size - self.part.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.part.extend_from_slice(now);
            rest = later;
            if self.part.len() == self.part_size {
                let full = std::mem::replace(&mut self.part, Vec::with_capacity(self.part_size));
                self.send(full)?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The layer between zstd and the parts.
enum Sealing {
    Age(age::stream::StreamWriter<PartSink>),
    Plain(PartSink),
}

impl Write for Sealing {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Sealing::Age(w) => w.write(data),
            Sealing::Plain(w) => w.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealing::Age(w) => w.flush(),
            Sealing::Plain(w) => w.flush(),
        }
    }
}

impl Sealing {
    fn finish(self) -> io::Result<PartSink> {
        match self {
            Sealing::Age(w) => w.finish(),
            Sealing::Plain(w) => Ok(w),
        }
    }
}

/// Between zstd and the sealing: hashes the compressed bytes for a digest trailer.
struct Compressed {
    sealing: Sealing,
    hasher: Option<Sha256>,
}

impl Write for Compressed {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.sealing.write(data)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&data[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sealing.flush()
    }
}

impl Compressed {
    /// Writes the digest trailer (when asked for) and ends the sealing.
    fn finish(mut self) -> io::Result<PartSink> {
        if let Some(hasher) = self.hasher.take() {
            self.sealing
                .write_all(&trailer(&hasher.finalize().into()))?;
        }
        self.sealing.finish()
    }
}

/// What [`encode`] read and wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The source file as read (compared with its verified manifest by the caller).
    pub source: Written,
    /// The stored object.
    pub stored: Written,
}

/// Hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Compresses and (for `Encryption::Age`) encrypts the file at `source` into parts of
/// `part_size` bytes sent on `parts`. Blocking: run it on a blocking thread.
pub fn encode(
    source: &Path,
    encryption: Encryption,
    recipients: &[age::x25519::Recipient],
    part_size: usize,
    parts: mpsc::Sender<Bytes>,
) -> Result<Encoded, ReplicaError> {
    let file = File::open(source).map_err(ReplicaError::io(source))?;
    let length = file.metadata().map_err(ReplicaError::io(source))?.len();
    let mut reader = HashingReader {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let sealed = Sealed {
        what: source,
        length,
        encryption,
        recipients,
        part_size,
        digest_trailer: false,
    };
    let stored = sealed.encode(parts, |out| {
        io::copy(&mut reader, out)
            .map(|_| ())
            .map_err(ReplicaError::io(source))
    })?;
    Ok(Encoded {
        source: Written {
            bytes: reader.bytes,
            sha256: hex::encode(reader.hasher.finalize()),
        },
        stored,
    })
}

/// How a stream of `length` bytes is stored: what [`encode`] does to a file, for bytes
/// that are written rather than read (a segment joined from spooled pieces).
pub struct Sealed<'a> {
    /// Named in errors.
    pub what: &'a Path,
    pub length: u64,
    pub encryption: Encryption,
    pub recipients: &'a [age::x25519::Recipient],
    pub part_size: usize,
    /// End the compressed stream with a digest trailer (see the module docs).
    pub digest_trailer: bool,
}

impl Sealed<'_> {
    /// Compresses and encrypts what `fill` writes (exactly `length` bytes) into parts
    /// sent on `parts`; answers the stored object's size and SHA-256. Blocking.
    pub fn encode(
        &self,
        parts: mpsc::Sender<Bytes>,
        fill: impl FnOnce(&mut dyn Write) -> Result<(), ReplicaError>,
    ) -> Result<Written, ReplicaError> {
        let io = ReplicaError::io(self.what);
        let sink = PartSink {
            part: Vec::with_capacity(self.part_size),
            part_size: self.part_size,
            hasher: Sha256::new(),
            bytes: 0,
            parts,
        };
        let sealing = match self.encryption {
            Encryption::None => Sealing::Plain(sink),
            Encryption::Age => {
                let encryptor = age::Encryptor::with_recipients(
                    self.recipients.iter().map(|r| r as &dyn age::Recipient),
                )
                .map_err(|e| ReplicaError::Encrypt(e.to_string()))?;
                Sealing::Age(
                    encryptor
                        .wrap_output(sink)
                        .map_err(|e| ReplicaError::Encrypt(e.to_string()))?,
                )
            }
        };
        let compressed = Compressed {
            sealing,
            hasher: self.digest_trailer.then(Sha256::new),
        };
        let compressor = || -> io::Result<zstd::stream::write::Encoder<'static, Compressed>> {
            let mut zstd = zstd::stream::write::Encoder::new(compressed, ZSTD_LEVEL)?;
            // Known in advance, the size lets zstd fit its window (and so its memory)
            // to a small input; its worker threads pay off only on a large one, and
            // each holds buffers of several MB.
            zstd.set_pledged_src_size(Some(self.length))?;
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
            if workers > 1 && self.length >= MULTITHREAD_FROM_BYTES {
                zstd.multithread(workers as u32)?;
                // Each job's input and output are buffered; zstd's default job (8 MiB
                // at this level) makes that about 70 MB with two workers.
                zstd.set_parameter(zstd::stream::raw::CParameter::JobSize(
                    MULTITHREAD_JOB_BYTES,
                ))?;
            }
            Ok(zstd)
        };
        let mut zstd = compressor().map_err(ReplicaError::io(self.what))?;
        fill(&mut zstd)?;
        let finished = || -> io::Result<Written> { zstd.finish()?.finish()?.finish() };
        finished().map_err(io)
    }
}

/// Reads the stored bytes arriving on a channel (the download), one part at a time.
pub struct PartReader {
    parts: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl PartReader {
    pub fn new(parts: mpsc::Receiver<io::Result<Bytes>>) -> PartReader {
        PartReader {
            parts,
            current: Bytes::new(),
        }
    }
}

impl Read for PartReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.parts.blocking_recv() {
                Some(Ok(part)) => self.current = part,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Decrypts (with `identities`) and decompresses `stored` into `out`; answers the
/// number of bytes written. Blocking.
pub fn decode(
    stored: impl Read,
    encryption: Encryption,
    identities: &[age::x25519::Identity],
    out: &mut impl Write,
) -> Result<u64, ReplicaError> {
    let mut plain = decoder(stored, encryption, identities)?;
    io::copy(&mut plain, out).map_err(|e| ReplicaError::Decrypt(format!("{e}")))
}

/// Whether the compressed stream ended with a digest trailer that matched. A trailer
/// that does not match is an error of the read itself, at the end of the stream.
#[derive(Debug, Clone, Default)]
pub struct TrailerSeen(Arc<AtomicU8>);

const NOT_AT_END: u8 = 0;
const NO_TRAILER: u8 = 1;
const TRAILER_MATCHED: u8 = 2;

impl TrailerSeen {
    /// True once the whole stream was read and its digest trailer matched.
    pub fn matched(&self) -> bool {
        self.0.load(Ordering::Acquire) == TRAILER_MATCHED
    }
}

/// Passes the compressed bytes on to zstd and hashes them, [`TRAILER_BYTES`] behind,
/// so that at the end the last bytes held back are the trailer and the digest is of
/// everything before it.
struct TrailerCheck<R> {
    inner: R,
    hasher: Sha256,
    /// The last bytes read, up to [`TRAILER_BYTES`], not hashed yet.
    tail: Vec<u8>,
    seen: TrailerSeen,
}

impl<R: Read> TrailerCheck<R> {
    fn at_end(&mut self) -> io::Result<()> {
        let is_trailer = self.tail.len() == TRAILER_BYTES && self.tail[..8] == trailer_head();
        if !is_trailer {
            self.seen.0.store(NO_TRAILER, Ordering::Release);
            return Ok(());
        }
        let digest = std::mem::take(&mut self.hasher).finalize();
        if digest[..] != self.tail[8..] {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the compressed bytes' SHA-256 is {}, their trailer says {}",
                    hex::encode(digest),
                    hex::encode(&self.tail[8..])
                ),
            ));
        }
        self.seen.0.store(TRAILER_MATCHED, Ordering::Release);
        Ok(())
    }
}

impl<R: Read> Read for TrailerCheck<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            if !buf.is_empty() && self.seen.0.load(Ordering::Acquire) == NOT_AT_END {
                self.at_end()?;
            }
            return Ok(0);
        }
        let new = &buf[..n];
        // Of the held bytes and the new ones, all but the last TRAILER_BYTES are
        // surely not the trailer.
        let keep_new = new.len().min(TRAILER_BYTES);
        let release_held = (self.tail.len() + new.len()).saturating_sub(TRAILER_BYTES);
        let from_held = release_held.min(self.tail.len());
        self.hasher.update(&self.tail[..from_held]);
        self.tail.drain(..from_held);
        self.hasher.update(&new[..new.len() - keep_new]);
        self.tail.extend_from_slice(&new[new.len() - keep_new..]);
        Ok(n)
    }
}

/// `stored` decrypted (with `identities`) and decompressed, as it is read. Blocking.
pub fn decoder<'a>(
    stored: impl Read + 'a,
    encryption: Encryption,
    identities: &[age::x25519::Identity],
) -> Result<Box<dyn Read + 'a>, ReplicaError> {
    decompressed(decrypted(stored, encryption, identities)?)
}

/// [`decoder`] for a stream that should end with a digest trailer (a segment's): also
/// answers whether it did and the trailer matched, known once it was read to the end.
pub fn decoder_with_trailer<'a>(
    stored: impl Read + 'a,
    encryption: Encryption,
    identities: &[age::x25519::Identity],
) -> Result<(Box<dyn Read + 'a>, TrailerSeen), ReplicaError> {
    let seen = TrailerSeen::default();
    let checked = TrailerCheck {
        inner: decrypted(stored, encryption, identities)?,
        hasher: Sha256::new(),
        tail: Vec::with_capacity(2 * TRAILER_BYTES),
        seen: seen.clone(),
    };
    Ok((decompressed(checked)?, seen))
}

/// `stored` decrypted: the zstd stream.
fn decrypted<'a>(
    stored: impl Read + 'a,
    encryption: Encryption,
    identities: &[age::x25519::Identity],
) -> Result<Box<dyn Read + 'a>, ReplicaError> {
    let stored = BufReader::with_capacity(1 << 20, stored);
    Ok(match encryption {
        Encryption::None => Box::new(stored),
        Encryption::Age => {
            let decryptor = age::Decryptor::new_buffered(stored)
                .map_err(|e| ReplicaError::Decrypt(e.to_string()))?;
            Box::new(
                decryptor
                    .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
                    .map_err(|e| ReplicaError::Decrypt(e.to_string()))?,
            )
        }
    })
}

fn decompressed<'a>(compressed: impl Read + 'a) -> Result<Box<dyn Read + 'a>, ReplicaError> {
    let zstd = zstd::stream::read::Decoder::new(compressed)
        .map_err(|e| ReplicaError::Decrypt(format!("zstd: {e}")))?;
    Ok(Box::new(zstd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn round_trip(encryption: Encryption, data: &[u8], part_size: usize) {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("source");
        std::fs::write(&source, data).expect("write");
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let (tx, mut rx) = mpsc::channel(4);
        let encoder = std::thread::spawn({
            let source = source.clone();
            move || encode(&source, encryption, &[recipient], part_size, tx)
        });
        let mut stored = Vec::new();
        let mut sizes = Vec::new();
        while let Some(part) = rx.blocking_recv() {
            sizes.push(part.len());
            stored.extend_from_slice(&part);
        }
        let encoded = encoder.join().expect("join").expect("encode");
        assert_eq!(encoded.stored.bytes, stored.len() as u64);
        assert_eq!(encoded.stored.sha256, hex::encode(Sha256::digest(&stored)));
        assert_eq!(encoded.source.bytes, data.len() as u64);
        assert_eq!(encoded.source.sha256, hex::encode(Sha256::digest(data)));
        // Every part but the last is exactly part_size.
        if let Some((_, full)) = sizes.split_last() {
            assert!(full.iter().all(|&n| n == part_size), "{sizes:?}");
        }
        if encryption == Encryption::Age {
            assert!(stored.starts_with(b"age-encryption.org/v1\n"));
        } else {
            assert_eq!(&stored[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
        }
        let mut back = Vec::new();
        decode(&stored[..], encryption, &[identity], &mut back).expect("decode");
        assert_eq!(back, data);
    }

    #[test]
    fn a_copy_decodes_to_the_exact_bytes_in_both_formats() {
        let mut data = Vec::new();
        for i in 0..200_000u32 {
            data.extend_from_slice(
                format!("row {i} {}\n", i.wrapping_mul(2_654_435_761)).as_bytes(),
            );
        }
        for encryption in [Encryption::Age, Encryption::None] {
            round_trip(encryption, &data, 64 << 10);
            round_trip(encryption, b"", 64 << 10);
            round_trip(encryption, b"x", 7);
        }
    }

    /// Written with a digest trailer, a stream decodes to the same bytes and shows the
    /// trailer matched once read to the end; a wrong digest fails the read, a stream
    /// without one reads but shows none.
    #[test]
    fn a_digest_trailer_is_checked_at_the_end_of_the_stream() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i / 7).to_le_bytes())
            .collect();
        let identity = age::x25519::Identity::generate();
        let sealed = |encryption, digest_trailer| {
            let (tx, mut rx) = mpsc::channel(4);
            let data = data.clone();
            let recipients = vec![identity.to_public()];
            let encoder = std::thread::spawn(move || {
                let sealed = Sealed {
                    what: Path::new("test"),
                    length: data.len() as u64,
                    encryption,
                    recipients: &recipients,
                    part_size: 1 << 16,
                    digest_trailer,
                };
                sealed.encode(tx, |out| {
                    out.write_all(&data)
                        .map_err(ReplicaError::io(Path::new("test")))
                })
            });
            let mut stored = Vec::new();
            while let Some(part) = rx.blocking_recv() {
                stored.extend_from_slice(&part);
            }
            let written = encoder.join().expect("join").expect("encode");
            assert_eq!(written.sha256, hex::encode(Sha256::digest(&stored)));
            stored
        };
        let read = |stored: &[u8], encryption| {
            let (mut plain, seen) =
                decoder_with_trailer(stored, encryption, std::slice::from_ref(&identity))
                    .expect("decoder");
            assert!(!seen.matched(), "not known before the end");
            let mut back = Vec::new();
            plain.read_to_end(&mut back).map(|_| (back, seen.matched()))
        };
        for encryption in [Encryption::Age, Encryption::None] {
            let (back, matched) = read(&sealed(encryption, true), encryption).expect("read");
            assert!(back == data && matched, "{encryption:?}");
            let (back, matched) = read(&sealed(encryption, false), encryption).expect("read");
            assert!(back == data && !matched, "{encryption:?}");
        }
        let mut stored = sealed(Encryption::None, true);
        let (body, trailer) = stored.split_at(stored.len() - TRAILER_BYTES);
        assert_eq!(trailer[..8], [0x5d, 0x2a, 0x4d, 0x18, 32, 0, 0, 0]);
        assert_eq!(trailer[8..], Sha256::digest(body)[..]);
        let last = stored.len() - 1;
        stored[last] ^= 0x80;
        let err = read(&stored, Encryption::None).expect_err("a wrong digest");
        assert!(err.to_string().contains("SHA-256"), "{err}");
    }

    #[test]
    fn the_wrong_identity_cannot_decrypt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("source");
        std::fs::write(&source, b"secret rows").expect("write");
        let recipient = age::x25519::Recipient::from_str(
            &age::x25519::Identity::generate().to_public().to_string(),
        )
        .expect("recipient");
        let (tx, mut rx) = mpsc::channel(4);
        let encoder =
            std::thread::spawn(move || encode(&source, Encryption::Age, &[recipient], 1 << 20, tx));
        let mut stored = Vec::new();
        while let Some(part) = rx.blocking_recv() {
            stored.extend_from_slice(&part);
        }
        encoder.join().expect("join").expect("encode");
        let stranger = age::x25519::Identity::generate();
        let mut out = Vec::new();
        let err =
            decode(&stored[..], Encryption::Age, &[stranger], &mut out).expect_err("wrong key");
        assert!(matches!(err, ReplicaError::Decrypt(_)), "{err}");
        assert!(out.is_empty(), "nothing decrypted");
    }
}
