//! Reading the YAML tree field by field, keeping the line of every node and collecting
//! every problem instead of stopping at the first.
//!
//! Why saphyr's `MarkedYaml` rather than serde: a serde deserializer stops at the first
//! error, and `config check` must report all of them. saphyr (the maintained successor of
//! yaml-rust) gives a tree with a span on every node, keys included, so each check below
//! can name its line, and a problem found much later (by the plugin runtime) can still be
//! attributed to the line of the `source:` or `config:` it comes from.

use std::path::{Path, PathBuf};

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use super::problem::Problem;

/// Parse `text` into its single YAML document. Syntax errors are problems too, located by
/// the parser.
pub fn parse_document<'y>(file: &Path, text: &'y str) -> Result<MarkedYaml<'y>, Problem> {
    let mut docs = MarkedYaml::load_from_str(text).map_err(|e| {
        Problem::new(
            file,
            e.marker().line(),
            "(yaml)",
            format!("failed to parse YAML: {}", e.info()),
        )
    })?;
    match docs.len() {
        0 => Err(Problem::new(file, 1, "(file)", "the file is empty")),
        1 => Ok(docs.remove(0)),
        _ => Err(Problem::new(
            file,
            docs[1].span.start.line(),
            "(file)",
            "the file holds more than one YAML document; a config is exactly one",
        )),
    }
}

/// One node of the tree with the dotted path and line it is reported under.
#[derive(Clone)]
pub struct Field<'a, 'y> {
    pub node: &'a MarkedYaml<'y>,
    pub path: String,
    pub line: usize,
}

impl<'a, 'y> Field<'a, 'y> {
    /// The document. Problems of the file as a whole (a missing section) are reported at
    /// line 1, wherever the first key is.
    pub fn root(node: &'a MarkedYaml<'y>) -> Self {
        Field {
            node,
            path: String::new(),
            line: 1,
        }
    }

    fn child(&self, key: &str, line: usize, node: &'a MarkedYaml<'y>) -> Self {
        let path = if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        };
        Field { node, path, line }
    }

    fn element(&self, index: usize, node: &'a MarkedYaml<'y>) -> Self {
        Field {
            node,
            path: format!("{}[{index}]", self.path),
            line: node.span.start.line(),
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.node.data, YamlData::Value(Scalar::Null))
    }
}

/// What a node is, for messages such as "expected a string, found a list".
fn kind(node: &MarkedYaml<'_>) -> &'static str {
    match &node.data {
        YamlData::Value(Scalar::Null) => "nothing (null)",
        YamlData::Value(Scalar::Boolean(_)) => "a boolean",
        YamlData::Value(Scalar::Integer(_)) => "an integer",
        YamlData::Value(Scalar::FloatingPoint(_)) => "a number",
        YamlData::Value(Scalar::String(_)) | YamlData::Representation(..) => "a string",
        YamlData::Sequence(_) => "a list",
        YamlData::Mapping(_) => "a mapping",
        YamlData::Tagged(..) => "a tagged node",
        YamlData::Alias(_) | YamlData::BadValue => "an invalid value",
    }
}

/// Reads fields out of one config file and collects the problems it meets.
pub struct Reader {
    file: PathBuf,
    problems: Vec<Problem>,
}

/// A mapping whose keys have been checked against the known ones.
pub struct Section<'a, 'y> {
    pub field: Field<'a, 'y>,
    entries: Vec<(&'a str, Field<'a, 'y>)>,
    /// False when the node is not a mapping (already reported): its keys are then not
    /// reported missing one by one.
    is_mapping: bool,
}

impl<'a, 'y> Section<'a, 'y> {
    /// The value of `key`, if present and not null (an empty `key:` counts as absent).
    pub fn get(&self, key: &str) -> Option<Field<'a, 'y>> {
        self.entries
            .iter()
            .find(|(k, f)| *k == key && !f.is_null())
            .map(|(_, f)| f.clone())
    }

    /// Line of `key` if it is written (even without a value), else of the section itself.
    pub fn line_of(&self, key: &str) -> usize {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(self.field.line, |(_, f)| f.line)
    }

    /// Dotted path of `key` in this section.
    pub fn path_of(&self, key: &str) -> String {
        if self.field.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.field.path)
        }
    }

    /// The value of a required `key`; reports it missing otherwise.
    pub fn required(&self, reader: &mut Reader, key: &str, hint: &str) -> Option<Field<'a, 'y>> {
        let found = self.get(key);
        if found.is_none() && self.is_mapping {
            reader.report(
                self.line_of(key),
                self.path_of(key),
                format!("missing (required){hint}"),
            );
        }
        found
    }
}

impl Reader {
    pub fn new(file: &Path) -> Self {
        Reader {
            file: file.to_path_buf(),
            problems: Vec::new(),
        }
    }

    pub fn report(&mut self, line: usize, field: impl Into<String>, message: impl Into<String>) {
        self.problems
            .push(Problem::new(&self.file, line, field, message));
    }

    pub fn into_problems(self) -> Vec<Problem> {
        self.problems
    }

    fn wrong_kind(&mut self, field: &Field<'_, '_>, expected: &str) {
        self.report(
            field.line,
            &field.path,
            format!("expected {expected}, found {}", kind(field.node)),
        );
    }

