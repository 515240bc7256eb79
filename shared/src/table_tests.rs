//! The table layout of each answer format and JSON Schema construct, and Parquet
//! files written by [`ParquetSuccesses`] read back value by value.

use arrow_array::RecordBatch;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};

use crate::request::{AnswerFormat, OutputSchema};
use crate::results::{Success, Usage};
use crate::table::{AnswerColumns, Column, ColumnKind, ParquetSuccesses, TableError, TableLayout};

fn schema_format(schema: Value) -> AnswerFormat {
    AnswerFormat::Schema(OutputSchema {
        name: "s".into(),
        schema,
    })
}

fn layout(schema: Value) -> TableLayout {
    TableLayout::for_answers(&schema_format(schema), &[]).unwrap()
}

fn column(name: &str, kind: ColumnKind, nullable: bool) -> Column {
    Column {
        name: name.into(),
        kind,
        nullable,
    }
}

/// The answer's columns: those between `custom_id` and `attempts` (no kept columns).
fn answer_columns(layout: &TableLayout) -> &[Column] {
    &layout.columns[1..layout.columns.len() - 5]
}

/// The one column of a schema `{"type": "object", "properties": {"v": property},
/// "required": ["v"]}`.
fn property_column(property: Value) -> Column {
    let layout = layout(json!({
        "type": "object", "properties": {"v": property}, "required": ["v"]
    }));
    assert_eq!(layout.answer, AnswerColumns::Properties);
    answer_columns(&layout)[0].clone()
}

#[test]
fn every_json_schema_type_maps_to_its_column_kind() {
    use ColumnKind::*;
    let item = |kind, nullable| Box::new(column("item", kind, nullable));
    let cases = [
        (json!({"type": "string"}), String, false),
        (
            json!({"type": "string", "format": "date-time"}),
            String,
            false,
        ),
        (json!({"type": "string", "enum": ["a", "b"]}), String, false),
        (json!({"enum": ["a", "b"]}), String, false),
        (json!({"const": "fixed"}), String, false),
        (json!({"enum": ["a", null]}), String, true),
        (json!({"type": "integer"}), Int64, true),
        (json!({"type": "number"}), Float64, false),
        (json!({"type": "boolean"}), Boolean, false),
        (json!({"type": ["string", "null"]}), String, true),
        (
            json!({"anyOf": [{"type": "number"}, {"type": "null"}]}),
            Float64,
            true,
        ),
        (
            json!({"oneOf": [{"type": "null"}, {"type": "boolean"}]}),
            Boolean,
            true,
        ),
        (json!({"allOf": [{"type": "boolean"}]}), Boolean, false),
        (
            json!({"type": "array", "items": {"type": "string"}}),
            List(item(String, false)),
            false,
        ),
        (
            json!({"type": "array", "items": {"type": ["string", "null"]}}),
            List(item(String, true)),
            false,
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}),
            Struct(vec![column("a", String, false)]),
            false,
        ),
        // Maps, tuples, unions, mixed enums, null alone and anything goes: JSON text.
        (
            json!({"type": "object", "additionalProperties": {"type": "string"}}),
            Json,
            true,
        ),
        (json!({"type": "object", "properties": {}}), Json, true),
        (
            json!({"type": "array", "prefixItems": [{"type": "string"}], "items": false}),
            Json,
            true,
        ),
        (
            json!({"type": "array", "items": [{"type": "string"}]}),
            Json,
            true,
        ),
        (json!({"type": "array"}), Json, true),
        (
            json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}),
            Json,
            true,
        ),
        (
            json!({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}),
            Json,
            true,
        ),
        (
            json!({"allOf": [{"type": "string"}, {"minLength": 1}]}),
            Json,
            true,
        ),
        (json!({"type": ["string", "integer"]}), Json, true),
        (json!({"enum": ["a", 1]}), Json, true),
        (json!({"const": 3}), Json, true),
        (json!({"type": "null"}), Json, true),
        (json!({}), Json, true),
        (json!(true), Json, true),
    ];
    for (property, kind, nullable) in cases {
        assert_eq!(
            property_column(property.clone()),
            column("v", kind, nullable),
            "{property}"
        );
    }
}

