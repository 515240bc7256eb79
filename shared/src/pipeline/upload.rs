//! An upload's rows: JSONL lines or CSV records turned into requests with their kept
//! values, or into rejections that say why. Submit reads every row this way, and
//! collect reads them again for a retry part.

use std::collections::HashMap;

use super::context::PipelineError;
use super::csv_input::{CsvRecords, is_csv_key};
use super::input::{InputError, InputLine, LineReader};
use super::row::{InputRow, KeptValues, RowRejection};
use super::spec::{self, JobSpec};
use super::template::Piece;
use crate::request::{Message, Request, Role};
use crate::storage::StoreError;

/// The rows of one upload, in file order.
pub struct UploadRows<'a> {
    key: &'a str,
    spec: &'a JobSpec,
    source: Source,
}

enum Source {
    Jsonl {
        lines: LineReader,
        /// A first line that was not a header, handed back by the spec lookup.
        pending: Option<InputLine>,
        /// Why the file could not be read to its end, once that happened.
        stopped: Option<String>,
    },
    Csv {
        records: CsvRecords,
        columns: CsvColumns,
    },
}

impl<'a> UploadRows<'a> {
    /// The rows of upload `key`, read with `spec` from `lines`, whose first line (if
    /// read already and not a header) is `pending`. The inner `Err` is a whole-file
    /// problem, in words that name the file: a CSV header that does not fit the spec,
    /// or CSV fields in the spec of a JSONL file.
    pub async fn open(
        key: &'a str,
        spec: &'a JobSpec,
        lines: LineReader,
        pending: Option<InputLine>,
    ) -> Result<Result<Self, String>, PipelineError> {
        let source = if is_csv_key(key) {
            let mut records = CsvRecords::new(lines, spec.max_line_bytes);
            let Some(header) = records
                .next_record()
                .await
                .map_err(|e| read_error(key, e))?
            else {
                return Ok(Err(format!("{key}: the file has no header row")));
            };
            let columns = match header
                .fields
                .and_then(|names| CsvColumns::from_header(&names, spec))
            {
                Ok(columns) => columns,
                Err(reason) => {
                    return Ok(Err(format!(
                        "{key} line {}: the header row does not fit the spec: {reason}",
                        header.line
                    )));
                }
            };
            Source::Csv { records, columns }
        } else {
            let csv_fields = [
                ("id_column", spec.id_column.is_some()),
                ("text_column", spec.text_column.is_some()),
                ("template", spec.template.is_some()),
            ];
            if let Some((field, _)) = csv_fields.iter().find(|(_, given)| *given) {
                return Ok(Err(format!(
                    "{key}: spec field `{field}` applies to CSV uploads (keys ending .csv or \
                     .csv.gz); a JSONL line names its own custom_id and text"
                )));
            }
            Source::Jsonl {
                lines,
                pending,
                stopped: None,
            }
        };
        Ok(Ok(Self { key, spec, source }))
    }

    /// The next row, or `None` at the end of the file.
    pub async fn next_row(
        &mut self,
    ) -> Result<Option<Result<InputRow, RowRejection>>, PipelineError> {
        match &mut self.source {
            Source::Jsonl {
                lines,
                pending,
                stopped,
            } => {
                let line = match pending.take() {
                    Some(line) => line,
                    None => match next_line(lines, self.key).await? {
                        Some(line) => line,
                        None => return Ok(None),
                    },
                };
                if let InputLine::Unreadable { reason, .. } = &line {
                    *stopped = Some(reason.clone());
                }
                Ok(Some(jsonl_row(self.spec, line)))
            }
            Source::Csv { records, columns } => {
                let Some(record) = records
                    .next_record()
                    .await
                    .map_err(|e| read_error(self.key, e))?
                else {
                    return Ok(None);
                };
                Ok(Some(match record.fields {
                    Ok(fields) => columns.row(record.line, fields),
                    Err(reason) => Err(RowRejection::new(
                        spec::line_id(record.line),
                        record.line,
                        reason,
                    )),
                }))
            }
        }
    }

