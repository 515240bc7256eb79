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

/// One line as read: its number and bytes, or that it was too long (its bytes skipped).
#[derive(Debug, PartialEq, Eq)]
pub enum InputLine {
    Line { number: u64, bytes: Vec<u8> },
    TooLong { number: u64, length: u64 },
}

pub struct LineReader {
    reader: Box<dyn AsyncBufRead + Send + Unpin>,
    max_line_bytes: usize,
    number: u64,
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
        })
    }

    /// The next non-empty line, or `None` at the end. Blank lines are skipped but counted.
    pub async fn next_line(&mut self) -> Result<Option<InputLine>, InputError> {
        loop {
            self.number += 1;
            let mut bytes = Vec::new();
            let limit = self.max_line_bytes as u64 + 2;
            let read = (&mut self.reader)
                .take(limit)
                .read_until(b'\n', &mut bytes)
                .await
                .map_err(|e| self.read_error(e))?;
            if read == 0 {
                return Ok(None);
            }
            if !bytes.ends_with(b"\n") && read as u64 == limit {
                let skipped = self.skip_rest_of_line().await?;
                return Ok(Some(InputLine::TooLong {
                    number: self.number,
                    length: read as u64 + skipped,
                }));
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
            let buf = self.reader.fill_buf().await.map_err(|e| InputError::Read {
                line,
                message: e.to_string(),
            })?;
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

    fn read_error(&self, e: std::io::Error) -> InputError {
        InputError::Read {
            line: self.number,
            message: e.to_string(),
        }
    }
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
}
