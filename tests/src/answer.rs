//! Deterministic answers that follow a JSON schema and are drawn from the request's
//! own text: a string is a few consecutive words of the text, a number one found in it
//! (when one fits the schema), booleans and enum values are seeded. The same text and
//! schema always give the same answer.

use std::sync::LazyLock;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// A deterministic answer that conforms to `schema`, drawn from `text` (see the module
/// doc) and seeded by it.
///
/// Answers reach the full depth of the schema: every property is filled at every
/// level. A `$ref` met again inside its own expansion (a recursive schema) is answered
/// with its smallest form: required properties only, arrays at `minItems`, the `null`
/// or non-recursive branch of a union. A recursion no valid answer can escape (a
/// required self-reference) ends in `null`.
pub fn answer_for(schema: &Value, text: &str) -> Value {
    answer_at(schema, schema, text)
}

/// Like [`answer_for`], for the part `node` of the schema `root` (`$ref`s inside `node`
/// resolve against `root`).
pub fn answer_at(root: &Value, node: &Value, text: &str) -> Value {
    let digest = Sha256::digest(text.as_bytes());
    let mut generator = AnswerGen {
        root,
        seed: u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) | 1,
        expanding: vec![ROOT_REF.to_string()],
        minimal: 0,
        words: words_of(text),
        numbers: numbers_of(text),
    };
    generator.value(node)
}

/// The words of `text` that answers are made of: whitespace-separated, outer punctuation
/// trimmed, fault markers and row headings left out.
fn words_of(text: &str) -> Vec<&str> {
    text.split_whitespace()
        .filter(|word| !word.starts_with("[[fault:") && *word != "###")
        .map(|word| word.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|word| !word.is_empty())
        .collect()
}

/// Every number written in `text` (`-12`, `3.5`, `1,240.50`), in order. A `-` is a sign
/// only where a word could not go on through it (`INV-0113` holds 113, not -113), and a
/// comma followed by three digits groups thousands.
fn numbers_of(text: &str) -> Vec<f64> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let negative =
            i > 0 && bytes[i - 1] == b'-' && (i < 2 || !bytes[i - 2].is_ascii_alphanumeric());
        let mut digits = String::from(if negative { "-" } else { "" });
        let take_digits = |i: &mut usize, digits: &mut String| {
            while *i < bytes.len() && bytes[*i].is_ascii_digit() {
                digits.push(char::from(bytes[*i]));
                *i += 1;
            }
        };
        take_digits(&mut i, &mut digits);
        while i + 3 < bytes.len()
            && bytes[i] == b','
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
            && bytes.get(i + 4).is_none_or(|b| !b.is_ascii_digit())
        {
            i += 1;
            take_digits(&mut i, &mut digits);
        }
        if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
            digits.push('.');
            i += 1;
            take_digits(&mut i, &mut digits);
        }
        if let Ok(number) = digits.parse::<f64>() {
            out.push(number);
        }
    }
    out
}

/// The inclusive bounds and divisor a numeric schema allows (`minimum`, `maximum`,
/// their exclusive forms, `multipleOf`, and the `int32`/`uint32` formats).
struct NumberRange {
    lo: f64,
    hi: f64,
    exclusive_lo: bool,
    exclusive_hi: bool,
    multiple_of: Option<f64>,
}

impl NumberRange {
    fn of(schema: &Value) -> Self {
        let get = |key: &str| schema.get(key).and_then(Value::as_f64);
        let (format_lo, format_hi) = match schema.get("format").and_then(Value::as_str) {
            Some("int32") => (f64::from(i32::MIN), f64::from(i32::MAX)),
            Some("uint32") => (0.0, f64::from(u32::MAX)),
            _ => (f64::MIN, f64::MAX),
        };
        let (lo, exclusive_lo) = match (get("minimum"), get("exclusiveMinimum")) {
            (_, Some(x)) => (x, true),
            (Some(x), None) => (x, false),
            (None, None) => (format_lo.max(-1e15), false),
        };
        let (hi, exclusive_hi) = match (get("maximum"), get("exclusiveMaximum")) {
            (_, Some(x)) => (x, true),
            (Some(x), None) => (x, false),
            (None, None) => (format_hi.min(1e15), false),
        };
        Self {
            lo,
            hi,
            exclusive_lo,
            exclusive_hi,
            multiple_of: get("multipleOf").filter(|m| *m > 0.0),
        }
    }

