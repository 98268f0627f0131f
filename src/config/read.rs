//! A small reader over the merged config tree (`config::Value`) that records a [`ConfigIssue`]
//! for every problem instead of stopping at the first one, as serde's derive would.
//!
//! Section readers open a [`Table`], read each key with a scalar reader (`fn(&Value) ->
//! Result<T, String>`, the error saying what was expected and what was found) or a nested
//! reader (`FnOnce(&mut Cx, &str, &Value) -> Option<T>`), and finish the table, which reports
//! the keys nobody asked for.

use std::collections::BTreeMap;
use std::time::Duration;

use ::config::{Value, ValueKind};

use super::{parse_duration, ConfigIssue, ValueChecks, ENV_PREFIX};

/// The origin the `config` crate gives values read by its `Environment` source.
const ENV_ORIGIN: &str = "the environment";

/// Start of the message of a missing required key (see [`is_missing`]).
const MISSING: &str = "required key is missing";

/// Whether `issue` says a required key is missing.
pub(super) fn is_missing(issue: &ConfigIssue) -> bool {
    issue.message.starts_with(MISSING)
}

/// The issues found so far, and the checks of values in other modules' languages.
pub(super) struct Cx<'c> {
    pub(super) issues: Vec<ConfigIssue>,
    /// Keys that were read but have no effect: reported, not refused.
    pub(super) warnings: Vec<ConfigIssue>,
    /// Run on each expression, partitioner and the properties where they are read.
    pub(super) checks: &'c dyn ValueChecks,
}

impl<'c> Cx<'c> {
    /// A fresh context that runs `checks`.
    pub(super) fn new(checks: &'c dyn ValueChecks) -> Self {
        Self {
            issues: Vec::new(),
            warnings: Vec::new(),
            checks,
        }
    }

    /// Records a warning: the key at `path` is valid but has no effect.
    pub(super) fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigIssue::new(path, message));
    }

    /// Records an issue.
    pub(super) fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue::new(path, message));
    }

    /// Records that the required key at `path` is missing; `hint` (may be empty) says more.
    pub(super) fn missing(&mut self, path: impl Into<String>, hint: &str) {
        let message = if hint.is_empty() {
            MISSING.to_string()
        } else {
            format!("{MISSING} ({hint})")
        };
        self.issue(path, message);
    }

    /// Applies a scalar reader to the value at `path`, recording its error.
    pub(super) fn scalar<T>(
        &mut self,
        path: &str,
        value: &Value,
        read: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        match read(value) {
            Ok(v) => Some(v),
            Err(message) => {
                let message = with_env_origin(message, path, value);
                self.issue(path, message);
                None
            }
        }
    }

    /// Opens the table at `path`, or records that `value` is not a table.
    pub(super) fn table<'v>(&mut self, path: &str, value: &'v Value) -> Option<Table<'v>> {
        match &value.kind {
            ValueKind::Table(map) => Some(Table {
                path: path.to_string(),
                entries: map.iter().map(|(k, v)| (k.as_str(), v)).collect(),
                known: Vec::new(),
            }),
            _ => {
                let message = format!("expected a table, found {}", describe(value));
                self.issue(path, with_env_origin(message, path, value));
                None
            }
        }
    }

    /// The items of the array at `path`, or records that `value` is not an array (`expected`
    /// describes what should be there).
    pub(super) fn array<'v>(
        &mut self,
        path: &str,
        value: &'v Value,
        expected: &str,
    ) -> Option<&'v [Value]> {
        match &value.kind {
            ValueKind::Array(items) => Some(items),
            _ => {
                let message = format!("expected {expected}, found {}", describe(value));
                self.issue(path, with_env_origin(message, path, value));
                None
            }
        }
    }
}

/// A table being read: remembers which keys were asked for, to report the others.
pub(super) struct Table<'v> {
    path: String,
    entries: BTreeMap<&'v str, &'v Value>,
    known: Vec<&'static str>,
}

impl<'v> Table<'v> {
    /// A table with no keys (for an absent optional section).
    pub(super) fn empty(path: &str) -> Self {
        Self {
            path: path.to_string(),
            entries: BTreeMap::new(),
            known: Vec::new(),
        }
    }

