//! The native evaluator against the `cel` crate: random expressions from the native grammar
//! (and a few outside it) over random records must give the same value, or both fail.
//!
//! Values are compared strictly: same variant (an `int` is not a `double`, even where CEL's `==`
//! would say they are equal), floats bit for bit (any NaN equals any NaN), maps key by exact key.
//! Failures are compared by being failures: the native path carries no message, because
//! [`Expr::eval`] asks the crate to word every error; that the words are then the crate's is
//! checked too, on the same cases, through the public `eval` (up to the order of what the crate
//! lists in hash order, which two of its own evaluations do not agree on).
//!
//! A case is one expression evaluated over four records. `PROPTEST_CASES` sets the number of
//! cases: 2,500 by default (10,000 evaluations, about ten seconds in a debug build, where the
//! crate's parser takes a millisecond per expression). A failure prints the expression and the
//! records, shrunk.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::Value;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::native::Fail;
use super::{environment, Expr, Scope};

/// Field names of nested maps, and of selections in expressions.
const INNER: [&str; 4] = ["x", "y", "a", "m"];

fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => -3i64..60,
        1 => prop::sample::select(vec![
            i64::MAX,
            i64::MAX - 1,
            i64::MIN,
            i64::MIN + 1,
            1 << 53,
            (1 << 53) + 1,
            3_037_000_500, // its square is past i64::MAX
            4_611_686_018_427_387_904,
        ]),
        1 => any::<i64>(),
    ]
}

fn uint() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..60,
        1 => prop::sample::select(vec![
            u64::MAX,
            u64::MAX - 1,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            1 << 53,
        ]),
        1 => any::<u64>(),
    ]
}

fn double() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => prop::sample::select(vec![
            0.0, -0.0, 0.5, 1.0, 1.5, 2.0, -2.5, 50.0, 75.5, 7.0, 1e308,
            9_007_199_254_740_992.0, 9_223_372_036_854_775_807.0, 18_446_744_073_709_551_615.0,
            f64::NAN, f64::INFINITY, f64::NEG_INFINITY,
        ]),
        1 => any::<f64>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "a", "abc", "k1", "x", "b"]).prop_map(str::to_string)
}

fn string(s: String) -> Value {
    Value::String(Arc::new(s))
}

/// Any value a record may hold: JSON's, plus uint, bytes and non-finite doubles (a `map` step
/// can put those in a record).
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        3 => int().prop_map(Value::Int),
        1 => uint().prop_map(Value::UInt),
        2 => double().prop_map(Value::Float),
        2 => text().prop_map(string),
        1 => prop::sample::select(vec![&b""[..], b"ab", b"b"])
            .prop_map(|b| Value::Bytes(Arc::new(b.to_vec()))),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| Value::List(Arc::new(v))),
            prop::collection::vec((prop::sample::select(INNER.to_vec()), inner), 0..4)
                .prop_map(|entries| map(entries.into_iter().map(|(k, v)| (k, Some(v))))),
        ]
    })
}

fn map<'a>(entries: impl Iterator<Item = (&'a str, Option<Value>)>) -> Value {
    let map: HashMap<Key, Value> = entries
        .filter_map(|(k, v)| Some((Key::String(Arc::new(k.to_string())), v?)))
        .collect();
    Value::Map(Map { map: Arc::new(map) })
}

/// Mostly a value of the field's usual type, now and then any value, or no field at all.
fn field(usual: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        17 => usual.prop_map(Some),
        2 => value().prop_map(Some),
        1 => Just(None),
    ]
    .boxed()
}

/// A record: its value (mostly a map of fields of known types, which expressions use as such),
/// key, partition, offset and timestamp.
#[derive(Debug, Clone)]
struct Record {
    value: Value,
    key: Value,
    partition: i32,
    offset: i64,
    timestamp: i64,
}

