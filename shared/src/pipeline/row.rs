//! What one row of an upload becomes (a request with the values the spec's `keep`
//! carries through, or a rejection), and how kept values travel to the results: a
//! part's `.kept` side file beside its id manifest, and top-level fields of every
//! record of the row.

use std::collections::HashMap;

use serde::Serialize;

use crate::request::Request;

/// A row's kept values: each name of the spec's `keep` with the row's value (`null`
/// where a JSONL line lacks the field), in `keep` order.
pub type KeptValues = serde_json::Map<String, serde_json::Value>;

/// A row of the upload turned into a request.
#[derive(Debug, Clone, PartialEq)]
pub struct InputRow {
    /// 1-based line of the file the row starts on.
    pub line: u64,
    /// The request sent for the row.
    pub request: Request,
    /// The row's kept values; `None` when the spec keeps nothing.
    pub kept: Option<KeptValues>,
}

/// Why a row of the upload was not turned into a request.
#[derive(Debug, Clone, PartialEq)]
pub struct RowRejection {
    /// The row's id where it could be read, else `line-N`.
    pub custom_id: String,
    /// 1-based line of the file the row starts on.
    pub line: u64,
    /// What is wrong with the row (the error record's `error_message`).
    pub reason: String,
    /// The row's kept values, where the row could be read that far (boxed: most
    /// rejections have none).
    pub kept: Option<Box<KeptValues>>,
}

impl RowRejection {
    /// A rejection of the row on `line` under `custom_id`, without kept values.
    pub fn new(custom_id: String, line: u64, reason: String) -> Self {
        Self {
            custom_id,
            line,
            reason,
            kept: None,
        }
    }
}

/// A part's `.kept` file: one JSON object per row of `ids` (the part's rows in
/// manifest order) holding that row's kept values.
pub fn kept_file(ids: &[String], kept: &HashMap<String, KeptValues>) -> Vec<u8> {
    let none = KeptValues::new();
    let mut out = Vec::new();
    for id in ids {
        // Writing to a Vec cannot fail and kept values are JSON already.
        serde_json::to_writer(&mut out, kept.get(id).unwrap_or(&none))
            .expect("kept values serialise to JSON");
        out.push(b'\n');
    }
    out
}

/// Reads a `.kept` file ([`kept_file`]) back; the error says which line is not a
/// JSON object, or that the file does not have one line per row.
pub fn parse_kept_file(file: &[u8], rows: usize) -> Result<Vec<KeptValues>, String> {
    let kept = file
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_slice::<KeptValues>(line)
                .map_err(|e| format!("line {} is not a JSON object: {e}", i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if kept.len() != rows {
        return Err(format!(
            "it has {} lines for the part's {rows} rows",
            kept.len()
        ));
    }
    Ok(kept)
}

/// The start of every result record: success and failure records both write their
/// `custom_id` first.
const RECORD_START: &[u8] = b"{\"custom_id\":";

/// Appends `record` (a success or failure of `custom_id`, serialised with its id
/// first) as one JSON line, with the row's kept values as top-level fields right
/// after `custom_id`.
pub fn write_record<T: Serialize>(
    record: &T,
    custom_id: &str,
    kept: Option<&KeptValues>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    // Writing to a Vec cannot fail and records hold only string-keyed JSON.
    serde_json::to_writer(&mut *out, record).expect("records serialise to JSON");
    if let Some(kept) = kept.filter(|kept| !kept.is_empty()) {
        debug_assert!(out[start..].starts_with(RECORD_START));
        // Spliced in rather than serialised through a map, so that a record with kept
        // values costs no second pass over its answer.
        let id_length = serde_json::to_string(custom_id)
            .expect("strings serialise")
            .len();
        let after_id = start + RECORD_START.len() + id_length;
        let mut fields = serde_json::to_vec(kept).expect("kept values serialise to JSON");
        fields[0] = b',';
        fields.pop();
        out.splice(after_id..after_id, fields);
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::results::Failure;

    fn kept(value: serde_json::Value) -> KeptValues {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn kept_values_follow_the_custom_id() {
        let failure = Failure::new("a\"1", "invalid_input", "why");
        let mut out = Vec::new();
        write_record(
            &failure,
            &failure.custom_id,
            Some(&kept(json!({"sku": "x,1", "n": null}))),
            &mut out,
        );
        write_record(&failure, &failure.custom_id, None, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"custom_id":"a\"1","sku":"x,1","n":null,"error_type":"invalid_input","error_message":"why"}"#
        );
        assert_eq!(
            lines[1],
            r#"{"custom_id":"a\"1","error_type":"invalid_input","error_message":"why"}"#
        );
    }

    #[test]
    fn a_kept_file_has_one_object_per_row_in_manifest_order() {
        let ids = ["b".to_string(), "a".to_string()];
        let values = HashMap::from([
            ("a".to_string(), kept(json!({"sku": "1"}))),
            ("b".to_string(), kept(json!({"sku": "2"}))),
        ]);
        let file = kept_file(&ids, &values);
        assert_eq!(file, b"{\"sku\":\"2\"}\n{\"sku\":\"1\"}\n");
        let back = parse_kept_file(&file, 2).unwrap();
        assert_eq!(back[0]["sku"], "2");
        assert!(parse_kept_file(&file, 3).unwrap_err().contains("2 lines"));
        assert!(parse_kept_file(b"[]\n", 1).unwrap_err().contains("line 1"));
    }
}
