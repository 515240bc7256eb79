//! Reading an uploaded object line by line: streamed, gzip read transparently for
//! `.gz` keys (any case, every member of a multi-member file), every line bounded in
//! size.
//!
//! The reader counts the object's bytes as they arrive and says whether it reached
//! the object's end cleanly ([`LineReader::extent`]), so that submit can check that
//! the whole upload was read instead of trusting the decoder.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_compression::tokio::bufread::GzipDecoder;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_util::io::StreamReader;

use crate::storage::ByteStream;

/// The error type of lines rejected before submission.
pub const INVALID_INPUT: &str = "invalid_input";

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
const READ_BUFFER: usize = 256 * 1024;
/// Bytes looked at for whole-file problems (UTF-16, CR-only line ends).
const HEAD_BYTES: usize = 4096;

/// Why a whole file cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// Gzip bytes under a name without `.gz`: refused rather than guessed.
    #[error(
        "the file is gzip-compressed but its name does not end in .gz; rename it to …{suffix}.gz"
    )]
    CompressedWithoutSuffix {
        /// The file name as uploaded.
        suffix: String,
    },
    /// The bytes say what is wrong with the whole file (UTF-16, CR-only line ends).
    #[error("{0}")]
    Unusable(String),
    /// Fetching the bytes failed (worth retrying).
    #[error("reading the file failed at line {line}: {message}")]
    Read {
        /// The line being read.
        line: u64,
        /// What the store or the stream said.
        message: String,
    },
}

/// One line as read: its number and bytes, or that it was too long (its bytes skipped),
/// or that the file cannot be read from this line on (corrupt compression, over the
/// size cap): the reader ends after it.
#[derive(Debug, PartialEq, Eq)]
pub enum InputLine {
    /// A non-blank line, without its line end.
    Line {
        /// 1-based line number in the (decompressed) file.
        number: u64,
        /// The line's bytes.
        bytes: Vec<u8>,
    },
    /// A line longer than the limit; its bytes were skipped.
    TooLong {
        /// 1-based line number.
        number: u64,
        /// The line's length in bytes.
        length: u64,
    },
    /// The file cannot be read from this line on; nothing follows.
    Unreadable {
        /// 1-based line number.
        number: u64,
        /// Why, in words.
        reason: String,
    },
}

/// How much of the object a reader consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadExtent {
    /// Bytes of the object as stored (compressed, for a `.gz` file) that arrived.
    pub bytes_read: u64,
    /// The reader reached the end of the object's bytes with nothing left undecoded.
    pub reached_end: bool,
}

/// The object's bytes, decompressed or not.
enum Source {
    Plain(BufReader<Counted>),
    Gzip(BufReader<GzipDecoder<BufReader<Counted>>>),
}

/// The object's byte stream, counting what arrives.
type Counted =
    StreamReader<futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>, bytes::Bytes>;

/// `stream` as buffered bytes, counting in `arrived` what comes from the store.
fn counted(
    stream: futures::stream::BoxStream<'static, Result<bytes::Bytes, crate::storage::StoreError>>,
    arrived: Arc<AtomicU64>,
) -> BufReader<Counted> {
    let counted = stream
        .map_err(std::io::Error::other)
        .inspect_ok(move |chunk| {
            arrived.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        });
    BufReader::with_capacity(READ_BUFFER, StreamReader::new(Box::pin(counted) as _))
}

impl Source {
    fn lines(&mut self) -> &mut (dyn AsyncBufRead + Send + Unpin) {
        match self {
            Source::Plain(reader) => reader,
            Source::Gzip(reader) => reader,
        }
    }

    /// True when no byte of the object is left unread below the decoder: a decoder
    /// that stops early (one gzip member of several) leaves some.
    async fn object_exhausted(&mut self) -> std::io::Result<bool> {
        let raw = match self {
            Source::Plain(reader) => reader,
            Source::Gzip(reader) => reader.get_mut().get_mut(),
        };
        Ok(raw.fill_buf().await?.is_empty())
    }
}