#[test]
fn refs_to_defs_and_definitions_are_followed_and_recursive_ones_are_json() {
    use ColumnKind::*;
    let point = Struct(vec![
        column("x", Float64, false),
        column("y", Float64, false),
    ]);
    for defs in ["$defs", "definitions"] {
        let layout = layout(json!({
            "type": "object",
            "properties": {
                "at": {"$ref": format!("#/{defs}/Point")},
                "tree": {"$ref": format!("#/{defs}/Node")},
            },
            "required": ["at", "tree"],
            defs: {
                "Point": {
                    "type": "object",
                    "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                    "required": ["x", "y"],
                },
                "Node": {
                    "type": "object",
                    "properties": {
                        "label": {"type": "string"},
                        "children": {"type": "array", "items": {"$ref": format!("#/{defs}/Node")}},
                    },
                    "required": ["label", "children"],
                },
            },
        }));
        assert_eq!(
            answer_columns(&layout),
            [
                column("at", point.clone(), false),
                column(
                    "tree",
                    Struct(vec![
                        column("label", String, false),
                        column(
                            "children",
                            List(Box::new(column("item", Json, true))),
                            false
                        ),
                    ]),
                    false,
                ),
            ]
        );
    }
    let broken = TableLayout::for_answers(
        &schema_format(json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/Gone"}}})),
        &[],
    );
    assert!(broken.unwrap_err().contains("#/$defs/Gone"));
}

#[test]
fn required_fields_are_non_null_only_inside_non_null_structs() {
    use ColumnKind::*;
    let inner = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "note": {"type": "string"}},
        "required": ["name"],
    });
    let layout = layout(json!({
        "type": "object",
        "properties": {
            "required_struct": inner,
            "optional_struct": inner,
            "nullable_struct": {"anyOf": [inner, {"type": "null"}]},
            "items": {"type": ["array", "null"], "items": inner},
        },
        "required": ["required_struct", "nullable_struct", "items"],
    }));
    let fields = |name_nullable| {
        Struct(vec![
            column("name", String, name_nullable),
            column("note", String, true),
        ])
    };
    assert_eq!(
        answer_columns(&layout),
        [
            column("required_struct", fields(false), false),
            column("optional_struct", fields(true), true),
            column("nullable_struct", fields(true), true),
            // A list's items start afresh: a null list has no items.
            column(
                "items",
                List(Box::new(column("item", fields(false), false))),
                true
            ),
        ]
    );
}

#[test]
fn each_answer_format_has_its_columns_around_the_fixed_ones() {
    let names = |layout: &TableLayout| -> Vec<String> {
        layout.columns.iter().map(|c| c.name.clone()).collect()
    };
    let fixed_tail = [
        "attempts",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "cache_write_input_tokens",
    ];
    let kept = vec!["source".to_string(), "page".to_string()];
    let text = TableLayout::for_answers(&AnswerFormat::Text, &kept).unwrap();
    assert_eq!(text.answer, AnswerColumns::Text);
    assert_eq!(
        names(&text),
        [&["custom_id", "text", "source", "page"][..], &fixed_tail].concat()
    );
    assert_eq!(text.columns[2], column("source", ColumnKind::String, true));
    let json_mode = TableLayout::for_answers(&AnswerFormat::JsonObject, &[]).unwrap();
    assert_eq!(json_mode.answer, AnswerColumns::Result);
    assert_eq!(
        json_mode.columns[1],
        column("result", ColumnKind::Json, true)
    );
    // A schema whose top level is not an object with properties: one JSON column.
    for schema in [
        json!({"type": "array", "items": {"type": "string"}}),
        json!({"type": "object"}),
        json!({"oneOf": [{"type": "object", "properties": {"a": {"type": "string"}}}, {"type": "string"}]}),
    ] {
        let layout = layout(schema);
        assert_eq!(layout.answer, AnswerColumns::Result);
        assert_eq!(
            names(&layout),
            [&["custom_id", "result"][..], &fixed_tail].concat()
        );
    }
    // Properties keep the schema's order, and a top-level $ref is followed.
    let ordered = layout(json!({
        "$ref": "#/$defs/Row",
        "$defs": {"Row": {"type": "object", "properties": {"z": {"type": "string"}, "a": {"type": "string"}}}},
    }));
    assert_eq!(
        names(&ordered),
        [&["custom_id", "z", "a"][..], &fixed_tail].concat()
    );
    assert_eq!(
        serde_json::from_value::<TableLayout>(serde_json::to_value(&ordered).unwrap()).unwrap(),
        ordered
    );
}

#[test]
fn a_name_used_twice_is_refused_by_name() {
    let schema = |property: &str| {
        schema_format(json!({"type": "object", "properties": {property: {"type": "string"}}}))
    };
    for (property, kept) in [
        ("attempts", vec![]),
        ("input_tokens", vec![]),
        ("custom_id", vec![]),
        ("title", vec!["title".to_string()]),
        ("Title", vec!["title".to_string()]),
        ("x", vec!["x".to_string(), "x".to_string()]),
    ] {
        let err = TableLayout::for_answers(&schema(property), &kept).unwrap_err();
        assert!(err.contains(&format!("{property:?}")), "{err}");
    }
    let err = TableLayout::for_answers(&AnswerFormat::Text, &["text".to_string()]).unwrap_err();
    assert!(err.contains("\"text\""), "{err}");
}

