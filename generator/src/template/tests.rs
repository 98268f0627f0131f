use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::*;

/// The wall clock the tests generate with.
const NOW: i64 = 1_700_000_000_000;

/// The example of the issue: every field type, a keyed Zipf string, lateness, a nested object.
const ORDERS: &str = r#"{
  "key": "customer_id",
  "fields": {
    "order_id": {"type": "sequence", "start": 1},
    "id": {"type": "uuid"},
    "customer_id": {"type": "string", "pattern": "customer-{}", "keys": 1000, "distribution": "zipf:1.1"},
    "amount": {"type": "float", "min": 1.0, "max": 500.0, "decimals": 2},
    "qty": {"type": "integer", "min": 1, "max": 10},
    "status": {"type": "choice", "values": ["new","paid","shipped"], "weights": [5,3,2]},
    "ts": {"type": "timestamp", "jitter_ms": 200, "late_ms": 60000, "late_fraction": 0.01},
    "address": {"type": "object", "fields": {"city": {"type": "choice", "values": ["Oslo","Lima"]}}}
  }
}"#;

fn records(template: &str, seed: u64, n: usize) -> Vec<TemplateRecord> {
    let t = Template::parse(template).unwrap_or_else(|e| panic!("{e}"));
    let mut g = t.generator(seed);
    (0..n).map(|_| g.next_record(NOW)).collect()
}

fn int(d: &Datum) -> i64 {
    match d {
        Datum::Int(n) => *n,
        other => panic!("not an integer: {other:?}"),
    }
}

fn float(d: &Datum) -> f64 {
    match d {
        Datum::Float(x) => *x,
        other => panic!("not a float: {other:?}"),
    }
}

fn text(d: &Datum) -> &str {
    match d {
        Datum::Str(s) => s,
        other => panic!("not text: {other:?}"),
    }
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
        && s.chars()
            .filter(|&c| c != '-')
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// 10,000 orders: every field has its type and range, and the weighted, skewed and late
/// draws come out in their proportions. The bounds are at least five standard deviations
/// wide, so they hold for any seed; three seeds are tried.
#[test]
fn orders_have_every_field_in_range_and_in_proportion() {
    const N: usize = 10_000;
    for seed in [1, 2, 42] {
        let out = records(ORDERS, seed, N);
        let mut ids = BTreeSet::new();
        let mut customers: BTreeMap<u64, usize> = BTreeMap::new();
        let mut qty: BTreeMap<i64, usize> = BTreeMap::new();
        let mut status: BTreeMap<String, usize> = BTreeMap::new();
        let mut cities: BTreeMap<String, usize> = BTreeMap::new();
        let mut late = 0;
        for (i, r) in out.iter().enumerate() {
            let v = &r.value;
            let names: Vec<&str> = match v {
                Datum::Object(f) => f.iter().map(|(k, _)| k.as_str()).collect(),
                other => panic!("{other:?}"),
            };
            assert_eq!(
                names,
                [
                    "order_id",
                    "id",
                    "customer_id",
                    "amount",
                    "qty",
                    "status",
                    "ts",
                    "address"
                ]
            );
            assert_eq!(int(v.get("order_id").unwrap()), i as i64 + 1);
            let id = text(v.get("id").unwrap());
            assert!(is_uuid_v4(id), "{id}");
            ids.insert(id.to_string());

            let customer = text(v.get("customer_id").unwrap());
            assert_eq!(r.key.as_deref(), Some(customer), "the key is the key field");
            let n: u64 = customer.strip_prefix("customer-").unwrap().parse().unwrap();
            assert!(n < 1000);
            *customers.entry(n).or_default() += 1;

            let amount = float(v.get("amount").unwrap());
            assert!((1.0..=500.0).contains(&amount), "{amount}");
            let cents = amount * 100.0;
            assert!(
                (cents - cents.round()).abs() < 1e-6,
                "two decimals: {amount}"
            );

            let q = int(v.get("qty").unwrap());
            assert!((1..=10).contains(&q));
            *qty.entry(q).or_default() += 1;

            *status
                .entry(text(v.get("status").unwrap()).to_string())
                .or_default() += 1;

            let ts = int(v.get("ts").unwrap());
            assert!((NOW - 200 - 60_000..=NOW).contains(&ts), "{ts}");
            if ts < NOW - 200 {
                assert!(ts <= NOW - 60_000, "late by late_ms: {ts}");
                late += 1;
            }
            assert_eq!(r.timestamp, None, "no timestamp field named");

            let city = text(v.get("address").unwrap().get("city").unwrap());
            *cities.entry(city.to_string()).or_default() += 1;
        }
        assert_eq!(ids.len(), N, "uuids are unique");
        // Zipf 1.1 over 1000 keys: rank 1 has ~17.7 % of the records, rank 2 ~8.2 %.
        let share = |k: u64| customers.get(&k).copied().unwrap_or(0) as f64 / N as f64;
        assert!((share(0) - 0.177).abs() < 0.02, "{}", share(0));
        assert!(share(0) > share(1) && share(1) > share(10) && share(10) > share(500));
        assert_eq!(qty.len(), 10, "every quantity drawn: {qty:?}");
        assert!(qty.values().all(|&c| (800..1200).contains(&c)), "{qty:?}");
        let p = |s: &str| status[s] as f64 / N as f64;
        assert!((p("new") - 0.5).abs() < 0.03, "{status:?}");
        assert!((p("paid") - 0.3).abs() < 0.03, "{status:?}");
        assert!((p("shipped") - 0.2).abs() < 0.03, "{status:?}");
        // 1 % late: 100 expected, standard deviation ~10.
        assert!((50..=150).contains(&late), "{late} late records");
        assert_eq!(cities.len(), 2);
        assert!(
            cities.values().all(|&c| (4700..5300).contains(&c)),
            "{cities:?}"
        );
    }
}

#[test]
fn json_text_keeps_the_template_order() {
    let r = &records(ORDERS, 7, 1)[0];
    let text = r.value.to_json_string();
    let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
    assert!(at("order_id") < at("id") && at("id") < at("customer_id"));
    assert!(at("ts") < at("address") && at("address") < at("city"));
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed, r.value.to_json_value());
    assert_eq!(parsed["order_id"], json!(1));
    assert!(parsed["amount"].is_f64());
}