fn record() -> impl Strategy<Value = Record> {
    let ints = || int().prop_map(Value::Int);
    let inner = (
        field(ints()),
        field(prop_oneof![ints(), double().prop_map(Value::Float)]),
        field(text().prop_map(string)),
        field(
            (ints(), ints()).prop_map(|(x, y)| map([("x", Some(x)), ("y", Some(y))].into_iter())),
        ),
    )
        .prop_map(|(x, y, a, m)| map([("x", x), ("y", y), ("a", a), ("m", m)].into_iter()));
    let fields = (
        (field(ints()), field(ints()), field(ints())),
        field(uint().prop_map(Value::UInt)),
        field(double().prop_map(Value::Float)),
        field(text().prop_map(string)),
        field(any::<bool>().prop_map(Value::Bool)),
        field(inner),
        field(prop::collection::vec(ints(), 0..4).prop_map(|l| Value::List(Arc::new(l)))),
        prop_oneof![9 => Just(None), 1 => value().prop_map(Some)],
        prop_oneof![9 => Just(None), 1 => value().prop_map(Some)],
    )
        .prop_map(|((a, b, n), u, f, s, t, m, l, key, value)| {
            map([
                ("a", a),
                ("b", b),
                ("n", n),
                ("u", u),
                ("f", f),
                ("s", s),
                ("t", t),
                ("m", m),
                ("l", l),
                ("key", key),
                ("value", value),
            ]
            .into_iter())
        });
    let value = prop_oneof![19 => fields, 1 => value()];
    let key = prop_oneof![
        3 => text().prop_map(string),
        1 => Just(Value::Bytes(Arc::new(vec![0xff, 0]))),
        1 => Just(Value::Null),
    ];
    (
        value,
        key,
        prop_oneof![0..4i32, Just(i32::MAX)],
        int(),
        int(),
    )
        .prop_map(|(value, key, partition, offset, timestamp)| Record {
            value,
            key,
            partition,
            offset,
            timestamp,
        })
}