    /// The path of `key` in this table.
    pub(super) fn key_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Whether `key` is present (with any value).
    pub(super) fn has(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Marks `key` as known and returns its path and value, if present.
    pub(super) fn get(&mut self, key: &'static str) -> Option<(String, &'v Value)> {
        self.known.push(key);
        let value = *self.entries.get(key)?;
        if matches!(value.kind, ValueKind::Nil) {
            return None;
        }
        Some((self.key_path(key), value))
    }

    /// Reads optional `key` with a nested reader.
    pub(super) fn opt_with<T>(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        read: impl FnOnce(&mut Cx, &str, &'v Value) -> Option<T>,
    ) -> Option<T> {
        let (path, value) = self.get(key)?;
        read(cx, &path, value)
    }

    /// Reads required `key` with a nested reader; records an issue when it is missing.
    pub(super) fn req_with<T>(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        read: impl FnOnce(&mut Cx, &str, &'v Value) -> Option<T>,
    ) -> Option<T> {
        if !self.has(key) {
            cx.missing(self.key_path(key), "");
        }
        self.opt_with(cx, key, read)
    }

    /// Reads optional `key` with a scalar reader.
    pub(super) fn opt<T>(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        read: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        self.opt_with(cx, key, |cx, path, value| cx.scalar(path, value, read))
    }

    /// Reads required `key` with a scalar reader; records an issue when it is missing.
    pub(super) fn req<T>(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        read: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        self.req_with(cx, key, |cx, path, value| cx.scalar(path, value, read))
    }

    /// Opens the sub-table `key`: empty when absent, so that its required keys are reported
    /// one by one; empty (after recording an issue) when it is not a table.
    pub(super) fn section(&mut self, cx: &mut Cx, key: &'static str) -> Table<'v> {
        let path = self.key_path(key);
        self.opt_with(cx, key, |cx, path, value| cx.table(path, value))
            .unwrap_or_else(|| Table::empty(&path))
    }

    /// The entries, for a table whose keys are free-form (no unknown-key check).
    pub(super) fn into_entries(self) -> BTreeMap<&'v str, &'v Value> {
        self.entries
    }

    /// Reports every key that was not asked for, with a suggestion when one is close.
    pub(super) fn finish(self, cx: &mut Cx) {
        for (key, value) in &self.entries {
            if self.known.iter().any(|k| k == key) {
                continue;
            }
            let path = self.key_path(key);
            let mut message = match suggest(key, self.known.iter().copied()) {
                Some(near) => format!("unknown key (did you mean `{near}`?)"),
                None => {
                    let known: Vec<String> = self.known.iter().map(|k| format!("`{k}`")).collect();
                    format!("unknown key (known keys: {})", known.join(", "))
                }
            };
            let vars = env_vars(&path, value);
            if !vars.is_empty() {
                message.push_str(&format!(" (from environment variable {})", vars.join(", ")));
            }
            cx.issue(path, message);
        }
    }
}

/// Appends `key` to `path`, quoting it unless it is a plain identifier.
pub(super) fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (true, false) => format!("{key:?}"),
        (false, true) => format!("{path}.{key}"),
        (false, false) => format!("{path}.{key:?}"),
    }
}

fn from_env(value: &Value) -> bool {
    value.origin() == Some(ENV_ORIGIN)
}

/// The environment variable that sets the key at `path`.
fn env_var(path: &str) -> String {
    let levels: Vec<String> = path.split('.').map(str::to_uppercase).collect();
    format!("{ENV_PREFIX}{}", levels.join("__"))
}

/// The environment variables that set `value` or anything inside it.
fn env_vars(path: &str, value: &Value) -> Vec<String> {
    match &value.kind {
        ValueKind::Table(map) => {
            let mut vars: Vec<String> = map
                .iter()
                .flat_map(|(k, v)| env_vars(&format!("{path}.{k}"), v))
                .collect();
            vars.sort();
            vars
        }
        _ if from_env(value) => vec![env_var(path)],
        _ => Vec::new(),
    }
}

fn with_env_origin(message: String, path: &str, value: &Value) -> String {
    if from_env(value) {
        format!("{message} (from environment variable {})", env_var(path))
    } else {
        message
    }
}

/// How a value is shown in "found ..." messages.
pub(super) fn describe(value: &Value) -> String {
    match &value.kind {
        ValueKind::Nil => "nothing".to_string(),
        ValueKind::Boolean(b) => format!("boolean {b}"),
        ValueKind::I64(n) => format!("integer {n}"),
        ValueKind::I128(n) => format!("integer {n}"),
        ValueKind::U64(n) => format!("integer {n}"),
        ValueKind::U128(n) => format!("integer {n}"),
        ValueKind::Float(x) => format!("float {x}"),
        ValueKind::String(s) => format!("string {s:?}"),
        ValueKind::Table(_) => "a table".to_string(),
        ValueKind::Array(_) => "an array".to_string(),
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub(super) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word = word.to_lowercase();
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, counting a swap of two neighbours as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

// ---- scalar readers ----

/// Any string.
pub(super) fn string(value: &Value) -> Result<String, String> {
    match &value.kind {
        ValueKind::String(s) => Ok(s.clone()),
        _ => Err(format!("expected a string, found {}", describe(value))),
    }
}

/// A string that is not blank.
pub(super) fn non_empty(value: &Value) -> Result<String, String> {
    let s = string(value)?;
    if s.trim().is_empty() {
        return Err("must not be empty".to_string());
    }
    Ok(s)
}

/// A name usable in Kafka topic names: letters, digits, `.`, `_`, `-`.
pub(super) fn name(value: &Value) -> Result<String, String> {
    let s = non_empty(value)?;
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !s.chars().all(valid) {
        return Err(format!(
            "expected a name made of letters, digits, '.', '_' and '-', found {}",
            describe(value)
        ));
    }
    if s == "." || s == ".." {
        // Kafka refuses them as topic names, and `app.id` names a directory under state.dir.
        return Err(format!("{} is not a usable name", describe(value)));
    }
    Ok(s)
}

/// An integer of at least 1.
pub(super) fn positive<T: TryFrom<u64>>(value: &Value) -> Result<T, String> {
    unsigned(value, 1)
}

/// An integer of at least 0.
pub(super) fn non_negative<T: TryFrom<u64>>(value: &Value) -> Result<T, String> {
    unsigned(value, 0)
}

/// An integer of at least `min`. Values from the environment arrive as text and are parsed.
fn unsigned<T: TryFrom<u64>>(value: &Value, min: u64) -> Result<T, String> {
    let expected = if min == 0 {
        "a non-negative integer"
    } else {
        "a positive integer"
    };
    let n: Option<i128> = match &value.kind {
        ValueKind::I64(n) => Some(i128::from(*n)),
        ValueKind::I128(n) => Some(*n),
        ValueKind::U64(n) => Some(i128::from(*n)),
        ValueKind::U128(n) => i128::try_from(*n).ok(),
        ValueKind::String(s) if from_env(value) => s.trim().parse().ok(),
        _ => None,
    };
    match n {
        Some(n) if n >= i128::from(min) => u64::try_from(n)
            .ok()
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| format!("expected {expected}, found {} (too large)", describe(value))),
        _ => Err(format!("expected {expected}, found {}", describe(value))),
    }
}

/// A plain enum whose variants are spelled as strings in the config.
pub(super) trait Named: Copy + 'static {
    /// Every spelling and its variant.
    const NAMES: &'static [(&'static str, Self)];
}

