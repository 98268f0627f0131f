use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value as Json};
use tempfile::TempDir;

use super::convert::{base64_decode, base64_encode, decimal_bytes, decimal_string};
use super::*;

/// Writes each `(name, schema)` into a fresh directory; returns it (keep it alive) and the paths.
fn schema_files(schemas: &[(&str, &str)]) -> (TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = schemas
        .iter()
        .map(|(name, text)| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write schema");
            p
        })
        .collect();
    (dir, paths)
}

fn plain(schema: &str) -> (TempDir, AvroCodec) {
    let (dir, paths) = schema_files(&[("s.avsc", schema)]);
    let codec = AvroCodec::from_schema_file(&paths[0]).expect("valid schema");
    (dir, codec)
}

const CLICK: &str = r#"{"type":"record","name":"Click","fields":[
    {"name":"user","type":"string"},{"name":"amount","type":"double"}]}"#;

/// A schema with every type the codec converts.
const ALL_TYPES: &str = r#"{
  "type": "record", "name": "All", "namespace": "test",
  "fields": [
    {"name": "n", "type": "null"},
    {"name": "b", "type": "boolean"},
    {"name": "i", "type": "int"},
    {"name": "l", "type": "long"},
    {"name": "f", "type": "float"},
    {"name": "d", "type": "double"},
    {"name": "s", "type": "string"},
    {"name": "by", "type": "bytes"},
    {"name": "fx", "type": {"type": "fixed", "name": "Four", "size": 4}},
    {"name": "e", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}},
    {"name": "arr", "type": {"type": "array", "items": "long"}},
    {"name": "m", "type": {"type": "map", "values": "double"}},
    {"name": "addr", "type": {"type": "record", "name": "Address", "fields": [
        {"name": "city", "type": "string"},
        {"name": "zip", "type": ["null", "int"]}]}},
    {"name": "addr2", "type": ["null", "Address"]},
    {"name": "opt_s", "type": ["null", "string"]},
    {"name": "multi", "type": ["null", "long", "string", "Color"]},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "tsu", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "date", "type": {"type": "int", "logicalType": "date"}},
    {"name": "tm", "type": {"type": "int", "logicalType": "time-millis"}},
    {"name": "dec", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
    {"name": "decfx", "type": {"type": "fixed", "name": "D8", "size": 8, "logicalType": "decimal", "precision": 18, "scale": 3}},
    {"name": "uuid", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "dur", "type": {"type": "fixed", "name": "Dur", "size": 12, "logicalType": "duration"}}
  ]
}"#;

fn all_types_value() -> Json {
    json!({
        "n": null,
        "b": true,
        "i": -42,
        "l": 9_007_199_254_740_993_i64,
        "f": 0.1,
        "d": 42.5,
        "s": "héllo",
        "by": "AAEC/w==",
        "fx": "3q2+7w==",
        "e": "GREEN",
        "arr": [1, -2, 3],
        "m": {"a": 1.5, "b": -2.25},
        "addr": {"city": "Oslo", "zip": 150},
        "addr2": {"city": "Bergen", "zip": null},
        "opt_s": "x",
        "multi": "RED-ish",
        "ts": 1_700_000_000_123_i64,
        "tsu": 1_700_000_000_123_456_i64,
        "date": 19_700,
        "tm": 3_600_000,
        "dec": "-1234.50",
        "decfx": "123456789012345.678",
        "uuid": "67e55044-10b1-426f-9247-bb680e5fe0c8",
        "dur": {"months": 1, "days": 2, "millis": 3}
    })
}

/// Every type survives encode -> decode, in the documented JSON form.
#[test]
fn avro_round_trip_of_every_type() {
    let (_d, codec) = plain(ALL_TYPES);
    let value = all_types_value();
    let bytes = codec.encode(&value).expect("encode");
    assert_eq!(codec.decode(&bytes).expect("decode"), value);
}