fn pick(options: &[&'static str]) -> BoxedStrategy<String> {
    prop::sample::select(options.to_vec())
        .prop_map(str::to_string)
        .boxed()
}

/// Expressions of each type, up to some depth (most are of that type for most records; some
/// fail, on a missing field, an overflow, a division by zero).
#[derive(Clone)]
struct Exprs {
    int: BoxedStrategy<String>,
    uint: BoxedStrategy<String>,
    double: BoxedStrategy<String>,
    string: BoxedStrategy<String>,
    boolean: BoxedStrategy<String>,
    list: BoxedStrategy<String>,
    map: BoxedStrategy<String>,
    /// Any of the above, and ill-typed or unusual shapes.
    any: BoxedStrategy<String>,
}

fn leaves() -> Exprs {
    let int = pick(&[
        "0",
        "1",
        "2",
        "-1",
        "7",
        "50",
        "9223372036854775807",
        "-9223372036854775808",
        "4611686018427387904",
        "3037000500",
        "a",
        "b",
        "n",
        "a",
        "b",
        "n",
        "m.x",
        "value.a",
        "partition",
        "offset",
        "timestamp",
    ]);
    let uint = pick(&[
        "0u",
        "1u",
        "2u",
        "9223372036854775808u",
        "18446744073709551615u",
        "u",
        "u",
    ]);
    let double = pick(&[
        "0.0",
        "-0.0",
        "1.5",
        "2.0",
        "50.0",
        "-2.5",
        "1e308",
        "9007199254740993.0",
        "9223372036854775807.0",
        "f",
        "f",
        "value.f",
        "m.y",
    ]);
    let string = pick(&[
        "''", "'a'", "'abc'", "\"k1\"", "'x'", "s", "s", "key", "m.a",
    ]);
    let boolean = pick(&["true", "false", "t", "t"]);
    let list = pick(&["l", "[]", "[1, 2]", "[a, 'x', 1.0, 1u]"]);
    let map = pick(&["m", "value", "{}", "m.m", "{'x': 1, 'y': 2.0}"]);
    let any = prop_oneof![
        int.clone(),
        uint.clone(),
        double.clone(),
        string.clone(),
        boolean.clone(),
        list.clone(),
        map.clone(),
        pick(&[
            "null",
            "b'ab'",
            "b''",
            "missing",
            "m.missing",
            "value.missing",
            "key",
            "value"
        ]),
    ]
    .boxed();
    Exprs {
        int,
        uint,
        double,
        string,
        boolean,
        list,
        map,
        any,
    }
}

fn binary(
    l: &BoxedStrategy<String>,
    ops: &[&'static str],
    r: &BoxedStrategy<String>,
) -> BoxedStrategy<String> {
    (l.clone(), pick(ops), r.clone())
        .prop_map(|(l, op, r)| format!("({l}) {op} ({r})"))
        .boxed()
}

fn ternary(c: &BoxedStrategy<String>, e: &BoxedStrategy<String>) -> BoxedStrategy<String> {
    (c.clone(), e.clone(), e.clone())
        .prop_map(|(c, t, f)| format!("({c}) ? ({t}) : ({f})"))
        .boxed()
}

fn unary(op: &'static str, e: &BoxedStrategy<String>) -> BoxedStrategy<String> {
    e.clone().prop_map(move |x| format!("{op}({x})")).boxed()
}

/// One level deeper than `p`.
fn level(p: &Exprs, leaf: &Exprs) -> Exprs {
    const ARITH: &[&str] = &["+", "-", "*", "/", "%"];
    const ORDER: &[&str] = &["<", "<=", ">", ">=", "==", "!="];
    let number = prop_oneof![
        3 => p.int.clone(),
        1 => p.uint.clone(),
        2 => p.double.clone(),
    ]
    .boxed();
    let number_key = pick(&[
        "0", "0u", "1", "1u", "-1", "1.0", "2.5", "true", "null", "'a'", "a", "u", "f",
    ]);
    let int = prop_oneof![
        4 => leaf.int.clone(),
        4 => binary(&p.int, ARITH, &p.int),
        1 => unary("-", &p.int),
        1 => ternary(&p.boolean, &p.int),
        1 => (p.int.clone(), p.int.clone(), p.int.clone())
            .prop_map(|(a, b, i)| format!("[{a}, {b}][{i}]")),
        1 => p.int.clone().prop_map(|x| format!("{{'k': {x}}}.k")),
    ]
    .boxed();
    let uint = prop_oneof![
        2 => leaf.uint.clone(),
        3 => binary(&p.uint, ARITH, &p.uint),
        1 => ternary(&p.boolean, &p.uint),
    ]
    .boxed();
    let double = prop_oneof![
        3 => leaf.double.clone(),
        3 => binary(&p.double, &["+", "-", "*", "/"], &p.double),
        1 => unary("-", &p.double),
        1 => ternary(&p.boolean, &p.double),
    ]
    .boxed();
    let string = prop_oneof![
        3 => leaf.string.clone(),
        2 => binary(&p.string, &["+"], &p.string),
        1 => ternary(&p.boolean, &p.string),
    ]
    .boxed();
    // Integers a double cannot hold, beside the doubles they round to.
    let wide = pick(&[
        "9007199254740993",
        "9223372036854775807",
        "-9223372036854775807",
        "18446744073709551615u",
        "9223372036854775808u",
        "a",
        "u",
    ]);
    let rounded = pick(&[
        "9007199254740992.0",
        "9223372036854775807.0",
        "-9223372036854775808.0",
        "18446744073709551615.0",
        "f",
    ]);
    let boolean = prop_oneof![
        1 => leaf.boolean.clone(),
        4 => binary(&number, ORDER, &number),
        1 => binary(&wide, ORDER, &rounded),
        1 => binary(&rounded, ORDER, &wide),
        1 => binary(&p.string, ORDER, &p.string),
        2 => binary(&p.any, &["==", "!="], &p.any),
        3 => binary(&p.boolean, &["&&", "||"], &p.boolean),
        1 => unary("!", &p.boolean),
        1 => ternary(&p.boolean, &p.boolean),
        1 => (pick(&["m", "value", "m.m", "value.m"]), pick(&INNER))
            .prop_map(|(x, f)| format!("has({x}.{f})")),
        1 => (p.map.clone(), pick(&INNER)).prop_map(|(x, f)| format!("has(({x}).{f})")),
        1 => binary(&p.any, &["in"], &p.list),
        1 => binary(&p.string, &["in"], &p.map),
        1 => (number_key.clone(), p.map.clone()).prop_map(|(k, m)| format!("({k}) in ({m})")),
    ]
    .boxed();
    let list = prop_oneof![
        1 => leaf.list.clone(),
        2 => prop::collection::vec(p.any.clone(), 0..4)
            .prop_map(|items| format!("[{}]", items.join(", "))),
        1 => binary(&p.list, &["+"], &p.list),
    ]
    .boxed();
    let map = prop_oneof![
        1 => leaf.map.clone(),
        2 => prop::collection::vec((p.string.clone(), p.any.clone()), 0..3).prop_map(|entries| {
            let entries: Vec<String> = entries.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("{{{}}}", entries.join(", "))
        }),
        1 => (p.string.clone(), p.int.clone())
            .prop_map(|(user, amount)| format!("{{'user': {user}, 'amount': ({amount}) * 2}}")),
        // The same number as a uint and an int key, either way round: a repeated key.
        1 => (
            pick(&["0", "1u", "u", "a"]),
            p.int.clone(),
            pick(&["0u", "1", "a", "u"]),
            p.int.clone(),
        )
            .prop_map(|(k, v, l, w)| format!("{{{k}: {v}, {l}: {w}}}")),
        // Keys of every type, numbers of different types for the same number among them.
        1 => prop::collection::vec((number_key.clone(), p.any.clone()), 0..3).prop_map(|entries| {
            let entries: Vec<String> = entries.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("{{{}}}", entries.join(", "))
        }),
    ]
    .boxed();
    let any = prop_oneof![
        2 => int.clone(),
        1 => uint.clone(),
        2 => double.clone(),
        1 => string.clone(),
        2 => boolean.clone(),
        1 => list.clone(),
        1 => map.clone(),
        // Ill-typed or unusual: any operator on anything.
        3 => binary(
            &p.any,
            &["+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "in"],
            &p.any
        ),
        1 => (pick(&["-", "!"]), p.any.clone()).prop_map(|(op, x)| format!("{op}({x})")),
        1 => ternary(&p.any, &p.any),
        1 => (p.any.clone(), pick(&INNER)).prop_map(|(x, f)| format!("({x}).{f}")),
        1 => (p.any.clone(), pick(&INNER)).prop_map(|(x, f)| format!("has(({x}).{f})")),
        1 => (p.any.clone(), p.any.clone()).prop_map(|(x, i)| format!("({x})[{i}]")),
        1 => (p.map.clone(), number_key.clone()).prop_map(|(x, i)| format!("({x})[{i}]")),
        1 => (p.list.clone(), number_key.clone()).prop_map(|(x, i)| format!("({x})[{i}]")),
        1 => prop::collection::vec((p.any.clone(), p.any.clone()), 0..3).prop_map(|entries| {
            let entries: Vec<String> = entries.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("{{{}}}", entries.join(", "))
        }),
        // Outside the subset: the whole expression runs on the crate.
        1 => (pick(&["size", "string", "int", "double", "type"]), p.any.clone())
            .prop_map(|(f, x)| format!("{f}({x})")),
        1 => p.any.clone().prop_map(|x| format!("(headers.trace) + ({x})")),
        1 => p.int.clone().prop_map(|x| format!("[1, 2].map(v, v + ({x}))")),
    ]
    .boxed();
    Exprs {
        int,
        uint,
        double,
        string,
        boolean,
        list,
        map,
        any,
    }
}

/// Expression text: the native grammar, fully parenthesized, mostly well typed, up to four
/// operators deep, and a few shapes outside the grammar.
fn expression() -> impl Strategy<Value = String> {
    let leaf = leaves();
    let mut e = leaf.clone();
    for _ in 0..4 {
        e = level(&e, &leaf);
    }
    prop_oneof![
        2 => e.boolean,
        1 => e.int,
        1 => e.double,
        1 => e.map,
        3 => e.any,
    ]
}

/// Equality without CEL's numeric conversions: same variant, same bits.
fn same(a: &Value, b: &Value) -> bool {
    same_in(a, b, false)
}

/// [`same`], but lists may be in any order: the crate's `list + map` appends the map's keys in
/// hash order, which differs between two evaluations of the same expression.
fn same_unordered(a: &Value, b: &Value) -> bool {
    same_in(a, b, true)
}

fn same_in(a: &Value, b: &Value, unordered: bool) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => {
            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
        }
        (Value::List(x), Value::List(y)) if unordered => {
            let mut left: Vec<&Value> = y.iter().collect();
            x.len() == y.len()
                && x.iter().all(|v| {
                    let found = left.iter().position(|w| same_in(v, w, true));
                    found.map(|i| left.swap_remove(i)).is_some()
                })
        }
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|(x, y)| same_in(x, y, unordered))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.map.len() == y.map.len()
                && x.map
                    .iter()
                    .all(|(k, v)| y.map.get(k).is_some_and(|w| same_in(v, w, unordered)))
        }
        (Value::Int(_), Value::Int(_))
        | (Value::UInt(_), Value::UInt(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bytes(_), Value::Bytes(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => a == b,
        _ => false,
    }
}

/// The public `eval` against the crate alone.
fn same_result(a: &Result<Value, String>, b: &Result<Value, String>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => same_unordered(a, b),
        // A message showing a map, or a list built from a map's keys, lists them in hash order,
        // which differs from one evaluation to the next: the same characters in any order will
        // do.
        (Err(a), Err(b)) => {
            let mut a: Vec<char> = a.chars().collect();
            let mut b: Vec<char> = b.chars().collect();
            a.sort_unstable();
            b.sort_unstable();
            a == b
        }
        _ => false,
    }
}

#[derive(Debug, Default)]
struct Tally {
    cases: u32,
    evaluations: u32,
    not_compiling: u32,
    on_cel: u32,
    both_values: u32,
    both_errors: u32,
    unsupported: u32,
}

#[test]
fn native_evaluation_agrees_with_the_cel_crate() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_500);
    let config = Config {
        cases,
        failure_persistence: None,
        // Most shrinking steps re-run only a small expression; cap them anyway.
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let env = environment();
    let tally = RefCell::new(Tally::default());
    // Compiling (the crate's ANTLR parser) costs a millisecond in a debug build, evaluating a
    // few microseconds: each expression meets several records.
    let records = prop::collection::vec(record(), RECORDS_PER_CASE);
    let result = TestRunner::new(config).run(&(expression(), records), |(text, records)| {
        let mut t = tally.borrow_mut();
        t.cases += 1;
        let Ok(expr) = Expr::compile(&env, &text) else {
            t.not_compiling += 1;
            return Ok(());
        };
        // Tasks run clones, which compile their own native form: check one too.
        let clone = expr.clone();
        prop_assert_eq!(clone.is_native(), expr.is_native(), "a clone of `{}`", text);
        for rec in &records {
            t.evaluations += 2;
            compare(&text, &expr, rec, &mut t)?;
            compare(&text, &clone, rec, &mut t)?;
        }
        Ok(())
    });
    let t = tally.into_inner();
    println!("{t:?}");
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generator must keep exercising both outcomes natively, not just compile errors or
    // expressions the crate runs.
    assert!(
        t.both_values * 3 > t.evaluations,
        "too few values compared: {t:?}"
    );
    assert!(
        t.both_errors * 10 > t.evaluations,
        "too few errors compared: {t:?}"
    );
}