/// Reads an uploaded object line by line.
pub struct LineReader {
    source: Source,
    max_line_bytes: usize,
    number: u64,
    /// Bytes read so far (after decompression) and the most accepted.
    total: u64,
    max_total: u64,
    ended: bool,
    /// Bytes of the object that arrived from the store.
    arrived: Arc<AtomicU64>,
    reached_end: bool,
}

/// True for `.gz` in any case (`.GZ` from tools that write upper-case names).
fn is_gzip_name(key: &str) -> bool {
    key.len() >= 3
        && key
            .get(key.len() - 3..)
            .is_some_and(|end| end.eq_ignore_ascii_case(".gz"))
}

impl LineReader {
    /// Wraps an object's stream; `key` decides whether it is gzip. The bytes the file
    /// starts with are checked for what makes a whole file unreadable as JSONL.
    pub async fn open(
        key: &str,
        stream: ByteStream,
        max_line_bytes: usize,
    ) -> Result<Self, InputError> {
        let read_error = |message: String| InputError::Read { line: 1, message };
        // The first few KiB in one piece, so that the checks below see enough bytes
        // however the store splits its stream.
        // Fused: the checks below may look past the end of a short object.
        let mut stream = stream.fuse();
        let mut head = Vec::with_capacity(HEAD_BYTES);
        while head.len() < HEAD_BYTES {
            match stream.try_next().await {
                Ok(Some(chunk)) => head.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return Err(read_error(e.to_string())),
            }
        }
        let head = futures::stream::iter([Ok(bytes::Bytes::from(head))]);
        let arrived = Arc::new(AtomicU64::new(0));
        let mut raw = counted(head.chain(stream).boxed(), arrived.clone());
        let is_gzip = raw
            .fill_buf()
            .await
            .map_err(|e| read_error(e.to_string()))?
            .starts_with(&GZIP_MAGIC);
        let mut source = if is_gzip_name(key) {
            let mut decoder = GzipDecoder::new(raw);
            // `cat a.gz b.gz` and some libraries write several members: read them all.
            decoder.multiple_members(true);
            Source::Gzip(BufReader::with_capacity(READ_BUFFER, decoder))
        } else if is_gzip {
            let suffix = key.rsplit('/').next().unwrap_or(key).to_string();
            return Err(InputError::CompressedWithoutSuffix { suffix });
        } else {
            Source::Plain(raw)
        };
        // Corrupt compression shows up on the first line read, with its line number.
        if let Ok(head) = source.lines().fill_buf().await
            && let Some(problem) = whole_file_problem(head)
        {
            return Err(InputError::Unusable(problem));
        }
        Ok(Self {
            source,
            max_line_bytes,
            number: 0,
            total: 0,
            max_total: u64::MAX,
            ended: false,
            arrived,
            reached_end: false,
        })
    }

    /// Bytes of the (decompressed) file consumed so far: where the next line starts.
    pub fn consumed(&self) -> u64 {
        self.total
    }

    /// True for a `.gz` upload, which can only be read from its start.
    pub fn is_compressed(&self) -> bool {
        matches!(self.source, Source::Gzip(_))
    }

    /// Goes on reading an uncompressed file from `stream`, the object's bytes from
    /// `offset` on, where line `line` ended (a checkpoint of an earlier reader). The
    /// bytes before `offset` count as read.
    pub fn resume_from(&mut self, stream: ByteStream, offset: u64, line: u64) {
        let arrived = Arc::new(AtomicU64::new(offset));
        self.source = Source::Plain(counted(stream.boxed(), arrived.clone()));
        self.arrived = arrived;
        self.number = line;
        self.total = offset;
        self.ended = false;
        self.reached_end = false;
    }