    fn fits(&self, x: f64, integer: bool) -> bool {
        let above = if self.exclusive_lo {
            x > self.lo
        } else {
            x >= self.lo
        };
        let below = if self.exclusive_hi {
            x < self.hi
        } else {
            x <= self.hi
        };
        let whole = !integer || x.fract() == 0.0;
        let multiple = self
            .multiple_of
            .is_none_or(|m| ((x / m) - (x / m).round()).abs() < 1e-9);
        above && below && whole && multiple
    }
}

/// An answer that breaks `schema`: every required property is dropped, and if none
/// are required a property gets the wrong type.
pub fn schema_breaking_answer(schema: &Value, text: &str) -> Value {
    let good = answer_for(schema, text);
    match good {
        Value::Object(_) => json!({"unexpected": [1, 2, 3], "__broken": true}),
        _ => json!({"not": "what the schema asked for"}),
    }
}

/// The reference that names the whole schema.
const ROOT_REF: &str = "#";

/// Keywords whose value is a schema or a list of schemas an answer may have to follow.
const SUBSCHEMA_KEYWORDS: [&str; 6] = [
    "items",
    "prefixItems",
    "additionalProperties",
    "anyOf",
    "oneOf",
    "allOf",
];

/// What an array's items are when its schema does not say.
static DEFAULT_ITEMS: LazyLock<Value> = LazyLock::new(|| json!({"type": "string"}));

struct AnswerGen<'a> {
    root: &'a Value,
    seed: u64,
    /// The `$ref`s being expanded, outermost first (the root counts as `#`).
    expanding: Vec<String>,
    /// How many of those were met again inside themselves: above 0, answers are minimal.
    minimal: usize,
    /// The words of the text answers are drawn from.
    words: Vec<&'a str>,
    /// The numbers written in that text.
    numbers: Vec<f64>,
}

impl<'a> AnswerGen<'a> {
    /// A number of the text that fits `schema`, else a seeded one in its range.
    fn number(&mut self, schema: &Value, integer: bool) -> Value {
        let range = NumberRange::of(schema);
        let fitting: Vec<f64> = self
            .numbers
            .iter()
            .copied()
            .filter(|x| range.fits(*x, integer))
            .collect();
        let x = if fitting.is_empty() {
            self.seeded_number(&range, integer)
        } else {
            fitting[(self.next() % fitting.len() as u64) as usize]
        };
        if integer { json!(x as i64) } else { json!(x) }
    }

    fn seeded_number(&mut self, range: &NumberRange, integer: bool) -> f64 {
        let lo = if range.lo <= -1e15 { 0.0 } else { range.lo };
        let hi = if range.hi >= 1e15 {
            lo + 100.0
        } else {
            range.hi
        };
        let step = range.multiple_of.unwrap_or(if integer { 1.0 } else { 0.0 });
        if step > 0.0 {
            let first = (lo / step).ceil();
            let last = (hi / step).floor().max(first);
            let k = first + (self.next() % ((last - first) as u64 + 1)) as f64;
            // An exclusive bound can rule out the first or last multiple only.
            let k = [k, k + 1.0, k - 1.0]
                .into_iter()
                .find(|k| range.fits(k * step, integer))
                .unwrap_or(k);
            return k * step;
        }
        let frac = (self.next() % 1000) as f64 / 1000.0;
        let x = lo + (hi - lo) * frac;
        if range.fits(x, false) {
            x
        } else {
            (lo + hi) / 2.0
        }
    }

    /// One to three consecutive words of the text from a seeded position, padded to
    /// `minLength` and cut at `maxLength`.
    fn string(&mut self, schema: &Value) -> Value {
        let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
        let mut s = if self.words.is_empty() {
            let word = WORDS[(self.next() % WORDS.len() as u64) as usize];
            format!("{word}-{}", self.next() % 10_000)
        } else {
            let start = (self.next() % self.words.len() as u64) as usize;
            let count = 1 + (self.next() % 3) as usize;
            self.words[start..(start + count).min(self.words.len())].join(" ")
        };
        let mut more = s.chars().count() < min;
        let mut next_word = 0;
        while more {
            let word = self.words.get(next_word).copied().unwrap_or("x");
            s.push(' ');
            s.push_str(word);
            next_word += 1;
            more = s.chars().count() < min;
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
            s = s.chars().take(max as usize).collect();
        }
        json!(s)
    }

    fn next(&mut self) -> u64 {
        // xorshift: deterministic and cheap.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    fn target(&self, reference: &str) -> &'a Value {
        reference
            .strip_prefix('#')
            .and_then(|pointer| self.root.pointer(pointer))
            .unwrap_or(&Value::Null)
    }

