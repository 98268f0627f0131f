//! The common shapes of CEL expressions, evaluated without the `cel` interpreter.
//!
//! The `cel` crate binds every variable into a [`cel::Context`] by converting the [`Value`] into
//! its own boxed values, which copies a whole map for `value` or a wide field, and then walks the
//! AST through trait objects. Most pipeline expressions are a handful of field reads, literals
//! and operators (`amount > 50`, `{'user': user, 'amount': amount * 2}`): for those, compiling
//! builds a [`Native`] tree from the AST the crate has already parsed, and evaluating it borrows
//! the record's values from the [`Scope`] instead.
//!
//! The subset: literals, the record variables but `headers`, value fields as variables, field
//! selection (`a.b`) and `has()`, indexing (`a[i]`), unary `-` and `!`, `+ - * / %`,
//! `== != < <= > >=`, `&&`, `||`, `?:`, `in`, and list and map literals. Anything else (function
//! and method calls, comprehensions, optional syntax, struct literals, `headers`, a name that
//! could be a type) leaves the whole expression to the crate.
//!
//! The semantics are the crate's (0.15), not the spec's where the two differ, and a differential
//! property test (`expr::differential`) holds them together. The parts that need care:
//! - arithmetic takes two operands of one type (`int`, `uint`, `double`; `+` also strings, bytes
//!   and lists); `int` and `uint` fail on overflow and on division or remainder by zero, `double`
//!   follows IEEE 754 and has no `%`;
//! - `==` never fails: numbers of different types compare by value, an `int` or `uint` with a
//!   `double` through `as f64` (the crate's choice; the spec compares exactly, so for the crate
//!   `9007199254740993 == 9007199254740992.0`), NaN equals nothing; lists and maps compare
//!   element by element, map keys with the int/uint fallback of lookups;
//! - ordering takes numbers of any mix (same conversions; NaN fails), or two strings, bytes or
//!   bools; anything else fails;
//! - `a && b` is false if either side is false, even when the other fails or is not a bool,
//!   except that a failing right side wins over a left side that is not `false` (the crate
//!   evaluates the right side with `?`); `||` likewise with true.
//!
//! A failure here carries no message: the caller evaluates the expression again with the crate,
//! which produces its error (and, were this module ever wrong about a failure, the right value).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::operators as op;
use cel::common::ast::{EntryExpr, Expr as Ast, LiteralValue};
use cel::objects::{Key, KeyRef, Map};
use cel::{Env, IdedExpr, Value};

use super::Scope;

/// Why the native evaluation gave no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fail {
    /// CEL fails here too.
    Error,
    /// A value this module does not model (a timestamp, a duration, ...) or an operation whose
    /// result it does not reproduce (a list plus a map): only the crate can say.
    Unsupported,
}

type Result<T> = std::result::Result<T, Fail>;

/// An expression compiled for native evaluation.
#[derive(Debug)]
pub(crate) struct Native {
    root: Node,
}

