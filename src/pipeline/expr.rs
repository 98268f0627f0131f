//! CEL expressions over records, compiled once and evaluated per record.
//!
//! Most expressions are evaluated natively ([`native`]): field reads, literals, operators, list
//! and map literals. The others (function calls, macros, `headers`, ...) run on the `cel` crate,
//! which also words every runtime error: an expression that fails natively is evaluated again
//! by the crate, so errors read the same whichever path an expression takes.
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

mod native;

#[cfg(test)]
mod differential;

use native::Native;

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
pub struct Expr {
    text: Arc<str>,
    /// Set when every part of the expression is in the native subset.
    native: Option<Arc<Native>>,
    program: Arc<Program>,
    vars: Arc<[Var]>,
    env: Arc<Env>,
}

/// A clone gets its own native form: evaluating it clones the `Arc`s of its literals (map keys,
/// strings) into every result, and tasks (clones of one compiled pipeline) run on different
/// threads, where shared literals would make each record bump reference counts that the other
/// threads bump too. The `cel` program is shared: it only runs off the hot path.
impl Clone for Expr {
    fn clone(&self) -> Self {
        Self {
            text: self.text.clone(),
            native: self
                .native
                .as_ref()
                .and_then(|_| Native::compile(self.program.expression(), &self.env))
                .map(Arc::new),
            program: self.program.clone(),
            vars: self.vars.clone(),
            env: self.env.clone(),
        }
    }
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
        let native = Native::compile(program.expression(), env).map(Arc::new);
        Ok(Self {
            text: text.into(),
            native,
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

    /// Whether the expression is evaluated natively (else by the `cel` crate).
    #[cfg(test)]
    fn is_native(&self) -> bool {
        self.native.is_some()
    }

    /// Evaluates the expression for one record.
    pub fn eval(&self, scope: &Scope<'_>) -> Result<Value, String> {
        if let Some(native) = &self.native {
            if let Ok(v) = native.eval(scope) {
                return Ok(v);
            }
            // The crate words the error; failing records are the exception, so the second
            // evaluation is not on the hot path.
        }
        self.eval_cel(scope)
    }

    /// The native evaluation alone, for the differential test.
    #[cfg(test)]
    fn eval_native(&self, scope: &Scope<'_>) -> Option<Result<Value, native::Fail>> {
        self.native.as_ref().map(|n| n.eval(scope))
    }

    /// Evaluates the expression with the `cel` crate.
    fn eval_cel(&self, scope: &Scope<'_>) -> Result<Value, String> {
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

    fn compile(text: &str) -> Expr {
        Expr::compile(&environment(), text).unwrap()
    }

    #[test]
    fn the_common_shapes_are_native_and_the_rest_runs_on_cel() {
        for text in [
            "amount",
            "amount > 50",
            "{'user': user, 'amount': amount * 2}",
            "value.a.b != null && !(key in ['k1', 'k2'])",
            "has(value.zz) ? value.zz[0] : -1.5",
            "partition + offset % 2u == timestamp / 3",
            "[b'x', 'y'] + l",
        ] {
            assert!(compile(text).is_native(), "{text}");
            // Tasks run clones, which compile their own native form.
            assert!(compile(text).clone().is_native(), "a clone of {text}");
        }
        for text in [
            "headers['trace']",
            "'AbC'.lowerAscii()",
            "size(l) > 1",
            "l.map(x, x * 2)",
            "string(partition)",
            // A missing field named like a type is the type: the crate knows which names are.
            "int",
            "value.?a",
        ] {
            assert!(!compile(text).is_native(), "{text}");
        }
    }

    #[test]
    fn native_failures_read_as_the_crates_errors() {
        let max = r#"{"amount": 9223372036854775807}"#;
        let e = eval("amount + 1", max).unwrap_err();
        assert_eq!(
            e,
            "`amount + 1`: Overflow from binary operator 'add': Int(9223372036854775807), Int(1)"
        );
        let e = eval("amount / (amount - amount)", max).unwrap_err();
        assert!(e.contains("Division by zero"), "{e}");
        let e = eval("amount * 2.0", r#"{"amount": 2}"#).unwrap_err();
        assert!(e.contains("CEL does not mix int and double"), "{e}");
        // Errors that the other side of `&&` or `||` decides are no errors.
        assert_eq!(
            eval("missing > 1 || amount == 2", r#"{"amount": 2}"#),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            eval("amount / 0 > 1 && false", r#"{"amount": 2}"#),
            Ok(Value::Bool(false))
        );
    }

    #[test]
    fn what_the_native_path_leaves_to_the_crate_still_evaluates() {
        // The crate appends a map's keys to a list; the native path leaves that to it.
        assert_eq!(
            eval("[1] + {'a': 1}", "{}"),
            Ok(Value::List(Arc::new(vec![
                Value::Int(1),
                Value::String(Arc::new("a".into()))
            ])))
        );
        assert_eq!(eval("int", r#"{"int": 5}"#), Ok(Value::Int(5)));
    }

    /// Prints the time per evaluation, native against the `cel` crate, of the expressions of the
    /// throughput benchmark's stateless pipeline. Run it optimized:
    /// `cargo test -p tributary --lib --config 'profile.dev.package.tributary.opt-level=3'
    /// --config 'profile.dev.package.cel.opt-level=3' eval_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement: run with --ignored --nocapture"]
    fn eval_speed() {
        use std::hint::black_box;
        use std::time::Instant;
        let fields = ["user".to_string(), "amount".to_string()];
        let record = br#"{"user": "u1234", "amount": 75, "ts": 1700000000000}"#;
        let picked = value::from_json_fields(record, &fields).unwrap();
        let whole = value::from_json(record).unwrap();
        let key = Value::String(Arc::new("u1234".into()));
        for (text, v) in [
            ("amount", &picked),
            ("amount > 50", &picked),
            ("{'user': user, 'amount': amount * 2}", &picked),
            ("value.amount > 50 && value.user != ''", &whole),
        ] {
            let expr = compile(text);
            assert!(expr.is_native(), "{text}");
            let scope = Scope {
                key: &key,
                value: v,
                partition: 0,
                offset: 0,
                timestamp: 0,
                headers: Headers::none(),
            };
            assert!(same(&expr.eval(&scope), &expr.eval_cel(&scope)), "{text}");
            // The fastest of many short rounds: the machine is shared, and a round that the
            // scheduler interrupts only shows the interruption.
            let time = |f: &dyn Fn() -> Result<Value, String>| {
                let n = 5_000;
                (0..100)
                    .map(|_| {
                        let start = Instant::now();
                        for _ in 0..n {
                            black_box(f()).ok();
                        }
                        start.elapsed().as_nanos() as f64 / n as f64
                    })
                    .fold(f64::INFINITY, f64::min)
            };
            let cel = time(&|| expr.eval_cel(black_box(&scope)));
            let native = time(&|| expr.eval(black_box(&scope)));
            println!(
                "{text:<40} cel {cel:>7.0} ns   native {native:>5.0} ns   {:>5.1}x",
                cel / native
            );
        }
    }

    fn same(a: &Result<Value, String>, b: &Result<Value, String>) -> bool {
        let json = |r: &Result<Value, String>| {
            r.as_ref()
                .map(|v| value::to_json(v).unwrap())
                .map_err(Clone::clone)
        };
        json(a) == json(b)
    }
}