#[test]
fn same_seed_same_records_other_seed_other_records() {
    let a = records(ORDERS, 99, 500);
    assert_eq!(a, records(ORDERS, 99, 500));
    assert_ne!(a, records(ORDERS, 100, 500));
    // A generator's clone goes on with the same records.
    let t = Template::parse(ORDERS).unwrap();
    let mut g = t.generator(5);
    g.next_record(NOW);
    let mut h = g.clone();
    assert_eq!(g.next_record(NOW), h.next_record(NOW));
}

#[test]
fn smaller_types_and_options() {
    let t = r#"{"key": "n", "timestamp": "at", "fields": {
        "n": {"type": "sequence", "start": 10, "step": -3},
        "device": {"type": "string", "keys": 3},
        "exact": {"type": "integer", "min": 7, "max": 7},
        "x": {"type": "float", "min": -1, "max": 1},
        "flag": {"type": "choice", "values": [true, false], "weights": [0, 1]},
        "level": {"type": "choice", "values": [1, 2.5]},
        "at": {"type": "timestamp"}
    }}"#;
    let out = records(t, 3, 2000);
    let mut devices = BTreeSet::new();
    let mut levels = BTreeSet::new();
    let mut xs = Vec::new();
    for (i, r) in out.iter().enumerate() {
        let v = &r.value;
        let n = 10 - 3 * i as i64;
        assert_eq!(int(v.get("n").unwrap()), n);
        assert_eq!(
            r.key,
            Some(n.to_string()),
            "an integer key is its decimal text"
        );
        devices.insert(text(v.get("device").unwrap()).to_string());
        assert_eq!(int(v.get("exact").unwrap()), 7);
        let x = float(v.get("x").unwrap());
        assert!((-1.0..=1.0).contains(&x));
        xs.push(x);
        assert_eq!(
            v.get("flag"),
            Some(&Datum::Bool(false)),
            "weight 0 is never drawn"
        );
        levels.insert(v.get("level").unwrap().to_json_string());
        assert_eq!(int(v.get("at").unwrap()), NOW, "no jitter: the wall clock");
        assert_eq!(
            r.timestamp,
            Some(NOW),
            "the timestamp field is the record timestamp"
        );
    }
    let want: BTreeSet<String> = ["device-0", "device-1", "device-2"]
        .map(String::from)
        .into();
    assert_eq!(devices, want, "the default pattern is <field>-{{}}");
    assert_eq!(levels, BTreeSet::from(["1".to_string(), "2.5".to_string()]));
    // Without decimals the floats are not rounded.
    assert!(xs.iter().any(|x| (x * 1e4).fract() != 0.0));
    // No key field: no key.
    let r = &records(r#"{"fields": {"a": {"type": "uuid"}}}"#, 1, 1)[0];
    assert_eq!((r.key.as_ref(), r.timestamp), (None, None));
}