#[derive(Debug)]
enum Node {
    Lit(Value),
    Key,
    Value,
    Partition,
    Offset,
    Timestamp,
    /// A top-level field of the value, bound as a variable.
    Field(String),
    /// `operand.field`
    Select(Box<Node>, String),
    /// `has(operand.field)`
    Has(Box<Node>, String),
    /// `operand[index]`
    Index(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Neg(Box<Node>),
    Arith(Arith, Box<Node>, Box<Node>),
    Order(Order, Box<Node>, Box<Node>),
    Eq(Box<Node>, Box<Node>),
    Ne(Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cond(Box<[Node; 3]>),
    In(Box<Node>, Box<Node>),
    List(Vec<Node>),
    Map(Box<MapLiteral>),
}

#[derive(Debug)]
struct MapLiteral {
    entries: Vec<(Node, Node)>,
    /// The keys, when they are all literals and distinct: the usual `{'user': .., 'n': ..}`
    /// then needs neither evaluating them nor checking for repeats.
    literal_keys: Option<Vec<Key>>,
}

impl MapLiteral {
    fn new(entries: Vec<(Node, Node)>) -> Self {
        let mut keys = HashMap::new();
        for (k, _) in &entries {
            let Node::Lit(k) = k else { break };
            let Ok(k) = map_key(k) else { break };
            if lookup_key(&keys, &k).is_some() {
                break;
            }
            keys.insert(k, Value::Null);
        }
        let literal_keys = (keys.len() == entries.len()).then(|| {
            entries
                .iter()
                .map(|(k, _)| match k {
                    Node::Lit(k) => map_key(k).expect("checked above"),
                    _ => unreachable!("checked above"),
                })
                .collect()
        });
        Self {
            entries,
            literal_keys,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy)]
enum Order {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Native {
    /// The native form of `ast` (as parsed by `env`), or `None` when some part of it is outside
    /// the subset.
    pub(crate) fn compile(ast: &IdedExpr, env: &Env) -> Option<Self> {
        Some(Self {
            root: node(ast, env)?,
        })
    }

    /// Evaluates the expression for one record.
    pub(crate) fn eval(&self, scope: &Scope<'_>) -> Result<Value> {
        self.root.eval(scope).map(Cow::into_owned)
    }
}

fn boxed(ast: &IdedExpr, env: &Env) -> Option<Box<Node>> {
    node(ast, env).map(Box::new)
}

fn node(ast: &IdedExpr, env: &Env) -> Option<Node> {
    Some(match &ast.expr {
        Ast::Literal(lit) => Node::Lit(literal(lit)?),
        Ast::Ident(name) => {
            // Bare names resolve to a variable first and then to a type: a value field named
            // `int` that is missing would be the type `int`, so such names go to the crate.
            if env.types().find_type(name).is_some() {
                return None;
            }
            match name.as_str() {
                "key" => Node::Key,
                "value" => Node::Value,
                "partition" => Node::Partition,
                "offset" => Node::Offset,
                "timestamp" => Node::Timestamp,
                // `headers` is built per evaluation on the crate's path; keeping it there keeps
                // this module independent of how the scope holds them.
                "headers" => return None,
                // `.x` (absolute) and `@x` (the macros' internal variables) are not fields.
                n if n.starts_with(['.', '@']) => return None,
                n => Node::Field(n.to_string()),
            }
        }
        Ast::Select(select) => {
            // `a.b.c` is looked up as the variable `a.b.c`, then as that type, before it is `a`
            // with fields selected; only single names are ever bound, but a type could match.
            if names_a_type(ast, env) || names_a_type(&select.operand, env) {
                return None;
            }
            let operand = boxed(&select.operand, env)?;
            if select.test {
                Node::Has(operand, select.field.clone())
            } else {
                Node::Select(operand, select.field.clone())
            }
        }
        Ast::Call(call) => {
            if call.target.is_some() {
                return None;
            }
            let a = &call.args;
            match (call.func_name.as_str(), a.len()) {
                (op::LOGICAL_NOT, 1) => Node::Not(boxed(&a[0], env)?),
                (op::NEGATE, 1) => Node::Neg(boxed(&a[0], env)?),
                (op::CONDITIONAL, 3) => Node::Cond(Box::new([
                    node(&a[0], env)?,
                    node(&a[1], env)?,
                    node(&a[2], env)?,
                ])),
                (name, 2) => {
                    let (l, r) = (boxed(&a[0], env)?, boxed(&a[1], env)?);
                    match name {
                        op::ADD => Node::Arith(Arith::Add, l, r),
                        op::SUBSTRACT => Node::Arith(Arith::Sub, l, r),
                        op::MULTIPLY => Node::Arith(Arith::Mul, l, r),
                        op::DIVIDE => Node::Arith(Arith::Div, l, r),
                        op::MODULO => Node::Arith(Arith::Rem, l, r),
                        op::LESS => Node::Order(Order::Lt, l, r),
                        op::LESS_EQUALS => Node::Order(Order::Le, l, r),
                        op::GREATER => Node::Order(Order::Gt, l, r),
                        op::GREATER_EQUALS => Node::Order(Order::Ge, l, r),
                        op::EQUALS => Node::Eq(l, r),
                        op::NOT_EQUALS => Node::Ne(l, r),
                        op::LOGICAL_AND => Node::And(l, r),
                        op::LOGICAL_OR => Node::Or(l, r),
                        op::IN => Node::In(l, r),
                        op::INDEX => Node::Index(l, r),
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
        Ast::List(list) if list.optional_indices.is_empty() => Node::List(
            list.elements
                .iter()
                .map(|e| node(e, env))
                .collect::<Option<_>>()?,
        ),
        Ast::Map(map) => Node::Map(Box::new(MapLiteral::new(
            map.entries
                .iter()
                .map(|entry| match &entry.expr {
                    EntryExpr::MapEntry(e) if !e.optional => {
                        Some((node(&e.key, env)?, node(&e.value, env)?))
                    }
                    _ => None,
                })
                .collect::<Option<_>>()?,
        ))),
        Ast::List(_) | Ast::Comprehension(_) | Ast::Struct(_) | Ast::Unspecified => return None,
    })
}

/// Whether `ast` spells a qualified name (`a.b.c`) that is a registered type.
fn names_a_type(ast: &IdedExpr, env: &Env) -> bool {
    let mut segments = Vec::new();
    let mut e = ast;
    loop {
        match &e.expr {
            Ast::Ident(name) => {
                segments.push(name.as_str());
                break;
            }
            Ast::Select(s) if !s.test => {
                segments.push(s.field.as_str());
                e = &s.operand;
            }
            _ => return false,
        }
    }
    segments.reverse();
    env.types().find_type(&segments.join(".")).is_some()
}

fn literal(lit: &LiteralValue) -> Option<Value> {
    Some(match lit {
        LiteralValue::Boolean(b) => Value::Bool(*b.inner()),
        LiteralValue::Int(i) => Value::Int(*i.inner()),
        LiteralValue::UInt(u) => Value::UInt(*u.inner()),
        LiteralValue::Double(d) => Value::Float(*d.inner()),
        LiteralValue::Null => Value::Null,
        LiteralValue::String(s) => Value::String(Arc::new(s.inner().to_string())),
        LiteralValue::Bytes(b) => Value::Bytes(Arc::new(b.inner().to_vec())),
    })
}

/// Values this module does not model; whatever touches one is left to the crate.
fn exotic(v: &Value) -> bool {
    !matches!(
        v,
        Value::Null
            | Value::Bool(_)
            | Value::Int(_)
            | Value::UInt(_)
            | Value::Float(_)
            | Value::String(_)
            | Value::Bytes(_)
            | Value::List(_)
            | Value::Map(_)
    )
}

fn boolean<'a>(b: bool) -> Cow<'a, Value> {
    Cow::Owned(Value::Bool(b))
}

/// A bool operand of `&&`, `||`, `?:`: anything else fails.
fn as_bool(v: Result<Cow<'_, Value>>) -> Result<bool> {
    match v?.as_ref() {
        Value::Bool(b) => Ok(*b),
        _ => Err(Fail::Error),
    }
}

impl Node {
    fn eval<'a>(&'a self, s: &Scope<'a>) -> Result<Cow<'a, Value>> {
        Ok(match self {
            Node::Lit(v) => Cow::Borrowed(v),
            Node::Key => Cow::Borrowed(s.key),
            Node::Value => Cow::Borrowed(s.value),
            Node::Partition => Cow::Owned(Value::Int(s.partition.into())),
            Node::Offset => Cow::Owned(Value::Int(s.offset)),
            Node::Timestamp => Cow::Owned(Value::Int(s.timestamp)),
            Node::Field(name) => match s.value {
                Value::Map(m) => Cow::Borrowed(named(m, name).ok_or(Fail::Error)?),
                _ => return Err(Fail::Error),
            },
            Node::Select(operand, field) => select(operand.eval(s)?, field)?,
            Node::Has(operand, field) => match operand.eval(s)?.as_ref() {
                Value::Map(m) => boolean(named(m, field).is_some()),
                v if exotic(v) => return Err(Fail::Unsupported),
                _ => return Err(Fail::Error),
            },
            Node::Index(operand, index) => {
                let container = operand.eval(s)?;
                let index = index.eval(s)?;
                self::index(container, &index)?
            }
            Node::Not(e) => match e.eval(s)?.as_ref() {
                Value::Bool(b) => boolean(!b),
                v if exotic(v) => return Err(Fail::Unsupported),
                _ => return Err(Fail::Error),
            },
            Node::Neg(e) => Cow::Owned(match e.eval(s)?.as_ref() {
                Value::Int(i) => Value::Int(i.checked_neg().ok_or(Fail::Error)?),
                Value::Float(f) => Value::Float(-f),
                v if exotic(v) => return Err(Fail::Unsupported),
                _ => return Err(Fail::Error),
            }),
            Node::Arith(op, l, r) => {
                let l = l.eval(s)?;
                let r = r.eval(s)?;
                Cow::Owned(arith(*op, &l, &r)?)
            }
            Node::Order(op, l, r) => {
                let l = l.eval(s)?;
                let r = r.eval(s)?;
                let o = order(&l, &r)?;
                boolean(match op {
                    Order::Lt => o.is_lt(),
                    Order::Le => o.is_le(),
                    Order::Gt => o.is_gt(),
                    Order::Ge => o.is_ge(),
                })
            }
            Node::Eq(l, r) => {
                let l = l.eval(s)?;
                let r = r.eval(s)?;
                boolean(equals(&l, &r)?)
            }
            Node::Ne(l, r) => {
                let l = l.eval(s)?;
                let r = r.eval(s)?;
                boolean(!equals(&l, &r)?)
            }
            // As the crate does it: the left side's failure is kept while the right side may
            // still decide; the right side's own failure is returned as is.
            Node::And(l, r) => {
                let left = as_bool(l.eval(s));
                match left {
                    Ok(false) => return Ok(boolean(false)),
                    Err(Fail::Unsupported) => return Err(Fail::Unsupported),
                    _ => {}
                }
                match (left, r.eval(s)?.as_ref()) {
                    (Ok(true), Value::Bool(b)) => boolean(*b),
                    (Err(_), Value::Bool(false)) => boolean(false),
                    _ => return Err(Fail::Error),
                }
            }
            Node::Or(l, r) => {
                let left = as_bool(l.eval(s));
                match left {
                    Ok(true) => return Ok(boolean(true)),
                    Err(Fail::Unsupported) => return Err(Fail::Unsupported),
                    _ => {}
                }
                match (left, r.eval(s)?.as_ref()) {
                    (Ok(false), Value::Bool(b)) => boolean(*b),
                    (Err(_), Value::Bool(true)) => boolean(true),
                    _ => return Err(Fail::Error),
                }
            }
            Node::Cond(parts) => {
                let [c, t, f] = parts.as_ref();
                if as_bool(c.eval(s))? {
                    t.eval(s)?
                } else {
                    f.eval(s)?
                }
            }
            Node::In(l, r) => {
                let needle = l.eval(s)?;
                let haystack = r.eval(s)?;
                boolean(contains(&haystack, &needle)?)
            }
            Node::List(items) => Cow::Owned(Value::List(Arc::new(
                items
                    .iter()
                    .map(|e| e.eval(s).map(Cow::into_owned))
                    .collect::<Result<_>>()?,
            ))),
            Node::Map(literal) => {
                let entries = &literal.entries;
                let mut map = HashMap::with_capacity(entries.len());
                if let Some(keys) = &literal.literal_keys {
                    for (key, (_, v)) in keys.iter().zip(entries) {
                        map.insert(key.clone(), v.eval(s)?.into_owned());
                    }
                    return Ok(Cow::Owned(Value::Map(Map { map: Arc::new(map) })));
                }
                for (k, v) in entries {
                    let key = map_key(k.eval(s)?.as_ref())?;
                    let value = v.eval(s)?.into_owned();
                    // A repeated key is an error (the crate's default, as the spec asks), and
                    // numeric keys repeat by value: `{0: 1, 0u: 2}`.
                    if lookup_key(&map, &key).is_some() {
                        return Err(Fail::Error);
                    }
                    map.insert(key, value);
                }
                Cow::Owned(Value::Map(Map { map: Arc::new(map) }))
            }
        })
    }
}

fn select<'a>(operand: Cow<'a, Value>, field: &str) -> Result<Cow<'a, Value>> {
    Ok(match operand {
        Cow::Borrowed(v) => Cow::Borrowed(member(v, field)?),
        Cow::Owned(v) => Cow::Owned(member(&v, field)?.clone()),
    })
}

fn member<'v>(v: &'v Value, field: &str) -> Result<&'v Value> {
    match v {
        Value::Map(m) => named(m, field).ok_or(Fail::Error),
        v if exotic(v) => Err(Fail::Unsupported),
        _ => Err(Fail::Error),
    }
}

/// `container[index]`: a list by a whole number, a map by key.
fn index<'a>(container: Cow<'a, Value>, index: &Value) -> Result<Cow<'a, Value>> {
    if exotic(index) {
        return Err(Fail::Unsupported);
    }
    Ok(match container {
        Cow::Borrowed(c) => Cow::Borrowed(element(c, index)?),
        Cow::Owned(c) => Cow::Owned(element(&c, index)?.clone()),
    })
}

fn element<'c>(container: &'c Value, index: &Value) -> Result<&'c Value> {
    let found = match container {
        Value::List(items) => {
            let i = match *index {
                Value::Int(i) => usize::try_from(i).ok(),
                Value::UInt(u) => usize::try_from(u).ok(),
                // A whole double indexes like an int.
                Value::Float(d) => double_to_int(d).and_then(|i| usize::try_from(i).ok()),
                _ => None,
            };
            i.and_then(|i| items.get(i))
        }
        Value::Map(m) => find(m, index),
        v if exotic(v) => return Err(Fail::Unsupported),
        _ => None,
    };
    found.ok_or(Fail::Error)
}

