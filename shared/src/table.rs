//! Successes as a table: the columns a job's answers map to, decided once from its
//! answer format, and a streaming Parquet writer over them.
//!
//! The layout is made at submit and stored in the job record, so every collect of
//! every part writes the same columns and the parts read as one table
//! (`read_parquet('results/<job>/successes/*.parquet')`).
//!
//! JSON Schema maps to Arrow types as the providers' structured outputs allow:
//! strings (any format, string enums and consts) to `Utf8`, integers to `Int64`,
//! numbers to `Float64`, booleans to `Boolean`, objects with properties to structs in
//! property order, arrays with `items` to lists; `type: [T, "null"]` and an
//! `anyOf`/`oneOf` of one schema and `{"type": "null"}` make `T` nullable; local
//! `$ref`s are followed. Everything without one Arrow type (maps, tuples, several
//! alternatives, mixed enums, recursive refs, `null` alone) is a [`ColumnKind::Json`]
//! column holding the value's JSON text.
//!
//! Nullability: a property not in `required` is nullable, and so is a required one
//! inside a nullable struct (a null struct has no values to give its fields).
//! `Int64` and `Json` columns are always nullable: an integer beyond the `Int64`
//! range is stored as null (and counted, [`ParquetSuccesses::mismatched_values`])
//! rather than failing a part, and a JSON `null` is stored as null.

use std::cell::Cell;
use std::io::Write;
use std::sync::Arc;

use arrow_json::reader::Decoder;
use arrow_schema::{ArrowError, DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::request::AnswerFormat;
use crate::results::Success;
use crate::schema::{resolve_local, type_names};

/// The columns of a job's successes table, in order: `custom_id`, the answer, the
/// kept input columns, `attempts` and the usage counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableLayout {
    /// Every column, in table order.
    pub columns: Vec<Column>,
    /// Which answer the columns after `custom_id` hold.
    pub answer: AnswerColumns,
    /// The input columns carried through, in order (their columns follow the answer's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
}

/// How the answer fills the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerColumns {
    /// One column per top-level property of the schema's object.
    Properties,
    /// One `result` column with the whole answer as JSON text.
    Result,
    /// One `text` column with the text answer.
    Text,
}

/// One column (or one field of a struct column, or the items of a list column).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// The column's name (a list's items are named `item`).
    pub name: String,
    /// What the column holds.
    pub kind: ColumnKind,
    /// Whether a row may have no value here.
    pub nullable: bool,
}

/// What a column holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    /// UTF-8 text.
    String,
    /// A 64-bit signed integer.
    Int64,
    /// A 64-bit float.
    Float64,
    /// True or false.
    Boolean,
    /// Any JSON value, as its JSON text in a UTF-8 column.
    Json,
    /// An object with these fields, in order.
    Struct(Vec<Column>),
    /// An array of these items.
    List(Box<Column>),
}

/// The column of each request's id.
const CUSTOM_ID: &str = "custom_id";
/// The one column of a text answer.
const TEXT: &str = "text";
/// The one column of an answer that is not an object with properties.
const RESULT: &str = "result";
/// The column of the number of attempts a request took.
const ATTEMPTS: &str = "attempts";
/// The usage columns, in the order [`usage_values`] gives them.
const USAGE: [&str; 4] = [
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_input_tokens",
];
/// The name Arrow gives a list's items.
const LIST_ITEM: &str = "item";

impl Column {
    fn new(name: impl Into<String>, kind: ColumnKind, nullable: bool) -> Self {
        Self {
            name: name.into(),
            kind,
            nullable,
        }
    }

    fn field(&self) -> Field {
        let data_type = match &self.kind {
            ColumnKind::String | ColumnKind::Json => DataType::Utf8,
            ColumnKind::Int64 => DataType::Int64,
            ColumnKind::Float64 => DataType::Float64,
            ColumnKind::Boolean => DataType::Boolean,
            ColumnKind::Struct(fields) => {
                DataType::Struct(fields.iter().map(Column::field).collect::<Fields>())
            }
            ColumnKind::List(item) => DataType::List(Arc::new(item.field())),
        };
        Field::new(&self.name, data_type, self.nullable)
    }
}