/// Union branches: null, a plain value of its natural type, an enum symbol as a string; a
/// nullable named record given as null.
#[test]
fn avro_union_branch_choice() {
    let (_d, codec) = plain(ALL_TYPES);
    for multi in [json!(null), json!(7), json!("text"), json!("GREEN")] {
        let mut v = all_types_value();
        v["multi"] = multi.clone();
        v["addr2"] = json!(null);
        v["opt_s"] = json!(null);
        let out = codec
            .decode(&codec.encode(&v).expect("encode"))
            .expect("decode");
        assert_eq!(out, v, "{multi}");
    }
    let (_d, codec) = plain(r#"["null", "long", "double", "string"]"#);
    for v in [json!(7), json!(7.5), json!("s"), json!(null)] {
        assert_eq!(codec.decode(&codec.encode(&v).unwrap()).unwrap(), v);
    }
    // 7 takes the long branch (index 1, zigzag 2), then zigzag(7) = 14; 7.5 the double branch.
    assert_eq!(codec.encode(&json!(7)).unwrap(), vec![2, 14]);
    assert_eq!(codec.encode(&json!(7.5)).unwrap()[0], 4);
    // With no natural branch, the first that accepts the value: an integer into double.
    let (_d, codec) = plain(r#"["null", "double"]"#);
    assert_eq!(
        codec.decode(&codec.encode(&json!(3)).unwrap()).unwrap(),
        json!(3.0)
    );
}

/// Integers go into double and float fields; integral floats into long fields; missing
/// optional and defaulted fields are filled.
#[test]
fn avro_lenient_numbers_and_defaults() {
    let (_d, codec) = plain(
        r#"{"type":"record","name":"R","fields":[
            {"name":"d","type":"double"},
            {"name":"f","type":"float"},
            {"name":"l","type":"long"},
            {"name":"opt","type":["null","string"]},
            {"name":"def","type":"string","default":"dflt"},
            {"name":"defu","type":["int","null"],"default":5}]}"#,
    );
    let out = codec
        .decode(&codec.encode(&json!({"d": 3, "f": 2, "l": 42.0})).unwrap())
        .unwrap();
    assert_eq!(
        out,
        json!({"d": 3.0, "f": 2.0, "l": 42, "opt": null, "def": "dflt", "defu": 5})
    );
}

/// The Confluent framing and the datum bytes, written out by hand: magic 0, id 7 big-endian,
/// "u1" as zigzag length 2 (0x04) and its bytes, 42.5 as a little-endian IEEE double.
const CLICK_ID7: [u8; 16] = [
    0x00, // magic
    0x00, 0x00, 0x00, 0x07, // schema id 7
    0x04, b'u', b'1', // string: zigzag(2) = 4, then UTF-8
    0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x45, 0x40, // 42.5 = 0x4045400000000000, LE
];