/// The entry of `m` under the string key `name`. Records are mostly narrow (a stage decodes only
/// the fields it reads), and comparing a few keys costs less than hashing the name with the
/// map's SipHash.
fn named<'m>(m: &'m Map, name: &str) -> Option<&'m Value> {
    if m.map.len() <= 8 {
        m.map.iter().find_map(|(k, v)| match k {
            Key::String(s) if s.as_str() == name => Some(v),
            _ => None,
        })
    } else {
        m.get(&KeyRef::String(name))
    }
}

/// Looks `key` up the way the crate does: as is, then as the same number of the other
/// numeric key type; a double only as a whole int, then a whole uint.
fn find<'m>(m: &'m Map, key: &Value) -> Option<&'m Value> {
    match *key {
        Value::String(ref s) => named(m, s),
        // `Map::get` already falls back between int and uint.
        Value::Int(i) => m.get(&KeyRef::Int(i)),
        Value::UInt(u) => m.get(&KeyRef::Uint(u)),
        Value::Bool(b) => m.get(&KeyRef::Bool(b)),
        Value::Float(d) => double_to_int(d)
            .and_then(|i| m.map.get(&Key::Int(i)))
            .or_else(|| double_to_uint(d).and_then(|u| m.map.get(&Key::Uint(u)))),
        _ => None,
    }
}