impl TableLayout {
    /// The layout of answers in `format`, with the input columns `kept` carried
    /// through as nullable strings. The error names a column name used twice (in
    /// any case: DuckDB does not tell `Name` from `name`) or a `$ref` that points
    /// nowhere.
    pub fn for_answers(format: &AnswerFormat, kept: &[String]) -> Result<TableLayout, String> {
        let mut columns = vec![Column::new(CUSTOM_ID, ColumnKind::String, false)];
        let whole = || Column::new(RESULT, ColumnKind::Json, true);
        let answer = match format {
            AnswerFormat::Schema(schema) => {
                let root = &schema.schema;
                match SchemaMapper::new(root)
                    .column(RESULT, root, false, "#")?
                    .kind
                {
                    ColumnKind::Struct(properties) => {
                        columns.extend(properties);
                        AnswerColumns::Properties
                    }
                    _ => {
                        columns.push(whole());
                        AnswerColumns::Result
                    }
                }
            }
            AnswerFormat::JsonObject => {
                columns.push(whole());
                AnswerColumns::Result
            }
            AnswerFormat::Text => {
                columns.push(Column::new(TEXT, ColumnKind::String, false));
                AnswerColumns::Text
            }
        };
        columns.extend(
            kept.iter()
                .map(|name| Column::new(name, ColumnKind::String, true)),
        );
        columns.push(Column::new(ATTEMPTS, ColumnKind::Int64, false));
        columns.extend(
            USAGE
                .iter()
                .map(|name| Column::new(*name, ColumnKind::Int64, false)),
        );
        for (i, column) in columns.iter().enumerate() {
            if let Some(other) = columns[..i]
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(&column.name))
            {
                return Err(format!(
                    "the results table would have two columns named {:?} and {:?}; rename \
                     the schema property or the kept input column",
                    other.name, column.name
                ));
            }
        }
        Ok(TableLayout {
            columns,
            answer,
            kept: kept.to_vec(),
        })
    }

    /// The Arrow schema of the table.
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns.iter().map(Column::field).collect::<Fields>(),
        ))
    }
}

/// Maps one JSON Schema (with its `$defs`) to columns.
struct SchemaMapper<'a> {
    root: &'a Value,
    /// `$ref`s being followed right now: one met again is recursive, hence Json.
    following: Vec<&'a str>,
}

/// A schema's column type, and whether it admits `null` itself.
struct Mapped {
    kind: ColumnKind,
    admits_null: bool,
}

impl Mapped {
    fn of(kind: ColumnKind) -> Self {
        Self {
            kind,
            admits_null: false,
        }
    }

    fn json() -> Self {
        Self {
            kind: ColumnKind::Json,
            admits_null: true,
        }
    }

    fn or_null(self, admits_null: bool) -> Self {
        Self {
            admits_null: self.admits_null || admits_null,
            ..self
        }
    }
}

impl<'a> SchemaMapper<'a> {
    fn new(root: &'a Value) -> Self {
        Self {
            root,
            following: Vec::new(),
        }
    }

    /// The column `name` of schema `node`; `may_be_absent` when the value may be
    /// missing (an optional property, or any field of a nullable struct).
    fn column(
        &mut self,
        name: &str,
        node: &'a Value,
        may_be_absent: bool,
        path: &str,
    ) -> Result<Column, String> {
        let mapped = self.map(node, path, may_be_absent)?;
        let nullable = may_be_absent
            || mapped.admits_null
            || matches!(mapped.kind, ColumnKind::Int64 | ColumnKind::Json);
        Ok(Column::new(name, mapped.kind, nullable))
    }

    /// `may_be_null`: the value may be null or absent, so a struct's fields may be too.
    fn map(&mut self, node: &'a Value, path: &str, may_be_null: bool) -> Result<Mapped, String> {
        let Value::Object(map) = node else {
            return Ok(Mapped::json());
        };
        if let Some(reference) = map.get("$ref") {
            return self.follow(reference, path, may_be_null);
        }
        for keyword in ["anyOf", "oneOf", "allOf"] {
            if let Some(alternatives) = map.get(keyword) {
                let path = format!("{path}/{keyword}");
                return self.alternatives(alternatives, &path, may_be_null);
            }
        }
        let types = type_names(map);
        let admits_null = types.contains(&"null");
        let may_be_null = may_be_null || admits_null;
        let named: Vec<&str> = types.into_iter().filter(|t| *t != "null").collect();
        let mapped = match named.as_slice() {
            [one] => self.typed(one, map, path, may_be_null)?,
            [] if map.contains_key("properties") => self.typed("object", map, path, may_be_null)?,
            [] if map.contains_key("items") => self.typed("array", map, path, may_be_null)?,
            [] => enumerated(map),
            _ => Mapped::json(),
        };
        Ok(mapped.or_null(admits_null))
    }

