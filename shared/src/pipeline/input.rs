//! Reading an uploaded object line by line: streamed, gzip read transparently for
//! `.gz` keys, every line bounded in size.

use async_compression::tokio::bufread::GzipDecoder;
use futures::TryStreamExt;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_util::io::StreamReader;

use crate::storage::ByteStream;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Why a whole file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(
        "the file is gzip-compressed but its name does not end in .gz; rename it to …{suffix}.gz"
    )]
    CompressedWithoutSuffix { suffix: String },
    #[error("reading the file failed at line {line}: {message}")]
    Read { line: u64, message: String },
}

/// One line as read: its number and bytes, or that it was too long (its bytes skipped),
/// or that the file cannot be read from this line on (corrupt compression, over the
/// size cap): the reader ends after it.
#[derive(Debug, PartialEq, Eq)]
pub enum InputLine {
    Line { number: u64, bytes: Vec<u8> },
    TooLong { number: u64, length: u64 },
    Unreadable { number: u64, reason: String },
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

pub struct LineReader {
    reader: Box<dyn AsyncBufRead + Send + Unpin>,
    max_line_bytes: usize,
    number: u64,
    /// Bytes read so far (after decompression) and the most accepted.
    total: u64,
    max_total: u64,
    ended: bool,
}

impl LineReader {
    /// Wraps an object's stream; `key` decides whether it is gzip.
    pub async fn open(
        key: &str,
        stream: ByteStream,
        max_line_bytes: usize,
    ) -> Result<Self, InputError> {
        let raw = StreamReader::new(stream.map_err(std::io::Error::other));
        let mut raw = BufReader::with_capacity(256 * 1024, raw);
        let head = raw.fill_buf().await.map_err(|e| InputError::Read {
            line: 1,
            message: e.to_string(),
        })?;
        let is_gzip = head.starts_with(&GZIP_MAGIC);
        let reader: Box<dyn AsyncBufRead + Send + Unpin> = if key.ends_with(".gz") {
            Box::new(BufReader::with_capacity(256 * 1024, GzipDecoder::new(raw)))
        } else if is_gzip {
            let suffix = key.rsplit('/').next().unwrap_or(key).to_string();
            return Err(InputError::CompressedWithoutSuffix { suffix });
        } else {
            Box::new(raw)
        };
        Ok(Self {
            reader,
            max_line_bytes,
            number: 0,
            total: 0,
            max_total: u64::MAX,
            ended: false,
        })
    }

    /// Caps the bytes read (after decompression): a small compressed upload cannot
    /// make a job of unbounded size.
    pub fn with_max_total_bytes(mut self, max_total: u64) -> Self {
        self.max_total = max_total;
        self
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
            let read = match (&mut self.reader)
                .take(limit)
                .read_until(b'\n', &mut bytes)
                .await
            {
                Ok(read) => read,
                Err(e) => return self.unreadable_or_error(e),
            };
            if read == 0 {
                return Ok(None);
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

    async fn skip_rest_of_line(&mut self) -> Result<u64, InputError> {
        let mut skipped = 0u64;
        loop {
            let line = self.number;
            let buf = match self.reader.fill_buf().await {
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
            match buf.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.reader.consume(i + 1);
                    return Ok(skipped + i as u64);
                }
                None => {
                    let n = buf.len();
                    self.reader.consume(n);
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