/// Whether the map being built already has `key`, numbers compared by value.
fn lookup_key<'m>(map: &'m HashMap<Key, Value>, key: &Key) -> Option<&'m Value> {
    map.get(key).or_else(|| match *key {
        Key::Int(i) => u64::try_from(i).ok().and_then(|u| map.get(&Key::Uint(u))),
        Key::Uint(u) => i64::try_from(u).ok().and_then(|i| map.get(&Key::Int(i))),
        _ => None,
    })
}

fn map_key(v: &Value) -> Result<Key> {
    Ok(match v {
        Value::String(s) => Key::String(s.clone()),
        Value::Int(i) => Key::Int(*i),
        Value::UInt(u) => Key::Uint(*u),
        Value::Bool(b) => Key::Bool(*b),
        v if exotic(v) => return Err(Fail::Unsupported),
        _ => return Err(Fail::Error),
    })
}

/// `d` as an `i64` when it converts without loss; like the crate (and cel-go), -2^63 does not.
fn double_to_int(d: f64) -> Option<i64> {
    if d > i64::MIN as f64 && d < i64::MAX as f64 {
        let i = d as i64;
        (i as f64 == d).then_some(i)
    } else {
        None
    }
}

/// `d` as a `u64` when it converts without loss.
fn double_to_uint(d: f64) -> Option<u64> {
    if d >= 0.0 && d < u64::MAX as f64 {
        let u = d as u64;
        (u as f64 == d).then_some(u)
    } else {
        None
    }
}