    fn typed(
        &mut self,
        type_name: &str,
        map: &'a Map<String, Value>,
        path: &str,
        may_be_null: bool,
    ) -> Result<Mapped, String> {
        Ok(match type_name {
            "string" => Mapped::of(ColumnKind::String),
            "integer" => Mapped::of(ColumnKind::Int64),
            "number" => Mapped::of(ColumnKind::Float64),
            "boolean" => Mapped::of(ColumnKind::Boolean),
            "object" => match map.get("properties") {
                Some(Value::Object(properties)) if !properties.is_empty() => {
                    Mapped::of(self.structure(map, properties, path, may_be_null)?)
                }
                _ => Mapped::json(),
            },
            "array" => match map.get("items") {
                // `items` as an array (or with `prefixItems`) is a tuple.
                Some(items @ Value::Object(_)) if !map.contains_key("prefixItems") => {
                    let item = self.column(LIST_ITEM, items, false, &format!("{path}/items"))?;
                    Mapped::of(ColumnKind::List(Box::new(item)))
                }
                _ => Mapped::json(),
            },
            _ => Mapped::json(),
        })
    }

    /// The struct of an object schema; in a struct that `may_be_null`, every field
    /// may be null too, since a null struct has no values to give them.
    fn structure(
        &mut self,
        map: &'a Map<String, Value>,
        properties: &'a Map<String, Value>,
        path: &str,
        may_be_null: bool,
    ) -> Result<ColumnKind, String> {
        let required: Vec<&str> = match map.get("required") {
            Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let fields = properties
            .iter()
            .map(|(name, property)| {
                let may_be_absent = may_be_null || !required.contains(&name.as_str());
                let path = format!("{path}/properties/{name}");
                self.column(name, property, may_be_absent, &path)
            })
            .collect::<Result<_, _>>()?;
        Ok(ColumnKind::Struct(fields))
    }

    fn follow(
        &mut self,
        reference: &'a Value,
        path: &str,
        may_be_null: bool,
    ) -> Result<Mapped, String> {
        let Value::String(reference) = reference else {
            return Err(format!("at {path}: $ref must be a string"));
        };
        if self.following.contains(&reference.as_str()) {
            return Ok(Mapped::json());
        }
        let target = resolve_local(self.root, reference).ok_or_else(|| {
            format!("at {path}: $ref {reference:?} does not point inside the schema")
        })?;
        self.following.push(reference);
        let mapped = self.map(target, reference, may_be_null);
        self.following.pop();
        mapped
    }

    fn alternatives(
        &mut self,
        alternatives: &'a Value,
        path: &str,
        may_be_null: bool,
    ) -> Result<Mapped, String> {
        let Value::Array(alternatives) = alternatives else {
            return Ok(Mapped::json());
        };
        let others = non_null(alternatives);
        let admits_null = others.len() < alternatives.len();
        match others.as_slice() {
            [only] => Ok(self
                .map(only, path, may_be_null || admits_null)?
                .or_null(admits_null)),
            _ => Ok(Mapped::json()),
        }
    }
}

/// The alternatives that are not `{"type": "null"}`.
fn non_null(alternatives: &[Value]) -> Vec<&Value> {
    alternatives
        .iter()
        .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"))
        .collect()
}

/// A schema without a type: strings if its `enum` or `const` holds only strings
/// (and perhaps null), JSON otherwise.
fn enumerated(map: &Map<String, Value>) -> Mapped {
    let values: Vec<&Value> = match (map.get("enum"), map.get("const")) {
        (Some(Value::Array(values)), _) => values.iter().collect(),
        (None, Some(value)) => vec![value],
        _ => return Mapped::json(),
    };
    let strings = values.iter().filter(|v| v.is_string()).count();
    let nulls = values.iter().filter(|v| v.is_null()).count();
    match strings > 0 && strings + nulls == values.len() {
        true => Mapped::of(ColumnKind::String).or_null(nulls > 0),
        false => Mapped::json(),
    }
}

/// What the Parquet writer can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// A row could not be turned into Arrow arrays (a value missing from a column
    /// that may not be null).
    #[error("encoding a results row for Parquet: {0}")]
    Encode(#[from] ArrowError),
    /// The Parquet encoder failed.
    #[error("writing Parquet: {0}")]
    Write(#[from] ParquetError),
}

/// Where a top-level column's value comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    CustomId,
    /// The answer object's property of the column's name.
    Property,
    /// The whole answer.
    Result,
    /// The text answer.
    Text,
    /// The kept input column of the column's name.
    Kept,
    Attempts,
    /// One of [`USAGE`], by index.
    Usage(usize),
}

impl Source {
    /// Names are unique in a layout ([`TableLayout::for_answers`]), so a column's
    /// name says where its value comes from.
    fn of(name: &str, layout: &TableLayout) -> Self {
        match name {
            CUSTOM_ID => Source::CustomId,
            ATTEMPTS => Source::Attempts,
            _ if layout.kept.iter().any(|kept| kept == name) => Source::Kept,
            _ => match USAGE.iter().position(|u| *u == name) {
                Some(i) => Source::Usage(i),
                None => match layout.answer {
                    AnswerColumns::Properties => Source::Property,
                    AnswerColumns::Result => Source::Result,
                    AnswerColumns::Text => Source::Text,
                },
            },
        }
    }
}

/// Successes written as Parquet while they arrive: rows are encoded into row groups
/// of bounded size, and the bytes of each completed row group are handed out
/// ([`Self::take_ready_bytes`]) so that memory stays flat however many rows a part has.
pub struct ParquetSuccesses {
    columns: Vec<(Column, Source)>,
    decoder: Decoder,
    writer: ArrowWriter<ReadyChunks>,
    /// Rows serialised into the decoder, not yet handed to the Parquet writer.
    decoded_rows: usize,
    rows_per_batch: usize,
    max_row_group_bytes: usize,
    tally: Tally,
}

/// What serialising rows counts as it goes.
#[derive(Default)]
struct Tally {
    /// Values that did not fit their column.
    mismatches: Cell<u64>,
    /// About how many bytes the rows in the decoder hold (a string its length, any
    /// other value 8): large answers close a batch before its row count.
    decoded_bytes: Cell<usize>,
}

impl Tally {
    fn add_bytes(&self, bytes: usize) {
        self.decoded_bytes.set(self.decoded_bytes.get() + bytes);
    }