/// One of the spellings of `T`.
pub(super) fn choice<T: Named>(value: &Value) -> Result<T, String> {
    let s = match &value.kind {
        ValueKind::String(s) => Some(s.as_str()),
        _ => None,
    };
    if let Some(&(_, v)) = T::NAMES.iter().find(|(n, _)| Some(*n) == s) {
        return Ok(v);
    }
    let names: Vec<String> = T::NAMES.iter().map(|(n, _)| format!("{n:?}")).collect();
    let mut message = format!(
        "expected one of {}, found {}",
        names.join(", "),
        describe(value)
    );
    if let Some(near) = s.and_then(|s| suggest(s, T::NAMES.iter().map(|(n, _)| *n))) {
        message.push_str(&format!(" (did you mean {near:?}?)"));
    }
    Err(message)
}

/// A duration string such as `"10s"` (see [`parse_duration`]).
pub(super) fn duration(value: &Value) -> Result<Duration, String> {
    match &value.kind {
        ValueKind::String(s) => parse_duration(s),
        _ => Err(format!(
            "expected a duration string such as \"10s\" (units ms, s, m, h, d), found {}",
            describe(value)
        )),
    }
}

/// A duration greater than zero.
pub(super) fn positive_duration(value: &Value) -> Result<Duration, String> {
    let d = duration(value)?;
    if d.is_zero() {
        return Err(format!("must be greater than 0, found {}", describe(value)));
    }
    Ok(d)
}

/// A string, number or boolean, as text (librdkafka property values).
pub(super) fn text(value: &Value) -> Result<String, String> {
    match &value.kind {
        ValueKind::String(s) => Ok(s.clone()),
        ValueKind::Boolean(b) => Ok(b.to_string()),
        ValueKind::I64(n) => Ok(n.to_string()),
        ValueKind::I128(n) => Ok(n.to_string()),
        ValueKind::U64(n) => Ok(n.to_string()),
        ValueKind::U128(n) => Ok(n.to_string()),
        ValueKind::Float(x) => Ok(x.to_string()),
        _ => Err(format!(
            "expected a string, number or boolean, found {}",
            describe(value)
        )),
    }
}