    /// Goes on from a checkpoint: line `line` ended `offset` bytes into the file. An
    /// uncompressed file is read on from `reopen` (the object from `offset`); a
    /// compressed one is decompressed again up to there (it cannot be entered in the
    /// middle) and `reopen` is not used.
    pub async fn resume<F>(
        &mut self,
        offset: u64,
        line: u64,
        reopen: F,
    ) -> Result<(), PipelineError>
    where
        F: std::future::Future<Output = Result<crate::storage::ByteStream, PipelineError>>,
    {
        let key = self.key;
        let lines = match &mut self.source {
            Source::Jsonl { lines, pending, .. } => {
                *pending = None;
                lines
            }
            Source::Csv { records, .. } => records.lines_mut(),
        };
        match lines.is_compressed() {
            true => lines
                .skip_through_line(line)
                .await
                .map_err(|e| read_error(key, e)),
            false => {
                lines.resume_from(reopen.await?, offset, line);
                Ok(())
            }
        }
    }

    /// The line reader below (for the extent read and the last line number).
    pub fn lines(&self) -> &LineReader {
        match &self.source {
            Source::Jsonl { lines, .. } => lines,
            Source::Csv { records, .. } => records.lines(),
        }
    }

    /// Why the file could not be read to its end, if it could not.
    pub fn stopped_early(&self) -> Option<&str> {
        match &self.source {
            Source::Jsonl { stopped, .. } => stopped.as_deref(),
            Source::Csv { records, .. } => records.stopped_early(),
        }
    }

    /// Why a file without a single row is refused.
    pub fn no_rows_reason(&self) -> &'static str {
        match self.source {
            Source::Jsonl { .. } => "the file has no request lines",
            Source::Csv { .. } => "the file has a header row but no data rows",
        }
    }
}

/// The reader's next line; a failure to fetch the object's bytes is a store error
/// for `key` (worth retrying).
pub async fn next_line(
    reader: &mut LineReader,
    key: &str,
) -> Result<Option<InputLine>, PipelineError> {
    reader.next_line().await.map_err(|e| read_error(key, e))
}

fn read_error(key: &str, e: InputError) -> PipelineError {
    StoreError::Backend {
        operation: "read",
        key: key.to_string(),
        message: e.to_string(),
    }
    .into()
}

/// A JSONL line turned into a row, or why it cannot be one.
fn jsonl_row(spec: &JobSpec, line: InputLine) -> Result<InputRow, RowRejection> {
    let too_long = |number: u64, length: u64| {
        let reason = format!(
            "line is {length} bytes, more than the {} allowed",
            spec.max_line_bytes
        );
        Err(RowRejection::new(spec::line_id(number), number, reason))
    };
    match line {
        InputLine::TooLong { number, length } => too_long(number, length),
        InputLine::Unreadable { number, reason } => {
            Err(RowRejection::new(spec::line_id(number), number, reason))
        }
        InputLine::Line { number, bytes } if bytes.len() > spec.max_line_bytes => {
            too_long(number, bytes.len() as u64)
        }
        InputLine::Line { number, bytes } => spec::parse_line(number, &bytes, &spec.keep),
    }
}

/// Where a CSV row's text comes from.
#[derive(Debug)]
enum RowText {
    /// One column, by name and position.
    Column(String, usize),
    /// The spec's template, its placeholders resolved to positions.
    Template(Vec<TemplatePart>),
}

#[derive(Debug)]
enum TemplatePart {
    Literal(String),
    Field(usize),
}

/// How the spec reads a CSV file's columns, resolved against its header.
#[derive(Debug)]
struct CsvColumns {
    /// Fields every row must have.
    width: usize,
    /// The id column's name and position.
    id: Option<(String, usize)>,
    text: RowText,
    /// The kept columns' names and positions, in `keep` order.
    kept: Vec<(String, usize)>,
}