#[test]
fn avro_plain_encoding_pinned_bytes() {
    let (_d, codec) = plain(CLICK);
    let bytes = codec
        .encode(&json!({"user": "u1", "amount": 42.5}))
        .unwrap();
    assert_eq!(bytes, CLICK_ID7[5..]);
    // Zigzag longs: 0 -> 00, -1 -> 01, 1 -> 02, -3 -> 05, 150 -> 300 = AC 02.
    let (_d, codec) = plain(r#"{"type":"array","items":"long"}"#);
    let bytes = codec.encode(&json!([0, -1, 1, -3, 150])).unwrap();
    assert_eq!(bytes, [0x0a, 0x00, 0x01, 0x02, 0x05, 0xac, 0x02, 0x00]);
    assert_eq!(codec.decode(&bytes).unwrap(), json!([0, -1, 1, -3, 150]));
}

#[test]
fn avro_registry_wire_format_pinned_bytes() {
    let reg = FakeRegistry::start(|method, path, _| match (method, path) {
        ("POST", "/subjects/clicks-value/versions") => (200, json!({"id": 7}).to_string()),
        ("GET", "/schemas/ids/7") => (200, json!({"schema": CLICK}).to_string()),
        _ => (
            404,
            json!({"error_code": 40401, "message": "nope"}).to_string(),
        ),
    });
    let (_d, paths) = schema_files(&[("click.avsc", CLICK)]);
    let codec =
        AvroCodec::with_registry(&reg.url, value_subject("clicks"), Some(&paths[0])).unwrap();
    let value = json!({"user": "u1", "amount": 42.5});
    assert_eq!(codec.encode(&value).unwrap(), CLICK_ID7);

    // A reader with no schema file decodes the hand-written bytes with the fetched schema.
    let reader = AvroCodec::with_registry(&reg.url, value_subject("clicks"), None).unwrap();
    assert_eq!(reader.decode(&CLICK_ID7).unwrap(), value);
}

/// Decoding many records fetches each schema id once.
#[test]
fn avro_registry_fetch_by_id_is_cached() {
    let reg = FakeRegistry::start(|_, path, _| {
        match path {
        "/schemas/ids/7" => (200, json!({"schema": CLICK}).to_string()),
        "/schemas/ids/8" => (
            200,
            json!({"schema": r#"{"type":"record","name":"Click","fields":[{"name":"user","type":"string"}]}"#, "schemaType": "AVRO"}).to_string(),
        ),
        _ => (404, json!({"error_code": 40403, "message": "Schema not found"}).to_string()),
    }
    });
    let codec = AvroCodec::with_registry(&reg.url, "clicks-value".into(), None).unwrap();
    for _ in 0..50 {
        assert_eq!(
            codec.decode(&CLICK_ID7).unwrap(),
            json!({"user": "u1", "amount": 42.5})
        );
    }
    let id8 = [0, 0, 0, 0, 8, 0x02, b'x'];
    for _ in 0..10 {
        assert_eq!(codec.decode(&id8).unwrap(), json!({"user": "x"}));
    }
    assert_eq!(
        reg.requests(),
        vec![
            (
                "GET".to_string(),
                "/schemas/ids/7".to_string(),
                String::new()
            ),
            (
                "GET".to_string(),
                "/schemas/ids/8".to_string(),
                String::new()
            ),
        ]
    );
    // An unknown id: the registry's message, the id and the address.
    let err = codec.decode(&[0, 0, 0, 0, 9, 0]).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "schema id 9: registry {}: GET /schemas/ids/9: 404 Schema not found (error code 40403)",
            reg.url
        )
    );
}

/// The schema file is registered once, on the first encode, with the file's text.
#[test]
fn avro_registry_registers_on_first_encode() {
    let reg = FakeRegistry::start(|method, path, _| match (method, path) {
        ("POST", "/subjects/clicks-value/versions") => (200, json!({"id": 7}).to_string()),
        _ => (500, "boom".into()),
    });
    let (_d, paths) = schema_files(&[("click.avsc", CLICK)]);
    let codec = AvroCodec::with_registry(&reg.url, "clicks-value".into(), Some(&paths[0])).unwrap();
    assert!(reg.requests().is_empty(), "no request before the first use");
    for i in 0..20 {
        let bytes = codec.encode(&json!({"user": "u1", "amount": i})).unwrap();
        assert_eq!(bytes[..5], [0, 0, 0, 0, 7]);
        // Our own schema decodes without a fetch.
        assert_eq!(codec.decode(&bytes).unwrap()["amount"], json!(f64::from(i)));
    }
    let requests = reg.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let (method, path, body) = &requests[0];
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("POST", "/subjects/clicks-value/versions")
    );
    let body: Json = serde_json::from_str(body).unwrap();
    assert_eq!(body, json!({"schema": CLICK}));
    assert_eq!(
        reg.headers()[0].get("content-type").map(String::as_str),
        Some("application/vnd.schemaregistry.v1+json")
    );
}