fn arith(op: Arith, l: &Value, r: &Value) -> Result<Value> {
    use Value::{Bytes, Float, Int, List, String, UInt};
    if exotic(l) || exotic(r) {
        return Err(Fail::Unsupported);
    }
    let checked = |v: Option<Value>| v.ok_or(Fail::Error);
    match (op, l, r) {
        (Arith::Add, Int(a), Int(b)) => checked(a.checked_add(*b).map(Int)),
        (Arith::Sub, Int(a), Int(b)) => checked(a.checked_sub(*b).map(Int)),
        (Arith::Mul, Int(a), Int(b)) => checked(a.checked_mul(*b).map(Int)),
        // `checked_div` and `checked_rem` fail on zero and on i64::MIN / -1.
        (Arith::Div, Int(a), Int(b)) => checked(a.checked_div(*b).map(Int)),
        (Arith::Rem, Int(a), Int(b)) => checked(a.checked_rem(*b).map(Int)),
        (Arith::Add, UInt(a), UInt(b)) => checked(a.checked_add(*b).map(UInt)),
        (Arith::Sub, UInt(a), UInt(b)) => checked(a.checked_sub(*b).map(UInt)),
        (Arith::Mul, UInt(a), UInt(b)) => checked(a.checked_mul(*b).map(UInt)),
        (Arith::Div, UInt(a), UInt(b)) => checked(a.checked_div(*b).map(UInt)),
        (Arith::Rem, UInt(a), UInt(b)) => checked(a.checked_rem(*b).map(UInt)),
        (Arith::Add, Float(a), Float(b)) => Ok(Float(a + b)),
        (Arith::Sub, Float(a), Float(b)) => Ok(Float(a - b)),
        (Arith::Mul, Float(a), Float(b)) => Ok(Float(a * b)),
        (Arith::Div, Float(a), Float(b)) => Ok(Float(a / b)),
        (Arith::Add, String(a), String(b)) => {
            let mut s = std::string::String::with_capacity(a.len() + b.len());
            s.push_str(a);
            s.push_str(b);
            Ok(String(Arc::new(s)))
        }
        (Arith::Add, Bytes(a), Bytes(b)) => Ok(Bytes(Arc::new([a.as_slice(), b].concat()))),
        (Arith::Add, List(a), List(b)) => Ok(List(Arc::new([a.as_slice(), b].concat()))),
        // The crate appends a map's keys, in its own hash order.
        (Arith::Add, List(_), Value::Map(_)) => Err(Fail::Unsupported),
        _ => Err(Fail::Error),
    }
}