    fn text<S: Serializer>(&self, serializer: S, text: &str) -> Result<S::Ok, S::Error> {
        self.add_bytes(text.len());
        serializer.serialize_str(text)
    }

    fn mismatch<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.mismatches.set(self.mismatches.get() + 1);
        serializer.serialize_none()
    }
}

impl ParquetSuccesses {
    /// A row group closes when its encoded data passes this many bytes… Closing one
    /// holds it a few times over (encoded pages, the bytes handed out, the upload
    /// buffer they are copied into): at 4 MiB, collect's heap with Parquet on stays
    /// under 64 MiB for answers of 100 KB (`tests/tests/streaming.rs`), 16 MiB took
    /// it to 92 MiB.
    pub const ROW_GROUP_BYTES: usize = 4 * 1024 * 1024;
    /// …or when the writer holds this much for it (small values wait unencoded for
    /// their page, and dictionaries grow: with answers of a few hundred bytes the
    /// writer holds several times the encoded size)…
    pub const ROW_GROUP_MEMORY: usize = 32 * 1024 * 1024;
    /// …or when it has this many rows.
    pub const ROW_GROUP_ROWS: usize = 64 * 1024;
    /// Rows decoded at a time into one Arrow batch…
    const ROWS_PER_BATCH: usize = 1024;
    /// …unless they reach this many bytes first (the decoder holds a few times that).
    const BATCH_BYTES: usize = 1024 * 1024;
    /// What [`Tally`] counts for a value that is not a string.
    const SCALAR_BYTES: usize = 8;