    /// Reads and drops lines until line `line` is read: how a compressed file (which
    /// cannot be entered in the middle) gets back to a checkpoint.
    pub async fn skip_through_line(&mut self, line: u64) -> Result<(), InputError> {
        while self.number < line {
            if self.next_line().await?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// Caps the bytes read (after decompression): a small compressed upload cannot
    /// make a job of unbounded size.
    pub fn with_max_total_bytes(mut self, max_total: u64) -> Self {
        self.max_total = max_total;
        self
    }

    /// Sets the longest line accepted from here on (the spec's, once the header is read).
    pub fn set_max_line_bytes(&mut self, max_line_bytes: usize) {
        self.max_line_bytes = max_line_bytes;
    }

    /// The number of the last line read (blank lines included).
    pub fn lines_read(&self) -> u64 {
        self.number
    }

    /// How much of the object arrived, and whether the reader reached its end cleanly.
    pub fn extent(&self) -> ReadExtent {
        ReadExtent {
            bytes_read: self.arrived.load(Ordering::Relaxed),
            reached_end: self.reached_end,
        }
    }

    /// The next non-empty line, or `None` at the end. Blank lines are skipped but counted.
    /// Corrupt data (a broken gzip stream) is reported as an [`InputLine::Unreadable`]
    /// line; only a failure to fetch the bytes is an error (worth retrying).
    pub async fn next_line(&mut self) -> Result<Option<InputLine>, InputError> {
        if self.ended {
            return Ok(None);
        }
        loop {
            self.number += 1;
            let mut bytes = Vec::new();
            let limit = self.max_line_bytes as u64 + 2;
            let read = match self
                .source
                .lines()
                .take(limit)
                .read_until(b'\n', &mut bytes)
                .await
            {
                Ok(read) => read,
                Err(e) => return self.unreadable_or_error(e),
            };
            if read == 0 {
                return self.end_of_lines().await;
            }
            self.total += read as u64;
            if !bytes.ends_with(b"\n") && read as u64 == limit {
                let skipped = match self.skip_rest_of_line().await {
                    Ok(skipped) => skipped,
                    Err(InputError::Read { message, .. }) if self.ended => {
                        return Ok(Some(self.unreadable(message)));
                    }
                    Err(e) => return Err(e),
                };
                self.total += skipped;
                return Ok(Some(InputLine::TooLong {
                    number: self.number,
                    length: read as u64 + skipped,
                }));
            }
            if self.total > self.max_total {
                let reason = format!(
                    "the file holds more than {} bytes (uncompressed); the rest was not read",
                    self.max_total
                );
                return Ok(Some(self.unreadable(reason)));
            }
            if self.number == 1 && bytes.starts_with(UTF8_BOM) {
                bytes.drain(..UTF8_BOM.len());
            }
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(InputLine::Line {
                number: self.number,
                bytes,
            }));
        }
    }

    /// The lines ran out: the end of the object, or bytes the decoder left behind.
    async fn end_of_lines(&mut self) -> Result<Option<InputLine>, InputError> {
        match self.source.object_exhausted().await {
            Ok(true) => {
                self.ended = true;
                self.reached_end = true;
                Ok(None)
            }
            Ok(false) => {
                // Bytes left below the decoder: trailing garbage, or data the
                // decoder gave up on without an error.
                let reason = "the file cannot be decompressed to its end: the decoder \
                              stopped with bytes of the file left over"
                    .to_string();
                Ok(Some(self.unreadable(reason)))
            }
            Err(e) => self.unreadable_or_error(e),
        }
    }

    async fn skip_rest_of_line(&mut self) -> Result<u64, InputError> {
        let mut skipped = 0u64;
        loop {
            let line = self.number;
            let buf = match self.source.lines().fill_buf().await {
                Ok(buf) => buf,
                Err(e) => {
                    self.ended = is_corrupt_data(&e);
                    return Err(InputError::Read {
                        line,
                        message: e.to_string(),
                    });
                }
            };
            if buf.is_empty() {
                return Ok(skipped);
            }
            match memchr::memchr(b'\n', buf) {
                Some(i) => {
                    self.source.lines().consume(i + 1);
                    return Ok(skipped + i as u64);
                }
                None => {
                    let n = buf.len();
                    self.source.lines().consume(n);
                    skipped += n as u64;
                }
            }
        }
    }

    /// Corrupt data ends the file with an unreadable line; anything else is an error.
    fn unreadable_or_error(&mut self, e: std::io::Error) -> Result<Option<InputLine>, InputError> {
        if is_corrupt_data(&e) {
            return Ok(Some(self.unreadable(format!(
                "the file cannot be decompressed from here on ({e})"
            ))));
        }
        Err(InputError::Read {
            line: self.number,
            message: e.to_string(),
        })
    }

    fn unreadable(&mut self, reason: String) -> InputLine {
        self.ended = true;
        InputLine::Unreadable {
            number: self.number,
            reason,
        }
    }
}

/// What the first bytes of a file say makes every line of it unreadable, in words
/// that name the likely cause.
fn whole_file_problem(head: &[u8]) -> Option<String> {
    if head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF") {
        return Some(
            "the file is UTF-16 text (it starts with a UTF-16 byte order mark); save it as UTF-8"
                .into(),
        );
    }
    let sample = &head[..head.len().min(4096)];
    let zeros = sample.iter().filter(|b| **b == 0).count();
    if sample.len() >= 8 && zeros * 4 >= sample.len() {
        return Some(
            "the file looks like UTF-16 text (every other byte is zero); save it as UTF-8".into(),
        );
    }
    let cr_inside = sample
        .windows(2)
        .any(|pair| pair[0] == b'\r' && pair[1] != b'\n');
    if cr_inside && memchr::memchr(b'\n', sample).is_none() {
        return Some(
            "the file's lines end in a carriage return (CR) alone, as on classic Mac OS; \
             save it with LF or CRLF line ends"
                .into(),
        );
    }
    None
}