/// The ordering of `<`, `<=`, `>`, `>=`.
fn order(l: &Value, r: &Value) -> Result<std::cmp::Ordering> {
    use std::cmp::Ordering;
    use Value::{Bool, Bytes, Float, Int, String, UInt};
    if exotic(l) || exotic(r) {
        return Err(Fail::Unsupported);
    }
    match (l, r) {
        (Int(a), Int(b)) => Ok(a.cmp(b)),
        (UInt(a), UInt(b)) => Ok(a.cmp(b)),
        // An int below zero is below every uint; a uint above i64::MAX above every int.
        (Int(a), UInt(b)) => Ok(u64::try_from(*a).map_or(Ordering::Less, |a| a.cmp(b))),
        (UInt(a), Int(b)) => Ok(i64::try_from(*a).map_or(Ordering::Greater, |a| a.cmp(b))),
        // The crate converts the integer with `as f64`, which rounds above 2^53.
        (Int(a), Float(b)) => (*a as f64).partial_cmp(b).ok_or(Fail::Error),
        (UInt(a), Float(b)) => (*a as f64).partial_cmp(b).ok_or(Fail::Error),
        (Float(a), Int(b)) => a.partial_cmp(&(*b as f64)).ok_or(Fail::Error),
        (Float(a), UInt(b)) => a.partial_cmp(&(*b as f64)).ok_or(Fail::Error),
        (Float(a), Float(b)) => a.partial_cmp(b).ok_or(Fail::Error),
        (String(a), String(b)) => Ok(a.as_str().cmp(b.as_str())),
        (Bytes(a), Bytes(b)) => Ok(a.as_slice().cmp(b.as_slice())),
        (Bool(a), Bool(b)) => Ok(a.cmp(b)),
        _ => Err(Fail::Error),
    }
}