    fn value(&mut self, schema: &'a Value) -> Value {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            return self.value_inner(schema);
        };
        let seen = self.expanding.iter().filter(|r| *r == reference).count();
        if seen > 1 {
            // Met again while already answering minimally: nothing finite is valid.
            return Value::Null;
        }
        let recursive = seen == 1;
        self.expanding.push(reference.to_string());
        self.minimal += usize::from(recursive);
        let out = self.value(self.target(reference));
        self.minimal -= usize::from(recursive);
        self.expanding.pop();
        out
    }

    /// Whether answering `schema` can lead back into a `$ref` being expanded.
    fn recurses(&self, schema: &'a Value, visited: &mut Vec<&'a str>) -> bool {
        let Value::Object(node) = schema else {
            return false;
        };
        if let Some(reference) = node.get("$ref").and_then(Value::as_str) {
            if self.expanding.iter().any(|r| r == reference) {
                return true;
            }
            if visited.contains(&reference) {
                return false;
            }
            visited.push(reference);
            return self.recurses(self.target(reference), visited);
        }
        let properties = node
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(Map::values);
        let subschemas = SUBSCHEMA_KEYWORDS
            .iter()
            .filter_map(|keyword| node.get(*keyword))
            .flat_map(|child| match child {
                Value::Array(list) => list.iter().collect::<Vec<_>>(),
                other => vec![other],
            });
        properties
            .chain(subschemas)
            .any(|child| self.recurses(child, visited))
    }

    fn is_null_schema(&self, schema: &Value) -> bool {
        let schema = match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => self.target(reference),
            None => schema,
        };
        schema.get("type") == Some(&json!("null"))
    }

    /// The union branch to answer with: one with content normally; when minimal, `null`
    /// or else a branch that does not recurse.
    fn branch(&self, options: &'a [Value]) -> Option<&'a Value> {
        if self.minimal > 0 {
            options
                .iter()
                .find(|o| self.is_null_schema(o))
                .or_else(|| options.iter().find(|o| !self.recurses(o, &mut Vec::new())))
                .or(options.first())
        } else {
            options
                .iter()
                .find(|o| !self.is_null_schema(o))
                .or(options.first())
        }
    }

    fn value_inner(&mut self, schema: &'a Value) -> Value {
        if let Some(options) = schema.get("enum").and_then(Value::as_array)
            && !options.is_empty()
        {
            let i = (self.next() % options.len() as u64) as usize;
            return options[i].clone();
        }
        if let Some(c) = schema.get("const") {
            return c.clone();
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(options) = schema.get(key).and_then(Value::as_array) {
                return self
                    .branch(options)
                    .map(|b| self.value(b))
                    .unwrap_or(Value::Null);
            }
        }
        let ty = match schema.get("type") {
            Some(Value::String(t)) => t.as_str(),
            Some(Value::Array(types)) if self.minimal > 0 && types.contains(&json!("null")) => {
                "null"
            }
            Some(Value::Array(types)) => types
                .iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "null")
                .unwrap_or("null"),
            _ if schema.get("properties").is_some() => "object",
            _ => "string",
        };
        match ty {
            "object" => self.object(schema),
            "array" => self.array(schema),
            "integer" => self.number(schema, true),
            "number" => self.number(schema, false),
            "boolean" => json!(self.next().is_multiple_of(2)),
            "null" => Value::Null,
            _ => self.string(schema),
        }
    }

    /// Every property; only the required ones when answering minimally.
    fn object(&mut self, schema: &'a Value) -> Value {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut out = Map::new();
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                if self.minimal == 0 || required.contains(&name.as_str()) {
                    out.insert(name.clone(), self.value(prop));
                }
            }
        }
        Value::Object(out)
    }

    /// One to three items (at least `minItems`, at most `maxItems`); exactly `minItems`
    /// when answering minimally.
    fn array(&mut self, schema: &'a Value) -> Value {
        let min = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0);
        let max = schema
            .get("maxItems")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        let n = if self.minimal > 0 {
            min
        } else {
            min.clamp(1, 3).min(max).max(min)
        };
        let items = schema.get("items").unwrap_or(&DEFAULT_ITEMS);
        Value::Array((0..n).map(|_| self.value(items)).collect())
    }
}

const WORDS: [&str; 8] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
];

#[cfg(test)]
mod tests {

    #[test]
    fn numbers_are_read_as_written() {
        assert_eq!(
            numbers_of("Invoice 2024-0113, total EUR 1,240.50; refund -12 (-3.5) and 48,000"),
            [2024.0, 113.0, 1240.5, -12.0, -3.5, 48000.0]
        );
        assert_eq!(numbers_of("12,34 and 1,2345"), [12.0, 34.0, 1.0, 2345.0]);
    }

