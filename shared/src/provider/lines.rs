//! Splits a streamed HTTP body into lines without holding the whole body: at most one
//! partial line plus the chunk that just arrived is buffered.

use std::fmt::Display;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

use super::contract::LineStream;
use crate::error::Error;
use crate::model::ProviderKind;

struct Splitter<S> {
    chunks: Pin<Box<S>>,
    /// The start of a line whose end has not arrived yet.
    pending: BytesMut,
    /// How much of `pending` is known to hold no newline.
    scanned: usize,
    max_line_bytes: usize,
    provider: ProviderKind,
    finished: bool,
}

/// Turns `chunks` into one item per line: no `\n`, no trailing `\r`, a last line
/// without a newline included. Blank lines are skipped (JSONL has none that mean
/// anything). A line longer than `max_line_bytes` or a broken body ends the stream
/// with an error.
pub fn split_lines<S, E>(chunks: S, max_line_bytes: usize, provider: ProviderKind) -> LineStream
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Display,
{
    let splitter = Splitter {
        chunks: Box::pin(chunks),
        pending: BytesMut::new(),
        scanned: 0,
        max_line_bytes,
        provider,
        finished: false,
    };
    futures::stream::unfold(splitter, |mut s| async move {
        let item = s.next_line().await?;
        Some((item, s))
    })
    .boxed()
}

impl<S, E> Splitter<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Display,
{
    async fn next_line(&mut self) -> Option<crate::Result<Bytes>> {
        while !self.finished {
            if let Some(offset) = memchr::memchr(b'\n', &self.pending[self.scanned..]) {
                let end = self.scanned + offset;
                let mut line = self.pending.split_to(end + 1).freeze();
                line.truncate(end);
                self.scanned = 0;
                if let Some(item) = self.emit(line) {
                    return Some(item);
                }
                continue;
            }
            self.scanned = self.pending.len();
            if self.pending.len() > self.max_line_bytes {
                return Some(Err(self.too_long()));
            }
            match self.chunks.next().await {
                Some(Ok(chunk)) => self.pending.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    self.finished = true;
                    return Some(Err(Error::Transport {
                        provider: self.provider,
                        attempts: 1,
                        message: format!("results stream broke: {e}"),
                    }));
                }
                None => {
                    self.finished = true;
                    let last = std::mem::take(&mut self.pending).freeze();
                    return self.emit(last);
                }
            }
        }
        None
    }

    /// The line without its `\r`, checked for length; `None` for a blank line.
    fn emit(&mut self, mut line: Bytes) -> Option<crate::Result<Bytes>> {
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if line.len() > self.max_line_bytes {
            return Some(Err(self.too_long()));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(Ok(line))
    }

    fn too_long(&mut self) -> Error {
        self.finished = true;
        Error::Protocol {
            provider: self.provider,
            message: format!(
                "a results line is longer than {} bytes",
                self.max_line_bytes
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    fn chunked(parts: &[&str]) -> impl Stream<Item = Result<Bytes, String>> + Send + 'static {
        let owned: Vec<Result<Bytes, String>> = parts
            .iter()
            .map(|p| Ok(Bytes::from(p.to_string())))
            .collect();
        futures::stream::iter(owned)
    }

    async fn collect(parts: &[&str], max: usize) -> crate::Result<Vec<String>> {
        let lines: Vec<Bytes> = split_lines(chunked(parts), max, ProviderKind::OpenAi)
            .try_collect()
            .await?;
        Ok(lines
            .into_iter()
            .map(|l| String::from_utf8(l.to_vec()).unwrap())
            .collect())
    }

    #[tokio::test]
    async fn lines_split_across_chunks() {
        let lines = collect(&["{\"a\":", "1}\n{\"b\"", ":2}\n", "{\"c\":3}"], 100)
            .await
            .unwrap();
        assert_eq!(lines, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
    }

    #[tokio::test]
    async fn crlf_split_between_chunks_and_blank_lines() {
        let lines = collect(&["one\r", "\ntwo\r\n\r\n", "\n", "three\r\n"], 100)
            .await
            .unwrap();
        assert_eq!(lines, ["one", "two", "three"]);
    }

    #[tokio::test]
    async fn byte_at_a_time_and_many_lines_per_chunk() {
        let text = "alpha\nbeta\r\ngamma";
        let bytes: Vec<String> = text.chars().map(String::from).collect();
        let parts: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(
            collect(&parts, 100).await.unwrap(),
            ["alpha", "beta", "gamma"]
        );
        assert_eq!(
            collect(&[text], 100).await.unwrap(),
            ["alpha", "beta", "gamma"]
        );
        assert!(collect(&[], 100).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn line_longer_than_the_cap_is_an_error_even_without_newline() {
        let err = collect(&["short\n", "0123456789", "0123456789"], 15)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
        // A line of exactly the cap is fine; one byte more with its newline is not.
        assert_eq!(collect(&["12345\n"], 5).await.unwrap(), ["12345"]);
        assert!(collect(&["123456\nok\n"], 5).await.is_err());
    }

    #[tokio::test]
    async fn the_lines_before_a_broken_body_arrive_then_the_error() {
        let parts: Vec<Result<Bytes, String>> = vec![
            Ok(Bytes::from_static(b"first\nsec")),
            Err("connection reset".to_string()),
        ];
        let mut lines = split_lines(futures::stream::iter(parts), 100, ProviderKind::Gemini);
        assert_eq!(
            lines.next().await.unwrap().unwrap(),
            Bytes::from_static(b"first")
        );
        let err = lines.next().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
        assert!(lines.next().await.is_none());
    }
}
