//! CEL expressions over records, compiled once and evaluated per record with the `cel` crate.
//!
//! An expression sees the record value's top-level fields as variables, plus `key`, `value`,
//! `partition`, `offset`, `timestamp` (ms) and `headers` (a map of text). Those six names win
//! over a field of the same name; such a field is still `value.<name>`. Only the variables an
//! expression mentions are bound, so a wide record costs no more than a narrow one.

use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, Env, ExecutionError, Program, Value};

use super::value;
use crate::types::Headers;

/// CEL's reserved words and literals, which are never field names.
const RESERVED_WORDS: [&str; 3] = ["true", "false", "null"];

/// The names bound besides the value's fields.
pub const RECORD_VARIABLES: [&str; 6] = [
    "key",
    "value",
    "partition",
    "offset",
    "timestamp",
    "headers",
];

/// The environment every pipeline expression is compiled and run in: CEL's standard library
/// plus its `strings` and `math` extensions.
pub fn environment() -> Arc<Env> {
    let mut env = Env::stdlib();
    // The extensions are fixed and known to declare no conflicting overloads.
    env.add_extension(cel::extensions::strings)
        .expect("invariant: the strings extension declares cleanly");
    env.add_extension(cel::extensions::math)
        .expect("invariant: the math extension declares cleanly");
    Arc::new(env)
}

/// A record as expressions see it.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The key (text, bytes or null).
    pub key: &'a Value,
    /// The value.
    pub value: &'a Value,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Event time, epoch ms.
    pub timestamp: i64,
    /// Headers of the input record.
    pub headers: Headers<'a>,
}

#[derive(Debug, Clone)]
enum Var {
    Key,
    Value,
    Partition,
    Offset,
    Timestamp,
    Headers,
    Field(String),
}

/// A compiled expression.
#[derive(Clone)]
pub struct Expr {
    text: Arc<str>,
    /// Set when the expression is just a field name (`amount`): it is then read directly, which
    /// is what CEL would do, without building an evaluation context.
    field: Option<Arc<str>>,
    program: Arc<Program>,
    vars: Arc<[Var]>,
    env: Arc<Env>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.text)
    }
}

impl Expr {
    /// Compiles `text`; the error is CEL's parse error, with its line and column.
    pub fn compile(env: &Arc<Env>, text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("empty expression".into());
        }
        let program = env.compile(text).map_err(|e| {
            // CEL's message repeats the source with a caret under it; the first line already
            // has the position, and problems are reported one line each.
            let e = e.to_string();
            let first = e.lines().next().unwrap_or_default().trim();
            let first = first
                .trim_start_matches("ERROR: ")
                .replacen("<input>:", "at ", 1);
            format!("does not compile: {first}")
        })?;
        let references = program.references();
        let mut names = references.variables();
        names.sort_unstable();
        let vars: Arc<[Var]> = names
            .into_iter()
            .map(|n| match n {
                "key" => Var::Key,
                "value" => Var::Value,
                "partition" => Var::Partition,
                "offset" => Var::Offset,
                "timestamp" => Var::Timestamp,
                "headers" => Var::Headers,
                field => Var::Field(field.to_string()),
            })
            .collect();
        let trimmed = text.trim();
        let is_ident = trimmed
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && trimmed.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
        let field = (is_ident
            && !RECORD_VARIABLES.contains(&trimmed)
            && !RESERVED_WORDS.contains(&trimmed))
        .then(|| Arc::from(trimmed));
        Ok(Self {
            text: text.into(),
            field,
            program: Arc::new(program),
            vars,
            env: env.clone(),
        })
    }

    /// The value fields the expression reads as variables, or `None` when it reads the whole
    /// `value`.
    pub fn fields(&self) -> Option<Vec<&str>> {
        let mut out = Vec::new();
        for v in self.vars.iter() {
            match v {
                Var::Value => return None,
                Var::Field(f) => out.push(f.as_str()),
                _ => {}
            }
        }
        Some(out)
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Evaluates the expression for one record.
    pub fn eval(&self, scope: &Scope<'_>) -> Result<Value, String> {
        if let Some(f) = &self.field {
            return value::field(scope.value, f).cloned().ok_or_else(|| {
                let e = ExecutionError::UndeclaredReference(Arc::new(f.to_string()));
                format!("`{}`: {}", self.text, describe(&e, scope.value))
            });
        }
        let mut ctx = Context::with_env(self.env.clone());
        for var in self.vars.iter() {
            let (name, v) = match var {
                Var::Key => ("key", scope.key.clone()),
                Var::Value => ("value", scope.value.clone()),
                Var::Partition => ("partition", Value::Int(scope.partition.into())),
                Var::Offset => ("offset", Value::Int(scope.offset)),
                Var::Timestamp => ("timestamp", Value::Int(scope.timestamp)),
                Var::Headers => ("headers", headers(scope.headers)),
                // A missing field stays unbound: CEL reports it, and `has(value.f)` still works.
                // A missing field stays unbound: CEL reports it if it is read (the name may
                // also be a comprehension's variable, bound by CEL itself).
                Var::Field(f) => match value::field(scope.value, f) {
                    Some(v) => (f.as_str(), v.clone()),
                    None => continue,
                },
            };
            ctx.add_variable_from_value(name, v);
        }
        self.program
            .execute(&ctx)
            .map_err(|e| format!("`{}`: {}", self.text, describe(&e, scope.value)))
    }

    /// Evaluates a condition: the result must be a bool.
    pub fn eval_bool(&self, scope: &Scope<'_>) -> Result<bool, String> {
        match self.eval(scope)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!(
                "`{}` gave a {}, expected a bool",
                self.text,
                value::type_name(&other)
            )),
        }
    }
}