/// Every type at once: the schema of the round trip.
fn schema_of_every_type() -> Value {
    json!({
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "pages": {"type": "integer"},
            "score": {"type": "number"},
            "draft": {"type": "boolean"},
            "kind": {"type": "string", "enum": ["invoice", "receipt"]},
            "note": {"type": ["string", "null"]},
            "author": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
                "required": ["name"],
            },
            "tags": {"type": "array", "items": {"type": "string"}},
            "lines": {"type": "array", "items": {"$ref": "#/$defs/Line"}},
            "extra": {"oneOf": [{"type": "string"}, {"type": "object", "properties": {"a": {"type": "integer"}}}]},
        },
        "required": ["title", "pages", "score", "draft", "kind", "note", "author", "tags", "lines", "extra"],
        "$defs": {
            "Line": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                "required": ["sku", "qty"],
            },
        },
    })
}

fn success(id: &str, result: Value) -> Success {
    Success {
        custom_id: id.into(),
        result,
        text: None,
        usage: Usage {
            input_tokens: 100,
            output_tokens: 20,
            cached_input_tokens: 64,
            cache_write_input_tokens: 0,
        },
    }
}

/// The file's rows as JSON objects (nulls written out), and its row group count.
fn read_back(file: Vec<u8>, layout: &TableLayout) -> (Vec<Value>, usize) {
    let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(file)).unwrap();
    let row_groups = reader.metadata().num_row_groups();
    assert_eq!(reader.schema(), &layout.arrow_schema());
    let batches: Vec<RecordBatch> = reader.build().unwrap().map(Result::unwrap).collect();
    let mut writer = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow_json::writer::JsonArray>(Vec::new());
    writer
        .write_batches(&batches.iter().collect::<Vec<_>>())
        .unwrap();
    writer.finish().unwrap();
    let rows: Value = serde_json::from_slice(&writer.into_inner()).unwrap_or(json!([]));
    (rows.as_array().cloned().unwrap_or_default(), row_groups)
}

/// Writes `successes` through a writer, taking ready bytes after every row as
/// collect does; returns the file and how many times bytes were ready before the end.
fn write_all(writer: &mut ParquetSuccesses, successes: &[Success]) -> (Vec<u8>, usize) {
    let (mut file, mut handed_out) = (Vec::new(), 0);
    for success in successes {
        writer.push(success, 1, None).unwrap();
        let ready = writer.take_ready_bytes();
        handed_out += usize::from(!ready.is_empty());
        file.extend(ready);
    }
    (file, handed_out)
}