    /// A writer of rows in `layout` with the default row group bounds.
    pub fn new(layout: &TableLayout) -> Result<Self, TableError> {
        Self::with_row_groups(layout, Self::ROW_GROUP_BYTES, Self::ROW_GROUP_ROWS)
    }

    /// A writer of rows in `layout` whose row groups close at `max_bytes` of encoded
    /// data, at [`Self::ROW_GROUP_MEMORY`] held, or at `max_rows` rows, whichever
    /// comes first.
    pub fn with_row_groups(
        layout: &TableLayout,
        max_bytes: usize,
        max_rows: usize,
    ) -> Result<Self, TableError> {
        let schema = layout.arrow_schema();
        let rows_per_batch = Self::ROWS_PER_BATCH.min(max_rows).max(1);
        let decoder = arrow_json::ReaderBuilder::new(schema.clone())
            .with_batch_size(rows_per_batch)
            .build_decoder()?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(max_rows.max(1)))
            .build();
        let writer = ArrowWriter::try_new(ReadyChunks::default(), schema, Some(properties))?;
        Ok(Self {
            columns: layout
                .columns
                .iter()
                .map(|c| (c.clone(), Source::of(&c.name, layout)))
                .collect(),
            decoder,
            writer,
            decoded_rows: 0,
            rows_per_batch,
            max_row_group_bytes: max_bytes,
            tally: Tally::default(),
        })
    }

    /// Adds one success, its number of attempts and its kept input columns.
    pub fn push(
        &mut self,
        success: &Success,
        attempts: u32,
        kept: Option<&Map<String, Value>>,
    ) -> Result<(), TableError> {
        let row = Row {
            columns: &self.columns,
            tally: &self.tally,
            success,
            attempts,
            kept,
        };
        self.decoder.serialize(&[row])?;
        self.decoded_rows += 1;
        if self.decoded_rows >= self.rows_per_batch
            || self.tally.decoded_bytes.get() >= Self::BATCH_BYTES
        {
            self.write_decoded()?;
        }
        Ok(())
    }

    fn write_decoded(&mut self) -> Result<(), TableError> {
        if let Some(batch) = self.decoder.flush()? {
            self.writer.write(&batch)?;
        }
        self.decoded_rows = 0;
        self.tally.decoded_bytes.set(0);
        if self.writer.in_progress_size() >= self.max_row_group_bytes
            || self.writer.memory_size() >= Self::ROW_GROUP_MEMORY
        {
            self.writer.flush()?;
        }
        // Row groups completed above (or by the writer at its row bound) reach the
        // sink past the writer's small buffer, so that they can be handed out now.
        self.writer.sync().map_err(ParquetError::from)?;
        Ok(())
    }

    /// The encoded bytes of the row groups completed since the last call, in file
    /// order; empty while the current row group fills.
    pub fn take_ready_bytes(&mut self) -> Vec<u8> {
        // The writer counts the bytes it wrote itself (for the footer's offsets), so
        // taking them out of its sink is safe.
        self.writer.inner_mut().take()
    }

    /// Values stored as null because they did not fit their column (an integer
    /// beyond the `Int64` range).
    pub fn mismatched_values(&self) -> u64 {
        self.tally.mismatches.get()
    }

    /// Encodes the rows left and the footer: the file's remaining bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, TableError> {
        self.write_decoded()?;
        Ok(self.writer.into_inner()?.take())
    }
}

/// Where the Parquet writer's bytes wait to be handed out, in the pieces they were
/// written in: one growing buffer would double its capacity (and copy) while a row
/// group is written into it, holding up to three times the row group at once.
#[derive(Default)]
struct ReadyChunks(Vec<Vec<u8>>);

impl ReadyChunks {
    /// The bytes written since the last call, in one buffer of their size.
    fn take(&mut self) -> Vec<u8> {
        let chunks = std::mem::take(&mut self.0);
        let mut bytes = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
        // Each piece is freed once copied.
        for chunk in chunks {
            bytes.extend_from_slice(&chunk);
        }
        bytes
    }
}