/// Each bad template gets one error naming the JSON path of the problem.
#[test]
fn bad_templates_name_the_path() {
    let with = |fields: &str| format!(r#"{{"fields": {{{fields}}}}}"#);
    let cases: Vec<(String, &str)> = vec![
        ("{".into(), "not valid JSON: EOF while parsing"),
        ("[]".into(), "the template must be a JSON object, found an array"),
        ("{}".into(), "fields: missing: a template needs `fields`"),
        (r#"{"fields": {}}"#.into(), "fields: must have at least one field"),
        (
            r#"{"fields": {"a": {"type": "uuid"}}, "kye": "a"}"#.into(),
            "kye: unknown key (expected fields, key, timestamp, name, avro_schema)",
        ),
        (with(r#""a": 1"#), "fields.a: field \"a\" must be a JSON object, found the number 1"),
        (with(r#""a": {}"#), "fields.a.type: missing: a field needs a type (sequence, uuid, string, integer, float, choice, timestamp or object)"),
        (with(r#""a": {"type": "flaot"}"#), "fields.a.type: unknown type \"flaot\""),
        (
            with(r#""amount": {"type": "float", "min": 500, "max": 500}"#),
            "fields.amount.min: must be below max (500)",
        ),
        (
            with(r#""amount": {"type": "float", "max": 5}"#),
            "fields.amount.min: missing: a float field needs min and max",
        ),
        (
            with(r#""amount": {"type": "float", "min": 0.1, "max": 0.2, "decimals": 0}"#),
            "fields.amount.decimals: no number with 0 decimals lies between min and max",
        ),
        (
            with(r#""q": {"type": "integer", "min": 3, "max": 2}"#),
            "fields.q.min: must not be above max (2)",
        ),
        (
            with(r#""q": {"type": "integer", "min": 1.5, "max": 2}"#),
            "fields.q.min: expected an integer (64-bit), found the number 1.5",
        ),
        (
            with(r#""q": {"type": "integer", "min": 1, "max": 2, "mx": 3}"#),
            "fields.q.mx: unknown key (expected type, min, max)",
        ),
        (
            with(r#""s": {"type": "choice", "values": ["a", "b"], "weights": [1]}"#),
            "fields.s.weights: 1 weights for 2 values: give one per value",
        ),
        (
            with(r#""s": {"type": "choice", "values": ["a", "b"], "weights": [1, -1]}"#),
            "fields.s.weights[1]: must not be negative, found -1",
        ),
        (
            with(r#""s": {"type": "choice", "values": ["a", "b"], "weights": [0, 0]}"#),
            "fields.s.weights: at least one weight must be above 0",
        ),
        (
            with(r#""s": {"type": "choice", "values": ["a", 1]}"#),
            "fields.s.values[1]: the number 1 among string values",
        ),
        (
            with(r#""s": {"type": "choice", "values": [null]}"#),
            "fields.s.values[0]: expected a string, a number or a boolean, found null",
        ),
        (
            with(r#""s": {"type": "choice", "values": []}"#),
            "fields.s.values: must have at least one value",
        ),
        (
            with(r#""c": {"type": "string", "pattern": "customer"}"#),
            "fields.c.pattern: \"customer\" has no {} (where the key number goes)",
        ),
        (
            with(r#""c": {"type": "string", "keys": 0}"#),
            "fields.c.keys: must be at least 1",
        ),
        (
            with(r#""c": {"type": "string", "distribution": "normal"}"#),
            "fields.c.distribution: unknown key distribution \"normal\"",
        ),
        (
            with(r#""c": {"type": "string", "keys": 100000000, "distribution": "zipf"}"#),
            "fields.c.keys: at most 10000000 with a zipf distribution",
        ),
        (
            with(r#""ts": {"type": "timestamp", "late_fraction": 1.5, "late_ms": 5}"#),
            "fields.ts.late_fraction: must be between 0 and 1, found 1.5",
        ),
        (
            with(r#""ts": {"type": "timestamp", "late_fraction": 0.1}"#),
            "fields.ts.late_ms: must be above 0 when late_fraction is",
        ),
        (
            with(r#""ts": {"type": "timestamp", "jitter_ms": -1}"#),
            "fields.ts.jitter_ms: must not be negative, found -1",
        ),
        (
            with(r#""o": {"type": "object", "fields": {"city": {"type": "choice", "values": "Oslo"}}}"#),
            "fields.o.fields.city.values: expected an array of values, found the string \"Oslo\"",
        ),
        (
            with(r#""o": {"type": "object"}"#),
            "fields.o.fields: missing: an object field needs fields",
        ),
        (
            with(r#""a": {"type": "uuid"}, "a": {"type": "uuid"}"#),
            "fields.a: given twice",
        ),
        (
            r#"{"key": "b", "fields": {"a": {"type": "uuid"}}}"#.into(),
            "key: no top-level field \"b\" (the fields are a)",
        ),
        (
            r#"{"key": "o", "fields": {"o": {"type": "object", "fields": {"a": {"type": "uuid"}}}}}"#.into(),
            "key: field \"o\" is an object",
        ),
        (
            r#"{"timestamp": "a", "fields": {"a": {"type": "integer", "min": 1, "max": 2}}}"#.into(),
            "timestamp: field \"a\" is not of type timestamp",
        ),
        (
            r#"{"name": "my-order", "fields": {"a": {"type": "uuid"}}}"#.into(),
            "name: \"my-order\" is not a valid Avro name",
        ),
        (
            r#"{"avro_schema": "string", "fields": {"a": {"type": "uuid"}}}"#.into(),
            "avro_schema: expected an Avro schema (a JSON object), found the string \"string\"",
        ),
    ];
    for (template, want) in cases {
        let err = Template::parse(&template)
            .map(|_| ())
            .expect_err(&template)
            .to_string();
        assert!(
            err.starts_with(want),
            "template {template}\n  gave {err}\n  want {want}..."
        );
    }
}

#[test]
fn avro_schema_is_derived_from_the_fields() {
    let t = Template::parse(ORDERS).unwrap();
    assert_eq!(
        t.avro_schema().unwrap(),
        json!({"type": "record", "name": "Record", "fields": [
            {"name": "order_id", "type": "long"},
            {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "customer_id", "type": "string"},
            {"name": "amount", "type": "double"},
            {"name": "qty", "type": "long"},
            {"name": "status", "type": "string"},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "address", "type": {"type": "record", "name": "Record_address", "fields": [
                {"name": "city", "type": "string"}
            ]}}
        ]})
    );
    let t = Template::parse(
        r#"{"name": "com.example.Reading", "fields": {
            "ok": {"type": "choice", "values": [true]},
            "level": {"type": "choice", "values": [1, 2.5]},
            "n": {"type": "choice", "values": [1, 2]}
        }}"#,
    )
    .unwrap();
    assert_eq!(
        t.avro_schema().unwrap(),
        json!({"type": "record", "name": "com.example.Reading", "fields": [
            {"name": "ok", "type": "boolean"},
            {"name": "level", "type": "double"},
            {"name": "n", "type": "long"}
        ]})
    );
    // A field name Avro does not allow is named when (and only when) a schema is derived.
    let t = Template::parse(
        r#"{"fields": {"o": {"type": "object", "fields": {"zip-code": {"type": "uuid"}}}}}"#,
    )
    .unwrap();
    let err = t.avro_schema().unwrap_err().to_string();
    assert!(
        err.starts_with("fields.o.fields.zip-code: \"zip-code\" is not a valid Avro field name"),
        "{err}"
    );
    // A schema given in the template is used as it is.
    let t = Template::parse(
        r#"{"avro_schema": {"type": "record", "name": "X", "fields": [{"name": "zip-code", "type": "string"}]},
            "fields": {"zip-code": {"type": "uuid"}}}"#,
    )
    .unwrap();
    assert_eq!(t.avro_schema().unwrap()["name"], json!("X"));
}

#[test]
fn uuid_text_form() {
    assert_eq!(
        uuid_v4([0xff; 16]),
        "ffffffff-ffff-4fff-bfff-ffffffffffff",
        "version 4, variant 10xx"
    );
    assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
}