#[test]
fn every_value_reads_back_as_written() {
    let layout = layout(schema_of_every_type());
    let full = json!({
        "title": "Invoice 7", "pages": 3, "score": 0.25, "draft": false, "kind": "invoice",
        "note": "paid", "author": {"name": "Ada", "email": "ada@example.com"},
        "tags": ["a", "b"], "lines": [{"sku": "X1", "qty": 2}, {"sku": "Y2", "qty": -1}],
        "extra": {"a": 1},
    });
    let sparse = json!({
        "title": "", "pages": 9_007_199_254_740_993_i64, "score": -1e300, "draft": true,
        "kind": "receipt", "note": null, "author": {"name": "Bo"}, "tags": [], "lines": [],
        "extra": "just text",
    });
    let mut writer = ParquetSuccesses::new(&layout).unwrap();
    let (mut file, _) = write_all(
        &mut writer,
        &[success("r1", full.clone()), success("r2", sparse.clone())],
    );
    assert_eq!(writer.mismatched_values(), 0);
    file.extend(writer.finish().unwrap());
    let (rows, row_groups) = read_back(file, &layout);
    assert_eq!(row_groups, 1);
    let usage = json!({"attempts": 1, "input_tokens": 100, "output_tokens": 20, "cached_input_tokens": 64, "cache_write_input_tokens": 0});
    let expected = |id: &str, answer: &Value, extra: &str, email: Value| {
        let mut row = json!({"custom_id": id});
        let row_map = row.as_object_mut().unwrap();
        row_map.extend(answer.as_object().unwrap().clone());
        row_map["extra"] = json!(extra);
        row_map["author"]["email"] = email;
        row_map.extend(usage.as_object().unwrap().clone());
        row
    };
    assert_eq!(
        rows,
        [
            expected("r1", &full, r#"{"a":1}"#, json!("ada@example.com")),
            expected("r2", &sparse, r#""just text""#, Value::Null),
        ]
    );
}

#[test]
fn text_json_and_kept_columns_read_back() {
    let kept_names = vec!["source".to_string(), "page".to_string()];
    let layout = TableLayout::for_answers(&AnswerFormat::Text, &kept_names).unwrap();
    let mut writer = ParquetSuccesses::new(&layout).unwrap();
    let text = Success {
        text: Some("Bonjour".into()),
        ..success("t1", Value::Null)
    };
    let kept = json!({"source": "scan.pdf", "page": 4, "ignored": true});
    writer.push(&text, 2, kept.as_object()).unwrap();
    writer.push(&text, 1, None).unwrap();
    let (rows, _) = read_back(writer.finish().unwrap(), &layout);
    assert_eq!(rows[0]["text"], "Bonjour");
    assert_eq!(rows[0]["source"], "scan.pdf");
    assert_eq!(rows[0]["page"], "4");
    assert_eq!(rows[0]["attempts"], 2);
    assert_eq!(rows[1]["source"], Value::Null);

    let layout = TableLayout::for_answers(&AnswerFormat::JsonObject, &[]).unwrap();
    let mut writer = ParquetSuccesses::new(&layout).unwrap();
    writer
        .push(&success("j1", json!({"b": [1, 2], "a": "x"})), 1, None)
        .unwrap();
    let (rows, _) = read_back(writer.finish().unwrap(), &layout);
    assert_eq!(rows[0]["result"], r#"{"b":[1,2],"a":"x"}"#);
}

#[test]
fn integers_that_do_not_fit_are_null_and_counted() {
    let layout = layout(json!({
        "type": "object",
        "properties": {"n": {"type": "integer"}, "ns": {"type": "array", "items": {"type": "integer"}}},
        "required": ["n", "ns"],
    }));
    let mut writer = ParquetSuccesses::new(&layout).unwrap();
    let huge = json!({"n": u64::MAX, "ns": [3.0, 1e30, 4]});
    writer.push(&success("big", huge), 1, None).unwrap();
    assert_eq!(writer.mismatched_values(), 2);
    let (rows, _) = read_back(writer.finish().unwrap(), &layout);
    assert_eq!(rows[0]["n"], Value::Null);
    assert_eq!(rows[0]["ns"], json!([3, null, 4]));
}

#[test]
fn row_groups_close_at_their_bounds_and_their_bytes_are_handed_out_as_they_come() {
    let layout = layout(schema_of_every_type());
    let successes: Vec<Success> = (0..2500)
        .map(|i| {
            success(
                &format!("r{i}"),
                json!({
                    "title": format!("doc {i}"), "pages": i, "score": 1.5, "draft": false,
                    "kind": "invoice", "note": null, "author": {"name": "A"},
                    "tags": ["t", "u", "v"], "lines": [{"sku": "s", "qty": i}], "extra": i,
                }),
            )
        })
        .collect();
    // Bytes are measured after each decoded batch of 1024 rows: with a bound of one
    // byte, every batch is a row group.
    for (max_bytes, max_rows, groups) in [
        (usize::MAX, 1000, 3),
        (1, 5000, 3),
        (usize::MAX, 5000, 1),
        (usize::MAX, 7, 358),
    ] {
        let mut writer = ParquetSuccesses::with_row_groups(&layout, max_bytes, max_rows).unwrap();
        let (mut file, handed_out) = write_all(&mut writer, &successes);
        // Every completed row group but the last (closed by `finish`) left before.
        assert!(handed_out >= groups - 1, "{handed_out} of {groups}");
        file.extend(writer.finish().unwrap());
        let (rows, row_groups) = read_back(file, &layout);
        assert_eq!(row_groups, groups, "{max_bytes} bytes, {max_rows} rows");
        let ids: Vec<&str> = rows
            .iter()
            .map(|r| r["custom_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, (0..2500).map(|i| format!("r{i}")).collect::<Vec<_>>());
        assert_eq!(rows[9]["lines"], json!([{"sku": "s", "qty": 9}]));
        assert_eq!(rows[4]["extra"], "4");
    }
}

#[test]
fn a_value_missing_from_a_non_null_column_is_an_error() {
    // Validated answers always have their required values; anything else is refused.
    let layout = layout(schema_of_every_type());
    let mut writer = ParquetSuccesses::new(&layout).unwrap();
    writer
        .push(&success("a", json!({"title": "x", "tags": []})), 1, None)
        .unwrap();
    assert!(matches!(writer.finish(), Err(TableError::Encode(_))));
}

#[test]
fn the_same_rows_make_the_same_bytes() {
    let text = TableLayout::for_answers(&AnswerFormat::Text, &[]).unwrap();
    let file = || {
        let mut writer = ParquetSuccesses::new(&text).unwrap();
        writer
            .push(
                &Success {
                    text: Some("t".into()),
                    ..success("a", Value::Null)
                },
                1,
                None,
            )
            .unwrap();
        writer.finish().unwrap()
    };
    assert_eq!(file(), file());
}