impl Write for ReadyChunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One success as a row of the layout, serialised straight into the decoder.
struct Row<'a> {
    columns: &'a [(Column, Source)],
    tally: &'a Tally,
    success: &'a Success,
    attempts: u32,
    kept: Option<&'a Map<String, Value>>,
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tally = self.tally;
        tally.add_bytes(
            self.success.custom_id.len() + (1 + USAGE.len()) * ParquetSuccesses::SCALAR_BYTES,
        );
        let usage = usage_values(self.success);
        let mut row = serializer.serialize_map(Some(self.columns.len()))?;
        for (column, source) in self.columns {
            let name = column.name.as_str();
            match source {
                Source::CustomId => row.serialize_entry(name, &self.success.custom_id)?,
                Source::Text => {
                    tally.add_bytes(self.success.text.as_ref().map_or(0, String::len));
                    row.serialize_entry(name, &self.success.text)?
                }
                Source::Attempts => row.serialize_entry(name, &self.attempts)?,
                Source::Usage(i) => row.serialize_entry(name, &usage[*i])?,
                Source::Kept => {
                    let value = self.kept.and_then(|kept| kept.get(name));
                    row.serialize_entry(name, &value.map(|value| KeptValue { tally, value }))?
                }
                Source::Result => row.serialize_entry(
                    name,
                    &Shaped::new(tally, &self.success.result, &column.kind),
                )?,
                Source::Property => {
                    let value = self.success.result.get(name).unwrap_or(&Value::Null);
                    row.serialize_entry(name, &Shaped::new(tally, value, &column.kind))?
                }
            }
        }
        row.end()
    }
}

/// The usage counts in [`USAGE`] order.
fn usage_values(success: &Success) -> [u64; 4] {
    let usage = &success.usage;
    [
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
        usage.cache_write_input_tokens,
    ]
}

/// A kept input value: a string as it is, anything else as its JSON text.
struct KeptValue<'a> {
    tally: &'a Tally,
    value: &'a Value,
}

impl Serialize for KeptValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.value {
            Value::Null => serializer.serialize_none(),
            Value::String(text) => self.tally.text(serializer, text),
            other => self.tally.text(serializer, &other.to_string()),
        }
    }
}

/// An answer value serialised as its column's kind wants it.
struct Shaped<'a> {
    tally: &'a Tally,
    value: &'a Value,
    kind: &'a ColumnKind,
}

impl<'a> Shaped<'a> {
    fn new(tally: &'a Tally, value: &'a Value, kind: &'a ColumnKind) -> Self {
        Self { tally, value, kind }
    }
}

impl Serialize for Shaped<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tally = self.tally;
        if !matches!(
            self.value,
            Value::String(_) | Value::Array(_) | Value::Object(_)
        ) {
            tally.add_bytes(ParquetSuccesses::SCALAR_BYTES);
        }
        match (self.kind, self.value) {
            (_, Value::Null) => serializer.serialize_none(),
            (ColumnKind::Json, value) => tally.text(serializer, &value.to_string()),
            (ColumnKind::String, Value::String(text)) => tally.text(serializer, text),
            (ColumnKind::Boolean, Value::Bool(b)) => serializer.serialize_bool(*b),
            (ColumnKind::Float64, Value::Number(n)) => match n.as_f64() {
                Some(f) => serializer.serialize_f64(f),
                None => tally.mismatch(serializer),
            },
            // JSON Schema counts 3.0 as an integer too.
            (ColumnKind::Int64, Value::Number(n)) => match n.as_i64().or_else(|| whole(n)) {
                Some(i) => serializer.serialize_i64(i),
                None => tally.mismatch(serializer),
            },
            (ColumnKind::Struct(fields), Value::Object(object)) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for field in fields {
                    let value = object.get(&field.name).unwrap_or(&Value::Null);
                    map.serialize_entry(&field.name, &Shaped::new(tally, value, &field.kind))?;
                }
                map.end()
            }
            (ColumnKind::List(item), Value::Array(values)) => {
                let mut list = serializer.serialize_seq(Some(values.len()))?;
                for value in values {
                    list.serialize_element(&Shaped::new(tally, value, &item.kind))?;
                }
                list.end()
            }
            _ => tally.mismatch(serializer),
        }
    }
}

/// A float without a fractional part inside the `Int64` range, as that integer.
fn whole(n: &serde_json::Number) -> Option<i64> {
    let f = n.as_f64()?;
    // i64::MAX as f64 rounds up to 2^63, itself out of range.
    (f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
}
