//! A minimal pickle writer (protocol 2): enough of Python's format for the
//! dicts, lists, strings, integers, floats, booleans and tuples (no `None`) of a memory
//! snapshot, readable by `pickle.load`, serde-pickle and MemoryViz's reader.
//! No memo: every value is written in full.

/// A Python value to pickle.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Py {
    /// `True` / `False`.
    Bool(bool),
    /// An `int` (any value of `i128`).
    Int(i128),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `list`.
    List(Vec<Py>),
    /// A `tuple`.
    Tuple(Vec<Py>),
    /// A `dict` with string keys, in insertion order.
    Dict(Vec<(&'static str, Py)>),
    /// A `dict` with computed string keys.
    DictOwned(Vec<(String, Py)>),
}

impl Py {
    /// An `int` from any unsigned or signed integer.
    pub(crate) fn int(v: impl Into<i128>) -> Py {
        Py::Int(v.into())
    }

    /// A `str`.
    pub(crate) fn str(s: impl Into<String>) -> Py {
        Py::Str(s.into())
    }
}

const PROTO: u8 = 0x80;
const STOP: u8 = b'.';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const BININT: u8 = b'J';
const LONG1: u8 = 0x8a;
const BINFLOAT: u8 = b'G';
const BINUNICODE: u8 = b'X';
const EMPTY_LIST: u8 = b']';
const EMPTY_DICT: u8 = b'}';
const EMPTY_TUPLE: u8 = b')';
const MARK: u8 = b'(';
const APPENDS: u8 = b'e';
const SETITEMS: u8 = b'u';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;

/// `value` as a protocol-2 pickle.
pub(crate) fn to_vec(value: &Py) -> Vec<u8> {
    let mut out = vec![PROTO, 2];
    write(value, &mut out);
    out.push(STOP);
    out
}

fn write(v: &Py, out: &mut Vec<u8>) {
    match v {
        Py::Bool(b) => out.push(if *b { NEWTRUE } else { NEWFALSE }),
        Py::Int(i) => write_int(*i, out),
        Py::Float(f) => {
            out.push(BINFLOAT);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Py::Str(s) => write_str(s, out),
        Py::List(items) => {
            out.push(EMPTY_LIST);
            if !items.is_empty() {
                out.push(MARK);
                items.iter().for_each(|i| write(i, out));
                out.push(APPENDS);
            }
        }
        Py::Tuple(items) => {
            match items.len() {
                0 => {
                    out.push(EMPTY_TUPLE);
                    return;
                }
                1..=3 => items.iter().for_each(|i| write(i, out)),
                _ => {
                    out.push(MARK);
                    items.iter().for_each(|i| write(i, out));
                }
            }
            out.push(match items.len() {
                1 => TUPLE1,
                2 => TUPLE2,
                3 => TUPLE3,
                _ => TUPLE,
            });
        }
        Py::Dict(items) => write_dict(items.iter().map(|(k, v)| (*k, v)), out),
        Py::DictOwned(items) => write_dict(items.iter().map(|(k, v)| (k.as_str(), v)), out),
    }
}

fn write_dict<'a>(mut items: impl Iterator<Item = (&'a str, &'a Py)>, out: &mut Vec<u8>) {
    out.push(EMPTY_DICT);
    let Some((k, v)) = items.next() else { return };
    out.push(MARK);
    write_str(k, out);
    write(v, out);
    for (k, v) in items {
        write_str(k, out);
        write(v, out);
    }
    out.push(SETITEMS);
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(BINUNICODE);
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_int(i: i128, out: &mut Vec<u8>) {
    if (0..=0xff).contains(&i) {
        out.extend_from_slice(&[BININT1, i as u8]);
    } else if (0..=0xffff).contains(&i) {
        out.push(BININT2);
        out.extend_from_slice(&(i as u16).to_le_bytes());
    } else if (i32::MIN as i128..=i32::MAX as i128).contains(&i) {
        out.push(BININT);
        out.extend_from_slice(&(i as i32).to_le_bytes());
    } else {
        // LONG1: the shortest little-endian two's complement form.
        let bytes = i.to_le_bytes();
        let mut n = bytes.len();
        while n > 1 {
            let (last, prev) = (bytes[n - 1], bytes[n - 2]);
            let redundant = (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0);
            if !redundant {
                break;
            }
            n -= 1;
        }
        out.extend_from_slice(&[LONG1, n as u8]);
        out.extend_from_slice(&bytes[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_use_python_s_opcodes() {
        assert_eq!(to_vec(&Py::int(7)), [0x80, 2, b'K', 7, b'.']);
        assert_eq!(to_vec(&Py::int(300)), [0x80, 2, b'M', 44, 1, b'.']);
        assert_eq!(
            to_vec(&Py::int(-1)),
            [0x80, 2, b'J', 255, 255, 255, 255, b'.']
        );
        // 2**40: LONG1 with 6 bytes, as pickle.dumps(2**40, 2) writes it
        assert_eq!(
            to_vec(&Py::int(1u64 << 40)),
            [0x80, 2, 0x8a, 6, 0, 0, 0, 0, 0, 1, b'.']
        );
        // 2**63: a ninth byte keeps it positive
        assert_eq!(
            to_vec(&Py::int(1u64 << 63)),
            [0x80, 2, 0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, b'.']
        );
        assert_eq!(
            to_vec(&Py::Tuple(vec![Py::int(0), Py::int(0)])),
            [0x80, 2, b'K', 0, b'K', 0, 0x86, b'.']
        );
        assert_eq!(to_vec(&Py::List(vec![])), [0x80, 2, b']', b'.']);
        assert_eq!(
            to_vec(&Py::Dict(vec![("a", Py::Bool(true))])),
            [
                0x80, 2, b'}', b'(', b'X', 1, 0, 0, 0, b'a', 0x88, b'u', b'.'
            ]
        );
    }
}