    use super::*;

    #[test]
    fn answers_are_deterministic_and_fill_every_property() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer", "minimum": 1, "maximum": 9},
                "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}},
                "kind": {"enum": ["a", "b"]},
                "note": {"type": ["string", "null"]}
            },
            "$defs": {"tag": {"type": "string"}}
        });
        let a = answer_for(&schema, "seed");
        assert_eq!(a, answer_for(&schema, "seed"));
        for key in ["name", "age", "tags", "kind", "note"] {
            assert!(a.get(key).is_some(), "{key} missing in {a}");
        }
        let age = a["age"].as_i64().unwrap();
        assert!((1..=9).contains(&age));
        assert!(a["tags"][0].is_string());
        assert!(a["note"].is_string());
    }

    fn assert_valid(schema: &Value, answer: &Value) {
        let validator = jsonschema::validator_for(schema).expect("a valid schema");
        let errors: Vec<String> = validator
            .iter_errors(answer)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:?} in {answer}");
    }

    #[test]
    fn answers_reach_the_full_depth_of_the_schema() {
        let levels = 20;
        let schema = (1..levels).fold(
            json!({"type": "object", "properties": {"leaf": {"type": "integer", "minimum": 7, "maximum": 7}}, "required": ["leaf"]}),
            |inner, _| json!({"type": "object", "properties": {"name": {"type": "string"}, "child": inner}, "required": ["name", "child"]}),
        );
        let answer = answer_for(&schema, "deep");
        assert_valid(&schema, &answer);
        let mut node = &answer;
        for level in 1..levels {
            assert!(
                node["name"].is_string(),
                "no name at level {level}: {answer}"
            );
            node = &node["child"];
        }
        assert_eq!(node["leaf"], json!(7), "{answer}");
    }

    #[test]
    fn recursive_schemas_get_finite_valid_answers() {
        let tree = json!({
            "$defs": {"node": {"type": "object", "properties": {
                "name": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}
            }, "required": ["name", "children"]}},
            "$ref": "#/$defs/node"
        });
        let answer = answer_for(&tree, "tree");
        assert_valid(&tree, &answer);
        // The root is expanded in full, its children once more in their smallest form.
        let children = answer["children"].as_array().expect("children");
        assert!(!children.is_empty(), "{answer}");
        assert!(
            children.iter().all(|c| c["children"] == json!([])),
            "{answer}"
        );

        let list = json!({
            "type": "object",
            "properties": {
                "value": {"type": "integer"},
                "note": {"type": "string"},
                "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
                "previous": {"type": ["object", "null"], "properties": {"next": {"$ref": "#"}}}
            },
            "required": ["value", "next"]
        });
        let answer = answer_for(&list, "list");
        assert_valid(&list, &answer);
        assert_eq!(answer["next"]["next"], Value::Null, "{answer}");
        assert!(
            answer["next"].get("note").is_none(),
            "optional dropped: {answer}"
        );

        let branches = json!({
            "$defs": {"expr": {"oneOf": [
                {"type": "object", "properties": {"sum": {"type": "array", "minItems": 2, "items": {"$ref": "#/$defs/expr"}}}, "required": ["sum"]},
                {"type": "object", "properties": {"number": {"type": "integer"}}, "required": ["number"]}
            ]}},
            "$ref": "#/$defs/expr"
        });
        let answer = answer_for(&branches, "expr");
        assert_valid(&branches, &answer);
        let terms = answer["sum"]
            .as_array()
            .expect("the root takes the first branch");
        assert_eq!(terms.len(), 2);
        assert!(terms.iter().all(|t| t["number"].is_i64()), "{answer}");
    }

    #[test]
    fn inescapable_recursion_ends_in_null() {
        let endless = json!({"type": "object", "properties": {"again": {"$ref": "#"}}, "required": ["again"]});
        assert_eq!(answer_for(&endless, "x"), json!({"again": {"again": null}}));
    }

    #[test]
    fn arrays_keep_between_min_and_max_items() {
        let schema = json!({"type": "object", "properties": {
            "five": {"type": "array", "minItems": 5, "items": {"type": "integer"}},
            "none": {"type": "array", "maxItems": 0},
            "some": {"type": "array"}
        }});
        let answer = answer_for(&schema, "arrays");
        assert_valid(&schema, &answer);
        assert_eq!(answer["five"].as_array().map(Vec::len), Some(5));
        assert_eq!(answer["none"], json!([]));
        assert!(answer["some"][0].is_string());
    }
}