/// Without a schema file, encoding uses the subject's latest schema, looked up once.
#[test]
fn avro_registry_latest_lookup() {
    let reg = FakeRegistry::start(|method, path, _| match (method, path) {
        ("GET", "/subjects/clicks-value/versions/latest") => (
            200,
            json!({"subject": "clicks-value", "version": 3, "id": 7, "schema": CLICK}).to_string(),
        ),
        _ => (500, "boom".into()),
    });
    let codec = AvroCodec::with_registry(&reg.url, "clicks-value".into(), None).unwrap();
    for _ in 0..5 {
        assert_eq!(
            codec
                .encode(&json!({"user": "u1", "amount": 42.5}))
                .unwrap(),
            CLICK_ID7
        );
    }
    assert_eq!(reg.requests().len(), 1);
}

/// A registry that fails: the error names the request, the address, the status and message;
/// the next call tries again.
#[test]
fn avro_registry_errors_are_surfaced_and_retried() {
    let reg = FakeRegistry::start(|_, _, _| {
        (
            409,
            json!({"error_code": 409, "message": "Schema being registered is incompatible"})
                .to_string(),
        )
    });
    let (_d, paths) = schema_files(&[("click.avsc", CLICK)]);
    let codec = AvroCodec::with_registry(&reg.url, "clicks-value".into(), Some(&paths[0])).unwrap();
    let err = codec
        .encode(&json!({"user": "u1", "amount": 1}))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("registering schema file ")
            && err.contains(&format!(
                "under subject clicks-value: registry {}: POST /subjects/clicks-value/versions: 409 Schema being registered is incompatible (error code 409)",
                reg.url
            )),
        "{err}"
    );
    let _ = codec.encode(&json!({"user": "u1", "amount": 1}));
    assert_eq!(reg.requests().len(), 2);

    // Nobody listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let codec =
        AvroCodec::with_registry(&format!("http://127.0.0.1:{port}"), "s".into(), None).unwrap();
    let err = codec.decode(&[0, 0, 0, 0, 1]).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "schema id 1: registry http://127.0.0.1:{port}: GET /schemas/ids/1: "
        )),
        "{err}"
    );
    assert!(AvroCodec::with_registry("localhost:8081", "s".into(), None).is_err());
}

/// With a reader schema file, records written with an older schema come out in the reader's
/// shape (a new field with a default; a removed field dropped).
#[test]
fn avro_registry_resolves_writer_to_reader() {
    let v1 = r#"{"type":"record","name":"Click","fields":[
        {"name":"user","type":"string"},{"name":"amount","type":"double"},{"name":"old","type":"int"}]}"#;
    let v2 = r#"{"type":"record","name":"Click","fields":[
        {"name":"user","type":"string"},{"name":"amount","type":"double"},
        {"name":"country","type":"string","default":"NO"}]}"#;
    let reg = FakeRegistry::start(move |_, path, _| match path {
        "/schemas/ids/1" => (200, json!({"schema": v1}).to_string()),
        _ => (404, "{}".into()),
    });
    let (_d, paths) = schema_files(&[("v1.avsc", v1), ("v2.avsc", v2)]);
    let old = AvroCodec::from_schema_file(&paths[0]).unwrap();
    let mut framed = vec![0, 0, 0, 0, 1];
    framed.extend(
        old.encode(&json!({"user": "u", "amount": 1.5, "old": 3}))
            .unwrap(),
    );
    let codec = AvroCodec::with_registry(&reg.url, "c-value".into(), Some(&paths[1])).unwrap();
    assert_eq!(
        codec.decode(&framed).unwrap(),
        json!({"user": "u", "amount": 1.5, "country": "NO"})
    );
}

