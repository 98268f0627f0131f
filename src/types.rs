//! Plain data shared by every layer: task ids and records.

use std::fmt;

/// Identifies a task: one partition number of one topology (a group of co-partitioned source
/// topics). Written `<topology>_<partition>`, as Kafka Streams does, and used as the name of the
/// task's state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    /// Index of the topology in the worker's list.
    pub topology: usize,
    /// The input partition number the task owns in every source topic of its topology.
    pub partition: i32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.topology, self.partition)
    }
}

/// One input record as a processor sees it; borrows the consumer's buffers, so it costs no copy.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Topic the record was read from.
    pub topic: &'a str,
    /// Partition the record was read from.
    pub partition: i32,
    /// Offset of the record in its partition.
    pub offset: i64,
    /// Record timestamp in epoch milliseconds, when the broker gave one.
    pub timestamp: Option<i64>,
    /// Key bytes, if any.
    pub key: Option<&'a [u8]>,
    /// Value bytes, if any (`None` is a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers, in order, read where they lie.
    pub headers: Headers<'a>,
}

/// Headers kept elsewhere (the consumer's buffers), read one at a time.
pub trait HeaderList: Sync {
    /// How many headers there are.
    fn count(&self) -> usize;
    /// The name and value of header `index` (`< count()`); a null value reads as empty.
    fn header(&self, index: usize) -> (&str, &[u8]);
}

/// A record's headers, in order. Reading them copies nothing: a processor that never looks at
/// them costs nothing for them.
#[derive(Clone, Copy)]
pub struct Headers<'a>(HeadersRef<'a>);

#[derive(Clone, Copy)]
enum HeadersRef<'a> {
    Pairs(&'a [(String, Vec<u8>)]),
    List(&'a dyn HeaderList),
}

impl<'a> Headers<'a> {
    /// No headers.
    pub const fn none() -> Self {
        Self(HeadersRef::Pairs(&[]))
    }

    /// Headers held as (name, value) pairs.
    pub fn from_pairs(pairs: &'a [(String, Vec<u8>)]) -> Self {
        Self(HeadersRef::Pairs(pairs))
    }

    /// Headers read from a list kept elsewhere.
    pub fn from_list(list: &'a dyn HeaderList) -> Self {
        Self(HeadersRef::List(list))
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        match self.0 {
            HeadersRef::Pairs(p) => p.len(),
            HeadersRef::List(l) => l.count(),
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Header `index`: its name and value.
    fn at(&self, index: usize) -> (&'a str, &'a [u8]) {
        match self.0 {
            HeadersRef::Pairs(p) => (&p[index].0, &p[index].1),
            HeadersRef::List(l) => l.header(index),
        }
    }

    /// Every header, in order: (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let headers = *self;
        (0..headers.len()).map(move |i| headers.at(i))
    }

    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Copies the headers out.
    pub fn to_vec(&self) -> Vec<(String, Vec<u8>)> {
        self.iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect()
    }
}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, v)| (n, String::from_utf8_lossy(v))))
            .finish()
    }
}

/// A record a processor sends to an output topic.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRecord {
    /// Destination topic.
    pub topic: String,
    /// Explicit partition; `None` lets the producer's partitioner (murmur2, Java-compatible) pick
    /// one from the key.
    pub partition: Option<i32>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes; `None` writes a tombstone.
    pub value: Option<Vec<u8>>,
    /// Timestamp in epoch milliseconds; `None` lets the producer stamp it.
    pub timestamp: Option<i64>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OutputRecord {
    /// A keyed record for `topic` with no explicit partition, timestamp or headers.
    pub fn new(topic: impl Into<String>, key: Option<Vec<u8>>, value: Option<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            partition: None,
            key,
            value,
            timestamp: None,
            headers: Vec::new(),
        }
    }
}