    /// Open a mapping. Every key must be a string and one of `known`; others are reported
    /// with the list of known keys (a typo must never be silently ignored).
    pub fn section<'a, 'y>(&mut self, field: &Field<'a, 'y>, known: &[&str]) -> Section<'a, 'y> {
        let mut entries = Vec::new();
        let YamlData::Mapping(map) = &field.node.data else {
            if !field.is_null() {
                self.wrong_kind(field, "a mapping");
            }
            // An empty section (`node:`) still reports its required keys.
            return Section {
                field: field.clone(),
                entries,
                is_mapping: field.is_null(),
            };
        };
        for (key, value) in map {
            let line = key.span.start.line();
            let YamlData::Value(Scalar::String(name)) = &key.data else {
                self.report(
                    line,
                    &field.path,
                    format!("keys must be strings, found {}", kind(key)),
                );
                continue;
            };
            let name: &'a str = name;
            let child = field.child(name, line, value);
            if known.contains(&name) {
                entries.push((name, child));
            } else {
                self.report(
                    line,
                    child.path,
                    format!("unknown field (known: {})", known.join(", ")),
                );
            }
        }
        Section {
            field: field.clone(),
            entries,
            is_mapping: true,
        }
    }

    /// A string. Numbers and booleans are refused rather than converted: `controller-id:
    /// 0123` would silently become `123`, so the operator is asked to quote it.
    pub fn string(&mut self, field: &Field<'_, '_>) -> Option<String> {
        match &field.node.data {
            YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
            YamlData::Value(Scalar::Integer(_) | Scalar::FloatingPoint(_) | Scalar::Boolean(_)) => {
                self.report(
                    field.line,
                    &field.path,
                    format!("expected a string, found {} (quote it)", kind(field.node)),
                );
                None
            }
            _ => {
                self.wrong_kind(field, "a string");
                None
            }
        }
    }

    /// A string or a plain integer, as text (memory sizes may be written either way).
    pub fn string_or_integer(&mut self, field: &Field<'_, '_>) -> Option<String> {
        match &field.node.data {
            YamlData::Value(Scalar::Integer(n)) => Some(n.to_string()),
            _ => self.string(field),
        }
    }

    /// A boolean (`true` or `false`; YAML's `yes`/`no` are strings in YAML 1.2, refused).
    pub fn boolean(&mut self, field: &Field<'_, '_>) -> Option<bool> {
        match &field.node.data {
            YamlData::Value(Scalar::Boolean(b)) => Some(*b),
            _ => {
                self.wrong_kind(field, "true or false");
                None
            }
        }
    }

    /// An integer within `min..=max`.
    pub fn integer(&mut self, field: &Field<'_, '_>, min: i64, max: i64) -> Option<i64> {
        match &field.node.data {
            YamlData::Value(Scalar::Integer(n)) if (min..=max).contains(n) => Some(*n),
            YamlData::Value(Scalar::Integer(n)) => {
                self.report(
                    field.line,
                    &field.path,
                    format!("{n} is out of range ({min}..={max})"),
                );
                None
            }
            _ => {
                self.wrong_kind(field, "an integer");
                None
            }
        }
    }

    /// A list; each element comes with its own path (`field[i]`) and line.
    pub fn list<'a, 'y>(&mut self, field: &Field<'a, 'y>) -> Option<Vec<Field<'a, 'y>>> {
        match &field.node.data {
            YamlData::Sequence(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, n)| field.element(i, n))
                    .collect(),
            ),
            _ => {
                self.wrong_kind(field, "a list");
                None
            }
        }
    }

    /// A mapping of strings to strings (labels).
    pub fn string_map<'a, 'y>(
        &mut self,
        field: &Field<'a, 'y>,
    ) -> Option<Vec<(String, Field<'a, 'y>, String)>> {
        let YamlData::Mapping(map) = &field.node.data else {
            self.wrong_kind(field, "a mapping");
            return None;
        };
        let mut out = Vec::new();
        for (key, value) in map {
            let line = key.span.start.line();
            let YamlData::Value(Scalar::String(name)) = &key.data else {
                self.report(
                    line,
                    &field.path,
                    format!("keys must be strings, found {}", kind(key)),
                );
                continue;
            };
            let child = field.child(name, line, value);
            if let Some(v) = self.string(&child) {
                out.push((name.to_string(), child, v));
            }
        }
        Some(out)
    }

    /// Any YAML value as JSON, for a plugin's free-form `config:` section. Mapping keys must
    /// be strings and numbers finite, since JSON has nothing else to offer.
    pub fn json(&mut self, field: &Field<'_, '_>) -> Option<serde_json::Value> {
        use serde_json::Value;
        match &field.node.data {
            YamlData::Value(scalar) => match scalar {
                Scalar::Null => Some(Value::Null),
                Scalar::Boolean(b) => Some(Value::Bool(*b)),
                Scalar::Integer(n) => Some(Value::from(*n)),
                Scalar::FloatingPoint(x) => match serde_json::Number::from_f64(x.into_inner()) {
                    Some(n) => Some(Value::Number(n)),
                    None => {
                        self.report(
                            field.line,
                            &field.path,
                            format!("{x} cannot be represented in JSON"),
                        );
                        None
                    }
                },
                Scalar::String(s) => Some(Value::String(s.to_string())),
            },
            YamlData::Sequence(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.json(&field.element(i, item)) {
                        Some(v) => out.push(v),
                        None => ok = false,
                    }
                }
                ok.then_some(Value::Array(out))
            }
            YamlData::Mapping(map) => {
                let mut out = serde_json::Map::new();
                let mut ok = true;
                for (key, value) in map {
                    let line = key.span.start.line();
                    let YamlData::Value(Scalar::String(name)) = &key.data else {
                        self.report(
                            line,
                            &field.path,
                            format!("keys must be strings, found {}", kind(key)),
                        );
                        ok = false;
                        continue;
                    };
                    match self.json(&field.child(name, line, value)) {
                        Some(v) => {
                            out.insert(name.to_string(), v);
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(Value::Object(out))
            }
            _ => {
                self.report(
                    field.line,
                    &field.path,
                    format!("{} cannot be represented in JSON", kind(field.node)),
                );
                None
            }
        }
    }
}
