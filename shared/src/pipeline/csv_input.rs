//! CSV records (RFC 4180) read over the [`LineReader`], which keeps its streaming,
//! gzip, size caps and line numbers: fields quoted with `"`, `""` for a quote inside
//! one, commas and line ends inside quoted fields.
//!
//! A record is complete when it holds an even number of quotes; until then the next
//! lines are joined to it with `\n` (a CRLF inside a quoted field becomes `\n` too),
//! and the blank lines the line reader skips are put back from the gap in its line
//! numbers (a line of only spaces inside a quoted field comes back empty: the line
//! reader skips it as blank).

use super::input::{InputError, InputLine, LineReader};

/// Keys ending `.csv` or `.csv.gz`, in any case, are CSV uploads.
pub fn is_csv_key(key: &str) -> bool {
    let name = key.to_ascii_lowercase();
    name.ends_with(".csv") || name.ends_with(".csv.gz")
}

/// One record: the line it starts on and its fields, or why it cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRecord {
    /// 1-based line of the file the record starts on.
    pub line: u64,
    /// The fields, or what is wrong with the record.
    pub fields: Result<Vec<String>, String>,
}

/// Reads an upload record by record.
pub struct CsvRecords {
    lines: LineReader,
    max_record_bytes: usize,
    /// Why the file could not be read to its end, once that happened.
    stopped: Option<String>,
}

impl CsvRecords {
    /// Records of `lines`, each at most `max_record_bytes` long.
    pub fn new(lines: LineReader, max_record_bytes: usize) -> Self {
        Self {
            lines,
            max_record_bytes,
            stopped: None,
        }
    }

    /// The line reader below (for the extent read and the last line number).
    pub fn lines(&self) -> &LineReader {
        &self.lines
    }

    /// The line reader below, to move it to a checkpoint.
    pub fn lines_mut(&mut self) -> &mut LineReader {
        &mut self.lines
    }