fn headers(headers: Headers<'_>) -> Value {
    let map = headers
        .iter()
        .map(|(k, v)| {
            (
                Key::String(Arc::new(k.to_string())),
                Value::String(Arc::new(String::from_utf8_lossy(v).into_owned())),
            )
        })
        .collect();
    Value::Map(Map { map: Arc::new(map) })
}

fn mixes_numbers(l: &Value, r: &Value) -> bool {
    let num = |v: &Value| matches!(v, Value::Int(_) | Value::UInt(_) | Value::Float(_));
    num(l) && num(r)
}

/// CEL's runtime errors, phrased for someone looking at a record.
fn describe(e: &ExecutionError, value: &Value) -> String {
    match e {
        ExecutionError::UndeclaredReference(name) if !matches!(value, Value::Map(_)) => format!(
            "the value is a {}, not a JSON object, so it has no field `{name}`",
            value::type_name(value)
        ),
        ExecutionError::UndeclaredReference(name) => {
            format!("the record has no field `{name}`")
        }
        ExecutionError::NoSuchKey(k) => format!("no field or key `{k}`"),
        ExecutionError::UnsupportedBinaryOperator(op, l, r) if mixes_numbers(l, r) => format!(
            "cannot {op} {} and {}: CEL does not mix int and double; convert one side, e.g. double(x) * 2.0",
            value::type_name(l),
            value::type_name(r)
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(text: &str, value: &str) -> Result<Value, String> {
        let env = environment();
        let expr = Expr::compile(&env, text)?;
        let v = value::from_json(value.as_bytes()).unwrap();
        let key = Value::String(Arc::new("k1".into()));
        let headers = [("trace".to_string(), b"abc".to_vec())];
        expr.eval(&Scope {
            key: &key,
            value: &v,
            partition: 3,
            offset: 17,
            timestamp: 1_000,
            headers: Headers::from_pairs(&headers),
        })
    }

    #[test]
    fn fields_and_record_variables_are_bound() {
        assert_eq!(eval("amount * 2", r#"{"amount": 21}"#), Ok(Value::Int(42)));
        assert_eq!(
            eval("amount > 50", r#"{"amount": 75.5}"#),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            eval(
                "key + ':' + string(partition) + ':' + string(offset) + ':' + string(timestamp)",
                "{}"
            ),
            Ok(Value::String(Arc::new("k1:3:17:1000".into())))
        );
        assert_eq!(
            eval("headers['trace']", "{}"),
            Ok(Value::String(Arc::new("abc".into())))
        );
        assert_eq!(
            eval("value.a.b", r#"{"a": {"b": true}}"#),
            Ok(Value::Bool(true))
        );
        assert_eq!(eval("has(value.zz)", r#"{"a": 1}"#), Ok(Value::Bool(false)));
        assert_eq!(
            eval("'AbC'.lowerAscii()", "{}"),
            Ok(Value::String(Arc::new("abc".into())))
        );
    }

    #[test]
    fn record_variables_win_over_fields() {
        assert_eq!(
            eval("key", r#"{"key": "field"}"#),
            Ok(Value::String(Arc::new("k1".into())))
        );
        assert_eq!(
            eval("value.key", r#"{"key": "field"}"#),
            Ok(Value::String(Arc::new("field".into())))
        );
    }

    #[test]
    fn runtime_errors_say_what_is_wrong() {
        let e = eval("amount > 50", r#"{"user": "u"}"#).unwrap_err();
        assert!(e.contains("no field `amount`"), "{e}");
        let e = eval("amount + 1", r#"{"amount": "x"}"#).unwrap_err();
        assert!(e.starts_with("`amount + 1`: "), "{e}");
    }

    #[test]
    fn syntax_errors_are_compile_errors() {
        let e = Expr::compile(&environment(), "amount >").unwrap_err();
        assert!(
            e.starts_with("does not compile: at 1:9: Syntax error"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line per problem: {e}");
        assert!(Expr::compile(&environment(), " ").is_err());
    }

    #[test]
    fn conditions_must_be_bools() {
        let env = environment();
        let expr = Expr::compile(&env, "amount").unwrap();
        let v = value::from_json(br#"{"amount": 1}"#).unwrap();
        let e = expr
            .eval_bool(&Scope {
                key: &Value::Null,
                value: &v,
                partition: 0,
                offset: 0,
                timestamp: 0,
                headers: Headers::none(),
            })
            .unwrap_err();
        assert!(e.contains("expected a bool"), "{e}");
    }
}