/// `==`: never an error, but a value it does not model is left to the crate.
fn equals(l: &Value, r: &Value) -> Result<bool> {
    use Value::{Bool, Bytes, Float, Int, List, Null, String, UInt};
    if exotic(l) || exotic(r) {
        return Err(Fail::Unsupported);
    }
    Ok(match (l, r) {
        (Int(_) | UInt(_) | Float(_), Int(_) | UInt(_) | Float(_)) => {
            order(l, r).is_ok_and(|o| o.is_eq())
        }
        (String(a), String(b)) => a == b,
        (Bytes(a), Bytes(b)) => a == b,
        (Bool(a), Bool(b)) => a == b,
        (Null, Null) => true,
        (List(a), List(b)) => {
            if a.len() != b.len() {
                return Ok(false);
            }
            for (x, y) in a.iter().zip(b.iter()) {
                if !equals(x, y)? {
                    return Ok(false);
                }
            }
            true
        }
        (Value::Map(a), Value::Map(b)) => {
            if a.map.len() != b.map.len() {
                return Ok(false);
            }
            for (k, v) in a.map.iter() {
                let Some(w) = b.get(k) else {
                    return Ok(false);
                };
                if !equals(v, w)? {
                    return Ok(false);
                }
            }
            true
        }
        _ => false,
    })
}

/// `needle in haystack`: an element of a list (by `==`), a key of a map.
fn contains(haystack: &Value, needle: &Value) -> Result<bool> {
    if exotic(haystack) || exotic(needle) {
        return Err(Fail::Unsupported);
    }
    match haystack {
        Value::List(items) => {
            for item in items.iter() {
                if equals(item, needle)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Value::Map(m) => match needle {
            Value::String(_)
            | Value::Int(_)
            | Value::UInt(_)
            | Value::Bool(_)
            | Value::Float(_) => Ok(find(m, needle).is_some()),
            _ => Err(Fail::Error),
        },
        _ => Err(Fail::Error),
    }
}
