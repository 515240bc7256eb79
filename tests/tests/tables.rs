//! Parquet results end to end, read as users read them: a job asking for
//! `"formats": ["jsonl", "parquet"]` with a schema of every type runs through moto and
//! the emulator; its successes directory is downloaded and read by pyarrow and by
//! DuckDB's `read_parquet('dir/*.parquet')` (`tests/scripts/read_parquet.py`), and
//! every row is compared with the JSONL successes.

mod support;

use std::path::Path;
use std::process::Command;

use batchline::model::ProviderKind;
use batchline::pipeline::job::JobStatus;
use serde_json::{Value, json};
use support::{Harness, job_file_with};

/// Every type a schema can give a column: string, integer, number, boolean, enum,
/// nullable, nested object, array of strings, array of objects (through a `$ref`) and
/// a union of two alternatives (`union`: `oneOf`, or `anyOf` for OpenAI's strict mode,
/// which refuses `oneOf`), in that order.
fn schema_of_every_type(union: &str) -> Value {
    json!({
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "pages": {"type": "integer"},
            "total": {"type": "number"},
            "paid": {"type": "boolean"},
            "kind": {"type": "string", "enum": ["invoice", "receipt", "quote"]},
            "note": {"type": ["string", "null"]},
            "vendor": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
                "required": ["name", "country"],
                "additionalProperties": false,
            },
            "tags": {"type": "array", "items": {"type": "string"}},
            "lines": {"type": "array", "items": {"$ref": "#/$defs/Line"}},
            "extra": {union: [
                {
                    "type": "object",
                    "properties": {"code": {"type": "integer"}},
                    "required": ["code"],
                    "additionalProperties": false,
                },
                {"type": "string"},
            ]},
        },
        "required": ["title", "pages", "total", "paid", "kind", "note", "vendor", "tags", "lines", "extra"],
        "additionalProperties": false,
        "$defs": {
            "Line": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string"},
                    "qty": {"type": "integer"},
                    "price": {"type": "number"},
                },
                "required": ["sku", "qty", "price"],
                "additionalProperties": false,
            },
        },
    })
}

/// The column types each reader must see.
const PYARROW_TYPES: [(&str, &str); 15] = [
    ("custom_id", "string"),
    ("title", "string"),
    ("pages", "int64"),
    ("total", "double"),
    ("paid", "bool"),
    ("kind", "string"),
    ("note", "string"),
    (
        "vendor",
        "struct<name: string not null, country: string not null>",
    ),
    ("tags", "list<item: string not null>"),
    (
        "lines",
        "list<item: struct<sku: string not null, qty: int64, price: double not null> not null>",
    ),
    ("extra", "string"),
    ("attempts", "int64"),
    ("input_tokens", "int64"),
    ("output_tokens", "int64"),
    ("cached_input_tokens", "int64"),
];
const DUCKDB_TYPES: [(&str, &str); 6] = [
    ("pages", "BIGINT"),
    ("total", "DOUBLE"),
    ("paid", "BOOLEAN"),
    ("vendor", "STRUCT(\"name\" VARCHAR, country VARCHAR)"),
    ("tags", "VARCHAR[]"),
    ("lines", "STRUCT(sku VARCHAR, qty BIGINT, price DOUBLE)[]"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_successes_read_as_one_table_with_pyarrow_and_duckdb() {
    let h = Harness::start().await;
    let cases = [
        (ProviderKind::OpenAi, "anyOf"),
        (ProviderKind::Anthropic, "oneOf"),
        (ProviderKind::Gemini, "oneOf"),
    ];
    for (kind, union) in cases {
        // Three parts, so that the directory holds several files of one table.
        let spec = json!({
            "schema_name": "everything",
            "schema": schema_of_every_type(union),
            "formats": ["jsonl", "parquet"],
            "max_requests_per_part": 3,
        });
        let (body, ids) = job_file_with(kind, spec, 7, &[]);
        let job = h.submit(&format!("inbox/tables-{kind}.jsonl"), body).await;
        let record = h.run_to_end(&job).await;
        assert_eq!(record.status, JobStatus::Completed, "{kind}: {record:?}");
        let results = h.assert_invariant(&job, &ids).await;
        assert_eq!(results.successes.len(), 7, "{kind}: {:?}", results.errors);

        let dir = tempfile::tempdir().expect("temp dir");
        let files = download_parquet(&h, &job, dir.path()).await;
        assert_eq!(files, 3, "{kind}: one file per part");
        let read = read_with_python(dir.path());
        for reader in ["pyarrow", "duckdb"] {
            let rows = read[reader]["rows"].as_array().expect("rows");
            let mut expected = results.successes.clone();
            expected.sort_by(|a, b| a["custom_id"].as_str().cmp(&b["custom_id"].as_str()));
            assert_eq!(rows.len(), expected.len(), "{kind} {reader}");
            for (row, success) in rows.iter().zip(&expected) {
                assert_row_is_the_success(row, success, &format!("{kind} {reader}"));
            }
        }
        let types = |reader: &str, column: &str| read[reader]["types"][column].clone();
        for (column, type_name) in PYARROW_TYPES {
            assert_eq!(types("pyarrow", column), type_name, "{kind} {column}");
        }
        for (column, type_name) in DUCKDB_TYPES {
            assert_eq!(types("duckdb", column), type_name, "{kind} {column}");
        }
    }
}

/// Downloads the job's Parquet successes into `dir`; returns how many there were.
async fn download_parquet(h: &Harness, job: &str, dir: &Path) -> usize {
    let prefix = format!("results/{job}/successes/");
    let keys = h.ctx.store.list(&prefix).await.expect("list");
    let parquet: Vec<&String> = keys.iter().filter(|k| k.ends_with(".parquet")).collect();
    for key in &parquet {
        let (_, body) = h.ctx.store.get(key).await.expect("download");
        let name = key.rsplit('/').next().expect("file name");
        std::fs::write(dir.join(name), body).expect("write");
    }
    parquet.len()
}

/// What `tests/scripts/read_parquet.py` prints for `dir`.
fn read_with_python(dir: &Path) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tests/scripts/read_parquet.py"))
        .arg(dir)
        .output()
        .expect("run .venv/bin/python (make venv)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

/// A table row holds the JSONL success: its id, every answer property as mapped (the
/// union as its JSON text), its attempts and its usage.
fn assert_row_is_the_success(row: &Value, success: &Value, context: &str) {
    let context = format!("{context} {}", success["custom_id"]);
    assert_eq!(row["custom_id"], success["custom_id"], "{context}");
    let result = success["result"].as_object().expect("an object answer");
    for (name, value) in result {
        match name.as_str() {
            "extra" => {
                let text = row[name].as_str().expect("JSON text");
                let parsed: Value = serde_json::from_str(text).expect("valid JSON text");
                assert_eq!(&parsed, value, "{context} {name}");
            }
            _ => assert!(
                same(&row[name], value),
                "{context} {name}: {row} vs {value}"
            ),
        }
    }
    assert_eq!(row["attempts"], success["attempts"], "{context}");
    for usage in [
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cache_write_input_tokens",
    ] {
        let written = success["usage"][usage].as_u64().unwrap_or(0);
        assert_eq!(row[usage], written, "{context} {usage}");
    }
}

/// Equal values, numbers compared by value (`3` and `3.0` are the same number).
fn same(table: &Value, json: &Value) -> bool {
    match (table, json) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
        }
        _ => table == json,
    }
}