/// Header names shown in an error about a missing column, at most.
const NAMES_SHOWN: usize = 20;

impl CsvColumns {
    /// The columns `spec` reads, found in `header`; the error names the spec field
    /// and the column (a missing one, or a header name given twice).
    fn from_header(header: &[String], spec: &JobSpec) -> Result<Self, String> {
        let mut positions = HashMap::with_capacity(header.len());
        for (position, name) in header.iter().enumerate() {
            if positions.insert(name.as_str(), position).is_some() {
                return Err(format!(
                    "it names column {name:?} twice; column names must be unique"
                ));
            }
        }
        let shown: Vec<String> = header
            .iter()
            .take(NAMES_SHOWN)
            .map(|name| format!("{name:?}"))
            .collect();
        let more = match header.len() > NAMES_SHOWN {
            true => ", …",
            false => "",
        };
        let column = |field: &str, name: &str| {
            positions.get(name).copied().ok_or_else(|| {
                format!(
                    "it has no column {name:?} (spec field `{field}`); its columns are {}{more}",
                    shown.join(", ")
                )
            })
        };
        let id = match &spec.id_column {
            Some(name) => Some((name.clone(), column("id_column", name)?)),
            None => None,
        };
        let text = match (&spec.text_column, spec.parsed_template()?) {
            (Some(name), _) => RowText::Column(name.clone(), column("text_column", name)?),
            (None, Some(template)) => RowText::Template(
                template
                    .pieces()
                    .iter()
                    .map(|piece| match piece {
                        Piece::Literal(text) => Ok(TemplatePart::Literal(text.clone())),
                        Piece::Column(name) => column("template", name).map(TemplatePart::Field),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            (None, None) => match positions.get("text") {
                Some(&position) => RowText::Column("text".into(), position),
                None => {
                    return Err(
                        "it has no column named \"text\" and the spec gives neither \
                         `text_column` (the column holding the text) nor `template` (a text \
                         built from columns)"
                            .to_string(),
                    );
                }
            },
        };
        let kept = spec
            .keep
            .iter()
            .map(|name| Ok((name.clone(), column("keep", name)?)))
            .collect::<Result<_, String>>()?;
        Ok(Self {
            width: header.len(),
            id,
            text,
            kept,
        })
    }

    /// A record's fields turned into a row, or why they cannot be one.
    fn row(&self, line: u64, fields: Vec<String>) -> Result<InputRow, RowRejection> {
        if fields.len() != self.width {
            let reason = format!(
                "the row has {} fields and the header {}; quote fields that hold commas",
                fields.len(),
                self.width
            );
            return Err(RowRejection::new(spec::line_id(line), line, reason));
        }
        let kept: Option<KeptValues> = (!self.kept.is_empty()).then(|| {
            self.kept
                .iter()
                .map(|(name, position)| (name.clone(), fields[*position].clone().into()))
                .collect()
        });
        let reject = |custom_id: String, reason: String| RowRejection {
            custom_id,
            line,
            reason,
            kept: kept.clone().map(Box::new),
        };
        let custom_id = match &self.id {
            None => spec::line_id(line),
            Some((name, position)) => {
                let id = &fields[*position];
                if id.trim().is_empty() {
                    let reason = format!("the id column {name:?} is empty");
                    return Err(reject(spec::line_id(line), reason));
                }
                spec::check_given_id(id, line)
                    .map_err(|reason| reject(spec::line_id(line), reason))?;
                id.clone()
            }
        };
        let text = match &self.text {
            RowText::Column(name, position) => {
                let text = &fields[*position];
                if text.trim().is_empty() {
                    return Err(reject(
                        custom_id,
                        format!("the text column {name:?} is empty"),
                    ));
                }
                text.clone()
            }
            RowText::Template(parts) => {
                let columns = || {
                    parts.iter().filter_map(|part| match part {
                        TemplatePart::Field(position) => Some(*position),
                        TemplatePart::Literal(_) => None,
                    })
                };
                if columns().all(|position| fields[position].trim().is_empty()) {
                    let reason = "every column of the template is empty".to_string();
                    return Err(reject(custom_id, reason));
                }
                parts
                    .iter()
                    .map(|part| match part {
                        TemplatePart::Literal(text) => text.as_str(),
                        TemplatePart::Field(position) => fields[*position].as_str(),
                    })
                    .collect()
            }
        };
        Ok(InputRow {
            line,
            request: Request {
                custom_id,
                messages: vec![Message::new(Role::User, text)],
            },
            kept,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(fields: serde_json::Value) -> JobSpec {
        let mut value = json!({"model": "openai/gpt-4o-mini"});
        value
            .as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        serde_json::from_value(value).unwrap()
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_template_fills_its_columns_and_kept_columns_ride_along() {
        let spec = spec(json!({
            "id_column": "sku", "template": "Title: {title}\n\n{body} {{x}}", "keep": ["region"]
        }));
        let columns =
            CsvColumns::from_header(&names(&["sku", "title", "body", "region"]), &spec).unwrap();
        let row = columns
            .row(3, names(&["A-1", "Lamp", "Bright", "EU"]))
            .unwrap();
        assert_eq!(row.request.custom_id, "A-1");
        assert_eq!(row.request.messages[0].content, "Title: Lamp\n\nBright {x}");
        assert_eq!(row.kept.unwrap()["region"], "EU");
    }

    #[test]
    fn a_header_that_does_not_fit_the_spec_names_the_column() {
        let cases: [(serde_json::Value, &[&str], &str); 6] = [
            (json!({"id_column": "sku"}), &["id", "text"], "`id_column`"),
            (
                json!({"text_column": "body"}),
                &["id", "text"],
                "`text_column`",
            ),
            (
                json!({"template": "{title} {body}"}),
                &["title", "text"],
                "\"body\"",
            ),
            (json!({"keep": ["region"]}), &["text"], "`keep`"),
            (json!({}), &["id", "body"], "`text_column`"),
            (json!({}), &["text", "a", "a"], "\"a\" twice"),
        ];
        for (fields, header, expected) in cases {
            let err = CsvColumns::from_header(&names(header), &spec(fields.clone())).unwrap_err();
            assert!(err.contains(expected), "{fields}: {err}");
        }
    }

    #[test]
    fn bad_rows_are_rejected_by_line_with_what_could_be_read() {
        let spec = spec(json!({"id_column": "id", "keep": ["region"]}));
        let columns = CsvColumns::from_header(&names(&["id", "text", "region"]), &spec).unwrap();
        let cases: [(&[&str], &str, &str, bool); 5] = [
            (&["a", "x"], "line-7", "2 fields and the header 3", false),
            (&["a", "x", "EU", "more"], "line-7", "4 fields", false),
            (
                &["", "x", "EU"],
                "line-7",
                "id column \"id\" is empty",
                true,
            ),
            (&["a/b", "x", "EU"], "line-7", "`/`", true),
            (
                &["a", " ", "EU"],
                "a",
                "text column \"text\" is empty",
                true,
            ),
        ];
        for (fields, id, reason, has_kept) in cases {
            let err = columns.row(7, names(fields)).unwrap_err();
            assert_eq!((err.custom_id.as_str(), err.line), (id, 7), "{err:?}");
            assert!(err.reason.contains(reason), "{err:?}");
            assert_eq!(err.kept.is_some(), has_kept, "{err:?}");
        }
        let template = spec_with_template();
        let columns = CsvColumns::from_header(&names(&["a", "b"]), &template).unwrap();
        let err = columns.row(2, names(&["", " "])).unwrap_err();
        assert!(err.reason.contains("every column"), "{err:?}");
        assert_eq!(
            columns.row(2, names(&["", "y"])).unwrap().request.custom_id,
            "line-2"
        );
    }

    fn spec_with_template() -> JobSpec {
        spec(json!({"template": "A: {a}; B: {b}"}))
    }
}