#[test]
fn avro_bad_wire_format() {
    let codec = AvroCodec::with_registry("http://127.0.0.1:9", "s".into(), None).unwrap();
    let err = |b: &[u8]| codec.decode(b).unwrap_err().to_string();
    assert_eq!(
        err(br#"{"user":"u1"}"#),
        "not Confluent wire format: first byte 0x7b, expected 0"
    );
    assert_eq!(err(&[]), "not Confluent wire format: empty value");
    assert_eq!(
        err(&[0, 0, 7]),
        "not Confluent wire format: 3 bytes, shorter than the 5-byte header (magic byte and schema id)"
    );
}

#[test]
fn avro_truncated_and_trailing_bytes() {
    let (_d, codec) = plain(CLICK);
    let full = &CLICK_ID7[5..];
    let err = codec.decode(&full[..6]).unwrap_err().to_string();
    assert!(err.starts_with("decoding with the schema file: "), "{err}");
    assert!(err.ends_with("(datum of 6 bytes)"), "{err}");
    let mut long = full.to_vec();
    long.push(0);
    assert_eq!(
        codec.decode(&long).unwrap_err().to_string(),
        "decoding with the schema file: 1 trailing bytes after the datum (11 bytes read): the record was written with another schema"
    );
}

/// Values that do not fit: each message has the field path, what was expected and found.
#[test]
fn avro_mismatch_errors_name_the_field() {
    let (_d, codec) = plain(ALL_TYPES);
    let err = |patch: Json| {
        let mut v = all_types_value();
        for (k, x) in patch.as_object().unwrap() {
            if x == &json!("<remove>") {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = x.clone();
            }
        }
        codec.encode(&v).unwrap_err().to_string()
    };
    assert_eq!(err(json!({"d": "x"})), r#"d: expected double, found "x""#);
    assert_eq!(
        err(json!({"i": 3_000_000_000_i64})),
        "i: 3000000000 is out of range for int (32-bit)"
    );
    assert_eq!(err(json!({"l": 1.5})), "l: expected long, found 1.5");
    assert_eq!(err(json!({"b": 1})), "b: expected boolean, found 1");
    assert_eq!(
        err(json!({"arr": [1, "two"]})),
        r#"arr[1]: expected long, found "two""#
    );
    assert_eq!(
        err(json!({"m": {"k": null}})),
        "m.k: expected double, found null"
    );
    assert_eq!(
        err(json!({"addr": {"city": 5}})),
        "addr.city: expected string, found 5"
    );
    assert_eq!(
        err(json!({"addr2": {"city": "x", "zip": "0150"}})),
        r#"addr2.zip: expected one of [null, int], found "0150""#
    );
    assert_eq!(
        err(json!({"e": "BLUE"})),
        r#"e: "BLUE" is not a symbol of enum test.Color (RED, GREEN)"#
    );
    assert_eq!(
        err(json!({"s": "<remove>"})),
        "s: missing required field (type string, no default)"
    );
    assert_eq!(
        err(json!({"extra": 1})),
        "extra: not a field of record test.All (fields: n, b, i, l, f, d, s, by, fx, e, arr, m, addr, addr2, opt_s, multi, ts, tsu, date, tm, dec, decfx, uuid, dur)"
    );
    assert_eq!(
        err(json!({"fx": "AAE="})),
        "fx: expected 4 bytes for fixed test.Four, found 2"
    );
    assert_eq!(
        err(json!({"by": "!!"})),
        "by: bytes must be base64: Invalid symbol 33, offset 0."
    );
    assert_eq!(
        err(json!({"dec": "1.005"})),
        r#"dec: "1.005": more decimal places than the schema's scale 2"#
    );
    assert_eq!(
        err(json!({"dec": "123456789.5"})),
        r#"dec: "123456789.5": 11 digits at scale 2, more than the schema's precision 10"#
    );
    assert_eq!(
        err(json!({"multi": true})),
        "multi: expected one of [null, long, string, enum test.Color], found true"
    );
    assert_eq!(
        err(json!({"ts": "2024-01-01"})),
        r#"ts: expected timestamp-millis, found "2024-01-01""#
    );
    let (_d, codec) = plain(CLICK);
    assert_eq!(
        codec.encode(&json!([1])).unwrap_err().to_string(),
        "value: expected record Click, found an array"
    );
}

#[test]
fn avro_bad_schema_file() {
    let (_d, paths) = schema_files(&[("bad.avsc", r#"{"type":"record","name":"R"}"#)]);
    let err = AvroCodec::from_schema_file(&paths[0])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with(&format!("schema file {}: ", paths[0].display())),
        "{err}"
    );
    let missing = PathBuf::from("/nonexistent/x.avsc");
    let err = AvroCodec::from_schema_file(&missing)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("schema file /nonexistent/x.avsc: "),
        "{err}"
    );
}

#[test]
fn avro_decimal_text_conversions() {
    for (text, scale, bytes, back) in [
        ("0", 2, vec![0x00], "0.00"),
        ("1.5", 2, vec![0x00, 0x96], "1.50"),
        ("-1.5", 2, vec![0xff, 0x6a], "-1.50"),
        ("-1.28", 2, vec![0x80], "-1.28"),
        ("-1.29", 2, vec![0xff, 0x7f], "-1.29"),
        ("1.27", 2, vec![0x7f], "1.27"),
        ("12e-1", 1, vec![0x0c], "1.2"),
        ("0.005", 3, vec![0x05], "0.005"),
        ("-0.005", 3, vec![0xfb], "-0.005"),
        ("1e3", 0, vec![0x03, 0xe8], "1000"),
    ] {
        assert_eq!(decimal_bytes(text, scale, 38).unwrap(), bytes, "{text}");
        assert_eq!(decimal_string(&bytes, scale), back, "{text}");
    }
    // Wider than i128: 40 digits.
    let big = "-1234567890123456789012345678901234567890";
    assert_eq!(decimal_string(&decimal_bytes(big, 0, 40).unwrap(), 0), big);
    assert!(decimal_bytes("1.2.3", 2, 10).is_err());
    assert!(decimal_bytes("", 2, 10).is_err());
    assert!(decimal_bytes("abc", 2, 10).is_err());
}

#[test]
fn avro_base64() {
    for (raw, text) in [
        (&b""[..], ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
        (&[0xde, 0xad, 0xbe, 0xef, 0xff], "3q2+7/8="),
    ] {
        assert_eq!(base64_encode(raw), text);
        assert_eq!(base64_decode(text).unwrap(), raw);
    }
    assert_eq!(base64_decode("Zm8").unwrap(), b"fo");
    assert!(base64_decode("Z").is_err());
    assert!(base64_decode("Zm9v===").is_err());
}

#[test]
fn avro_codec_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<AvroCodec>();
    assert_eq!(value_subject("clicks"), "clicks-value");
}

/// A canned-answer HTTP server on 127.0.0.1 that records each request.
struct FakeRegistry {
    url: String,
    log: Arc<Mutex<Vec<Request>>>,
}

struct Request {
    method: String,
    path: String,
    body: String,
    headers: std::collections::HashMap<String, String>,
}

type Handler = dyn Fn(&str, &str, &str) -> (u16, String) + Send + Sync;

impl FakeRegistry {
    fn start(handler: impl Fn(&str, &str, &str) -> (u16, String) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let thread_log = Arc::clone(&log);
        // Lives until the test process ends; answers one request per connection.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(req) = read_request(&mut stream) else {
                    continue;
                };
                let (status, body) = handler(&req.method, &req.path, &req.body);
                thread_log.lock().unwrap().push(req);
                let answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        FakeRegistry { url, log }
    }

    fn requests(&self) -> Vec<(String, String, String)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.method.clone(), r.path.clone(), r.body.clone()))
            .collect()
    }

    fn headers(&self) -> Vec<std::collections::HashMap<String, String>> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.headers.clone())
            .collect()
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = std::collections::HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        body: String::from_utf8_lossy(&body).into_owned(),
        headers,
    })
}