/// Records each expression is evaluated over.
const RECORDS_PER_CASE: usize = 4;

fn compare(text: &str, expr: &Expr, rec: &Record, t: &mut Tally) -> Result<(), TestCaseError> {
    let headers = [("trace".to_string(), b"t1".to_vec())];
    let scope = Scope {
        key: &rec.key,
        value: &rec.value,
        partition: rec.partition,
        offset: rec.offset,
        timestamp: rec.timestamp,
        headers: crate::types::Headers::from_pairs(&headers),
    };
    let cel = expr.eval_cel(&scope);
    let public = expr.eval(&scope);
    if !same_result(&public, &cel) {
        return Err(TestCaseError::fail(format!(
            "`{text}`: eval gave {public:?}, the cel crate {cel:?}"
        )));
    }
    let Some(native) = expr.eval_native(&scope) else {
        t.on_cel += 1;
        return Ok(());
    };
    match (&native, &cel) {
        (Ok(n), Ok(c)) if same(n, c) => t.both_values += 1,
        (Err(Fail::Error), Err(_)) => t.both_errors += 1,
        (Err(Fail::Unsupported), _) => t.unsupported += 1,
        _ => {
            return Err(TestCaseError::fail(format!(
                "`{text}`: native gave {native:?}, the cel crate {cel:?}"
            )))
        }
    }
    Ok(())
}