/// Errors of the data itself (a gzip decoder's), as opposed to fetching it: retrying
/// cannot help, so they are reported instead of retried.
fn is_corrupt_data(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use bytes::Bytes;
    use futures::StreamExt;

    use super::*;

    fn stream(data: Vec<u8>) -> ByteStream {
        let chunks: Vec<_> = data
            .chunks(3)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(chunks).boxed()
    }

    async fn read_all(key: &str, data: Vec<u8>, max: usize) -> Result<Vec<InputLine>, InputError> {
        let mut reader = LineReader::open(key, stream(data), max).await?;
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().await? {
            out.push(line);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn numbers_lines_skips_blanks_and_flags_long_ones() {
        let lines = read_all("a.jsonl", b"one\r\n\n0123456789\nthree".to_vec(), 5)
            .await
            .unwrap();
        assert_eq!(
            lines,
            vec![
                InputLine::Line {
                    number: 1,
                    bytes: b"one".to_vec()
                },
                InputLine::TooLong {
                    number: 3,
                    length: 10
                },
                InputLine::Line {
                    number: 4,
                    bytes: b"three".to_vec()
                },
            ]
        );
    }

    #[tokio::test]
    async fn gzip_is_read_for_gz_keys_and_refused_without_the_suffix() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"x\ny\n").unwrap();
        let gz = gz.finish().unwrap();
        let lines = read_all("in.jsonl.gz", gz.clone(), 100).await.unwrap();
        assert_eq!(lines.len(), 2);
        let err = read_all("in.jsonl", gz, 100).await.unwrap_err();
        assert!(err.to_string().contains("in.jsonl.gz"), "{err}");
    }

    #[tokio::test]
    async fn corrupt_gzip_ends_with_an_unreadable_line_instead_of_an_error() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for i in 0..2000 {
            writeln!(gz, "line {i} with some text to compress").unwrap();
        }
        let gz = gz.finish().unwrap();
        let truncated = gz[..gz.len() / 2].to_vec();
        let garbage = [&GZIP_MAGIC[..], b"this is not deflate data at all"].concat();
        for data in [truncated, garbage] {
            let lines = read_all("in.jsonl.gz", data, 100).await.unwrap();
            let Some(InputLine::Unreadable { reason, .. }) = lines.last() else {
                panic!("no unreadable line at the end: {:?}", lines.last());
            };
            assert!(reason.contains("decompressed"), "{reason}");
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    async fn read_with_extent(key: &str, data: Vec<u8>) -> (Vec<InputLine>, ReadExtent) {
        let mut reader = LineReader::open(key, stream(data), 100).await.unwrap();
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            out.push(line);
        }
        (out, reader.extent())
    }

    #[tokio::test]
    async fn every_member_of_a_concatenated_gzip_is_read_to_the_last_byte() {
        let data = [gzip(b"a\nb\n"), gzip(b"c\n"), gzip(b""), gzip(b"d\ne\n")].concat();
        let size = data.len() as u64;
        for key in ["in.jsonl.gz", "IN.JSONL.GZ"] {
            let (lines, extent) = read_with_extent(key, data.clone()).await;
            assert_eq!(lines.len(), 5, "{key}: {lines:?}");
            assert_eq!(
                extent,
                ReadExtent {
                    bytes_read: size,
                    reached_end: true
                }
            );
        }
    }

    #[tokio::test]
    async fn bytes_after_the_compressed_data_end_the_file_unread() {
        let data = [gzip(b"a\nb\n"), b"trailing garbage".to_vec()].concat();
        let (lines, extent) = read_with_extent("in.jsonl.gz", data).await;
        assert!(
            matches!(lines.last(), Some(InputLine::Unreadable { .. })),
            "{lines:?}"
        );
        assert!(!extent.reached_end);
    }

    #[tokio::test]
    async fn a_plain_file_is_read_to_its_end() {
        let data = b"one\ntwo\n\n".to_vec();
        let (lines, extent) = read_with_extent("in.jsonl", data.clone()).await;
        assert_eq!(lines.len(), 2);
        assert_eq!(extent.bytes_read, data.len() as u64);
        assert!(extent.reached_end);
    }

    #[tokio::test]
    async fn whole_file_problems_name_their_likely_cause() {
        let utf16: Vec<u8> = "{\"text\":\"a\"}\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let cases: [(&str, Vec<u8>, &str); 4] = [
            (
                "a.jsonl",
                [b"\xFF\xFE".to_vec(), utf16.clone()].concat(),
                "UTF-16",
            ),
            ("a.jsonl", utf16.clone(), "UTF-16"),
            ("a.jsonl.gz", gzip(&utf16), "UTF-16"),
            (
                "a.jsonl",
                b"{\"text\":\"a\"}\r{\"text\":\"b\"}\r".to_vec(),
                "carriage return",
            ),
        ];
        for (key, data, cause) in cases {
            let Err(InputError::Unusable(reason)) = LineReader::open(key, stream(data), 100).await
            else {
                panic!("{key}: {cause} not detected");
            };
            assert!(reason.contains(cause), "{reason}");
        }
    }

    #[tokio::test]
    async fn a_bom_is_dropped_and_the_total_size_is_capped() {
        let mut reader = LineReader::open(
            "a.jsonl",
            stream(b"\xEF\xBB\xBF{}\nabc\ndef\n".to_vec()),
            100,
        )
        .await
        .unwrap()
        .with_max_total_bytes(8);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            out.push(line);
        }
        assert_eq!(
            out[0],
            InputLine::Line {
                number: 1,
                bytes: b"{}".to_vec()
            }
        );
        assert!(
            matches!(&out[1], InputLine::Unreadable { number: 2, reason } if reason.contains("8 bytes")),
            "{out:?}"
        );
        assert_eq!(out.len(), 2);
    }
}