    /// Why the file could not be read to its end, if it could not.
    pub fn stopped_early(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// The next record, or `None` at the end. Like [`LineReader::next_line`], only a
    /// failure to fetch the bytes is an error.
    pub async fn next_record(&mut self) -> Result<Option<CsvRecord>, InputError> {
        let record = |line: u64, fields| Ok(Some(CsvRecord { line, fields }));
        let (start, mut text) = match self.lines.next_line().await? {
            None => return Ok(None),
            Some(InputLine::Line { number, bytes }) => (number, bytes),
            Some(InputLine::TooLong { number, length }) => {
                return record(number, Err(self.too_long(length)));
            }
            Some(InputLine::Unreadable { number, reason }) => {
                self.stopped = Some(reason.clone());
                return record(number, Err(reason));
            }
        };
        let mut last = start;
        let mut quotes = count_quotes(&text);
        let mut length = text.len() as u64;
        while quotes % 2 == 1 {
            match self.lines.next_line().await? {
                None => {
                    let reason = format!(
                        "a quoted field opened on line {start} is not closed by the end of the file"
                    );
                    return record(start, Err(reason));
                }
                // The skipped line's quotes are unknown: the record is taken to end
                // with it, so that one long line cannot swallow the rest of the file.
                Some(InputLine::TooLong { length: more, .. }) => {
                    return record(start, Err(self.too_long(length + more)));
                }
                Some(InputLine::Unreadable { reason, .. }) => {
                    self.stopped = Some(reason.clone());
                    return record(start, Err(reason));
                }
                Some(InputLine::Line { number, bytes }) => {
                    quotes += count_quotes(&bytes);
                    // One line end, and one per blank line the reader skipped.
                    let line_ends = (number - last) as usize;
                    length += (line_ends + bytes.len()) as u64;
                    last = number;
                    // Past the cap only the quotes are counted, to find the record's end.
                    if length <= self.max_record_bytes as u64 {
                        text.extend(std::iter::repeat_n(b'\n', line_ends));
                        text.extend_from_slice(&bytes);
                    }
                }
            }
        }
        if length > self.max_record_bytes as u64 {
            return record(start, Err(self.too_long(length)));
        }
        let fields = match String::from_utf8(text) {
            Ok(text) => split_fields(&text),
            Err(e) => Err(format!("the record is not UTF-8 ({})", e.utf8_error())),
        };
        record(start, fields)
    }

    fn too_long(&self, length: u64) -> String {
        format!(
            "the record is {length} bytes, more than the {} allowed (`max_line_bytes`)",
            self.max_record_bytes
        )
    }
}

fn count_quotes(bytes: &[u8]) -> usize {
    memchr::memchr_iter(b'"', bytes).count()
}

/// Splits one complete record into its fields. A quote inside an unquoted field is
/// taken as it is; text after a quoted field's closing quote is refused.
fn split_fields(record: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = record.chars().peekable();
    loop {
        let mut field = String::new();
        let number = fields.len() + 1;
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    Some('"') if chars.next_if_eq(&'"').is_some() => field.push('"'),
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err(format!("quoted field {number} is not closed")),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => {
                    return Err(format!(
                        "field {number} has {c:?} after its closing quote; quote the whole \
                         field and double the quotes inside it"
                    ));
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use bytes::Bytes;
    use futures::StreamExt;

    use super::*;

    async fn records(key: &str, data: &[u8], max: usize) -> Vec<CsvRecord> {
        let chunks: Vec<_> = data
            .chunks(5)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let lines = LineReader::open(key, futures::stream::iter(chunks).boxed(), max)
            .await
            .unwrap();
        let mut reader = CsvRecords::new(lines, max);
        let mut out = Vec::new();
        while let Some(record) = reader.next_record().await.unwrap() {
            out.push(record);
        }
        out
    }

    fn ok(line: u64, fields: &[&str]) -> CsvRecord {
        CsvRecord {
            line,
            fields: Ok(fields.iter().map(|f| f.to_string()).collect()),
        }
    }

    #[test]
    fn csv_keys_in_any_case() {
        for key in [
            "inbox/p/a.csv",
            "inbox/p/A.CSV",
            "inbox/p/a.csv.gz",
            "x.Csv.GZ",
        ] {
            assert!(is_csv_key(key), "{key}");
        }
        for key in ["a.jsonl", "a.csv.bak", "a.gz", "csv"] {
            assert!(!is_csv_key(key), "{key}");
        }
    }

    #[tokio::test]
    async fn quoted_commas_quotes_and_line_ends_stay_in_their_field() {
        let data = b"\xEF\xBB\xBFid,text\r\n\
                     1,\"a, b\"\r\n\
                     2,\"say \"\"hi\"\"\"\n\
                     3,\"two\nlines\"\n\
                     4,\"crlf\r\nlines\"\r\n\
                     \n\
                     5,\"blank\n\n\nbetween\"\n\
                     6,\n";
        assert_eq!(
            records("a.csv", data, 100).await,
            [
                ok(1, &["id", "text"]),
                ok(2, &["1", "a, b"]),
                ok(3, &["2", "say \"hi\""]),
                ok(4, &["3", "two\nlines"]),
                ok(6, &["4", "crlf\nlines"]),
                ok(9, &["5", "blank\n\n\nbetween"]),
                ok(13, &["6", ""]),
            ]
        );
    }

    #[tokio::test]
    async fn gzip_is_read_like_plain_text() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"id,text\n1,\"x\ny\"\n").unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(
            records("a.CSV.GZ", &gz, 100).await,
            [ok(1, &["id", "text"]), ok(2, &["1", "x\ny"])]
        );
    }

    #[tokio::test]
    async fn broken_records_say_why_and_the_next_one_reads() {
        let data = b"a,\"b\"c\n\
                     \"x\" ,y\n\
                     a\"b,\"c\n\
                     ok,1\n\
                     0123456789012345678901234567890\n\
                     \"open\nstill open\n";
        let got = records("a.csv", data, 25).await;
        let reasons: Vec<_> = got
            .iter()
            .map(|r| (r.line, r.fields.clone().err().unwrap_or_default()))
            .collect();
        assert_eq!(reasons[0].0, 1);
        assert!(reasons[0].1.contains("after its closing quote"), "{got:?}");
        assert!(reasons[1].1.contains("after its closing quote"), "{got:?}");
        assert!(reasons[2].1.contains("not closed"), "{got:?}");
        assert_eq!(got[3], ok(4, &["ok", "1"]));
        assert!(reasons[4].1.contains("more than the 25"), "{got:?}");
        assert_eq!(reasons[5].0, 6);
        assert!(reasons[5].1.contains("end of the file"), "{got:?}");
    }

    #[tokio::test]
    async fn a_record_over_the_cap_is_refused_whole() {
        let data = b"1,\"0123456789\n0123456789\n0123456789\"\n2,x\n";
        let got = records("a.csv", data, 20).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0]
                .fields
                .as_ref()
                .unwrap_err()
                .contains("more than the 20")
        );
        assert_eq!(got[1], ok(4, &["2", "x"]));
    }
}
