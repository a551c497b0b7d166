//! The copy format: zstd, then age (unless the replica is unencrypted), as one stream.
//!
//! Compression comes first because encrypted bytes do not compress. Both directions
//! are blocking code (zstd and age are `std::io`), run on a blocking thread and joined
//! to the async upload or download by a bounded channel of parts: memory stays at a
//! few parts whatever the size of the backup.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

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
        let compressor = || -> io::Result<zstd::stream::write::Encoder<'static, Sealing>> {
            let mut zstd = zstd::stream::write::Encoder::new(sealing, ZSTD_LEVEL)?;
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

/// `stored` decrypted (with `identities`) and decompressed, as it is read. Blocking.
pub fn decoder<'a>(
    stored: impl Read + 'a,
    encryption: Encryption,
    identities: &[age::x25519::Identity],
) -> Result<Box<dyn Read + 'a>, ReplicaError> {
    let stored = BufReader::with_capacity(1 << 20, stored);
    let plain: Box<dyn Read + 'a> = match encryption {
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
    };
    let zstd = zstd::stream::read::Decoder::new(plain)
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
