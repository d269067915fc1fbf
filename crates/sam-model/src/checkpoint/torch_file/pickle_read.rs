//! A pickle interpreter for `torch.save` files that never imports or calls anything.
//!
//! Pickle opcodes are interpreted into a tree of [`Object`]s: a `GLOBAL` becomes an
//! [`Object::Class`] naming the global, a `REDUCE` an [`Object::Reduce`] holding the callable
//! and its arguments, a persistent id (a tensor storage in torch's format) an
//! [`Object::PersistentLoad`]. Which globals are acceptable is decided later, on the finished
//! tree (see `super::unpickle`). On top of that, what a reader of untrusted files needs:
//!
//! - every opcode's argument must fit in the remaining bytes, so a corrupt length never
//!   allocates gigabytes; opcodes outside the protocol-2 set `torch.save` writes are named;
//! - the nesting depth and the number of objects ever created (memo look-ups copy) are counted
//!   and capped, so neither a deeply nested nor a "billion laughs" pickle can exhaust the stack
//!   or the memory;
//! - errors carry the byte offset of the opcode that failed.

use std::collections::HashMap;

/// Deepest object nesting accepted. A state_dict tensor is ~6 levels deep, an optimiser
/// state ~10; anything near this limit is not a checkpoint.
const MAX_DEPTH: u32 = 100;

/// Most objects (including memo copies) one pickle may create: far above the ~20 per tensor of
/// a state_dict (vit_h: ~600 tensors) or a training checkpoint, far below exhausting memory.
const MAX_OBJECTS: u64 = 5_000_000;

/// A value of an unpickled object tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Object {
    /// A global (`module.name`), never imported.
    Class {
        module_name: String,
        class_name: String,
    },
    Int(i64),
    Float(f64),
    Unicode(String),
    Bool(bool),
    None,
    Tuple(Vec<Object>),
    List(Vec<Object>),
    /// Keys and values in the order the file sets them.
    Dict(Vec<(Object, Object)>),
    /// `callable(*args)`, not called (`REDUCE` and `NEWOBJ`).
    Reduce {
        callable: Box<Object>,
        args: Box<Object>,
    },
    /// `object.__setstate__(args)` on anything but a dict, not applied.
    Build {
        callable: Box<Object>,
        args: Box<Object>,
    },
    /// A persistent id (`BINPERSID`): in torch's format, the tuple naming a storage record.
    PersistentLoad(Box<Object>),
}

/// A pickle that cannot be interpreted.
#[derive(Debug)]
pub(crate) struct PickleError {
    /// Byte offset of the opcode that failed.
    pub offset: u64,
    /// What went wrong.
    pub message: String,
}

/// Interprets a whole pickle into an object tree, never running code from it.
pub(crate) fn parse(bytes: &[u8]) -> Result<Object, PickleError> {
    parse_with_limits(bytes, MAX_DEPTH, MAX_OBJECTS)
}

/// [`parse`] with explicit limits on nesting depth and on the number of objects created.
fn parse_with_limits(
    bytes: &[u8],
    max_depth: u32,
    max_objects: u64,
) -> Result<Object, PickleError> {
    let mut machine = Machine {
        bytes,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        created: 0,
    };
    loop {
        let at = machine.pos;
        let step = machine.step().map_err(|message| PickleError {
            offset: at as u64,
            message,
        })?;
        if let Step::Stop(value) = step {
            return Ok(value.obj);
        }
        let fail = |message: String| PickleError {
            offset: at as u64,
            message,
        };
        if let Some(top) = machine.stack.last() {
            if top.depth > max_depth {
                return Err(fail(format!(
                    "objects nested deeper than {max_depth} levels; not a checkpoint"
                )));
            }
        }
        if machine.created > max_objects {
            return Err(fail(format!(
                "more than {max_objects} pickle objects; not a checkpoint"
            )));
        }
    }
}

/// An object with its nesting depth and the number of objects it holds, itself included.
#[derive(Debug, Clone)]
struct Value {
    obj: Object,
    depth: u32,
    objects: u64,
}

impl Value {
    fn leaf(obj: Object) -> Self {
        Self {
            obj,
            depth: 1,
            objects: 1,
        }
    }

    /// An object built from `parts` (a tuple, a call and its arguments, ...).
    fn combine(parts: &[Value], obj: Object) -> Self {
        Self {
            obj,
            depth: 1 + parts.iter().map(|p| p.depth).max().unwrap_or(0),
            objects: 1 + parts.iter().map(|p| p.objects).sum::<u64>(),
        }
    }

    /// Counts `parts` as added into this container.
    fn absorb(&mut self, parts: &[Value]) {
        let depth = 1 + parts.iter().map(|p| p.depth).max().unwrap_or(0);
        self.depth = self.depth.max(depth);
        self.objects += parts.iter().map(|p| p.objects).sum::<u64>();
    }
}

enum Step {
    Continue,
    Stop(Value),
}

/// The interpreter's state: the input, the stack, the marks on it and the memo.
struct Machine<'a> {
    bytes: &'a [u8],
    /// Offset of the next byte to read.
    pos: usize,
    stack: Vec<Value>,
    /// Stack lengths at each `MARK` not yet consumed.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Objects created so far, memo copies included.
    created: u64,
}

const TRUNCATED: &str = "the pickle ends inside an opcode (truncated file?)";

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| TRUNCATED.to_string())?;
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A newline-terminated line (`GLOBAL`'s module and name), without the newline.
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.bytes[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| "GLOBAL is not terminated (truncated file?)".to_string())?;
        let line = String::from_utf8_lossy(&rest[..len]).into_owned();
        self.pos += len + 1;
        Ok(line)
    }

    fn push(&mut self, value: Value) {
        self.created += 1;
        self.stack.push(value);
    }

    fn push_leaf(&mut self, obj: Object) {
        self.push(Value::leaf(obj));
    }

    /// Pops the top of the stack; the values below the innermost mark are out of reach.
    fn pop(&mut self) -> Result<Value, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("the pickle pops from an empty stack (corrupt file?)".to_string());
        }
        self.stack
            .pop()
            .ok_or_else(|| "the pickle pops from an empty stack (corrupt file?)".to_string())
    }

    fn pop_n<const N: usize>(&mut self) -> Result<Vec<Value>, String> {
        let mut values = Vec::with_capacity(N);
        for _ in 0..N {
            values.push(self.pop()?);
        }
        values.reverse();
        Ok(values)
    }

    /// Pops everything above the innermost mark, and the mark.
    fn pop_to_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| "the pickle uses a MARK it never set (corrupt file?)".to_string())?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    /// The container on top of the stack, for APPEND(S) and SETITEM(S).
    fn top(&mut self, opcode: &str) -> Result<&mut Value, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(format!("{opcode} without a container (corrupt file?)"));
        }
        self.stack
            .last_mut()
            .ok_or_else(|| format!("{opcode} without a container (corrupt file?)"))
    }

    fn append(&mut self, opcode: &str, items: Vec<Value>) -> Result<(), String> {
        let top = self.top(opcode)?;
        top.absorb(&items);
        match &mut top.obj {
            Object::List(list) => {
                list.extend(items.into_iter().map(|v| v.obj));
                Ok(())
            }
            other => Err(format!("{opcode} to {}, not a list", kind_of(other))),
        }
    }

    fn set_items(&mut self, opcode: &str, items: Vec<Value>) -> Result<(), String> {
        if items.len() % 2 != 0 {
            return Err(format!("{opcode} with a key but no value (corrupt file?)"));
        }
        let top = self.top(opcode)?;
        top.absorb(&items);
        match &mut top.obj {
            Object::Dict(dict) => {
                let mut items = items.into_iter().map(|v| v.obj);
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    dict.push((k, v));
                }
                Ok(())
            }
            other => Err(format!("{opcode} on {}, not a dict", kind_of(other))),
        }
    }

    fn memo_get(&mut self, id: u32) -> Result<(), String> {
        let value = self
            .memo
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("the pickle reads memo entry {id} it never stored"))?;
        self.created += value.objects - 1;
        self.push(value);
        Ok(())
    }

    fn memo_put(&mut self, id: u32) -> Result<(), String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        let value = match self.stack.last() {
            Some(v) if self.stack.len() > floor => v.clone(),
            _ => return Err("the pickle memoizes an empty stack (corrupt file?)".to_string()),
        };
        self.created += value.objects;
        self.memo.insert(id, value);
        Ok(())
    }

    /// Interprets one opcode.
    fn step(&mut self) -> Result<Step, String> {
        if self.pos >= self.bytes.len() {
            return Err("the pickle ends before its STOP opcode (truncated file?)".to_string());
        }
        let op = self.u8()?;
        match op {
            0x80 => {
                self.u8()?; // PROTO: the protocol number
            }
            b'.' => {
                let value = self.pop()?;
                return Ok(Step::Stop(value));
            }
            b'c' => {
                let module_name = self.line()?;
                let class_name = self.line()?;
                self.push_leaf(Object::Class {
                    module_name,
                    class_name,
                });
            }
            b'K' => {
                let v = self.u8()?;
                self.push_leaf(Object::Int(v.into()));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.array()?);
                self.push_leaf(Object::Int(v.into()));
            }
            b'J' => {
                let v = i32::from_le_bytes(self.array()?);
                self.push_leaf(Object::Int(v.into()));
            }
            0x8a => {
                // LONG1: n bytes of two's-complement little-endian.
                let n = self.u8()? as usize;
                if n > 8 {
                    return Err(format!("LONG1 of {n} bytes does not fit in 64 bits"));
                }
                let bytes = self.take(n)?;
                let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
                let mut le = [if negative { 0xff } else { 0 }; 8];
                le[..n].copy_from_slice(bytes);
                self.push_leaf(Object::Int(i64::from_le_bytes(le)));
            }
            b'G' => {
                // BINFLOAT is big-endian, unlike the integers.
                let v = f64::from_be_bytes(self.array()?);
                self.push_leaf(Object::Float(v));
            }
            b'X' => {
                let len = self.u32()? as usize;
                let bytes = self.take(len)?;
                let s = std::str::from_utf8(bytes)
                    .map_err(|_| "BINUNICODE is not valid UTF-8".to_string())?
                    .to_string();
                self.push_leaf(Object::Unicode(s));
            }
            0x88 => self.push_leaf(Object::Bool(true)),
            0x89 => self.push_leaf(Object::Bool(false)),
            b'N' => self.push_leaf(Object::None),
            b'}' => self.push_leaf(Object::Dict(Vec::new())),
            b']' => self.push_leaf(Object::List(Vec::new())),
            b')' => self.push_leaf(Object::Tuple(Vec::new())),
            b'(' => self.marks.push(self.stack.len()),
            b'h' => {
                let id = self.u8()?;
                self.memo_get(id.into())?;
            }
            b'j' => {
                let id = self.u32()?;
                self.memo_get(id)?;
            }
            b'q' => {
                let id = self.u8()?;
                self.memo_put(id.into())?;
            }
            b'r' => {
                let id = self.u32()?;
                self.memo_put(id)?;
            }
            b't' => {
                let parts = self.pop_to_mark()?;
                self.push_tuple(parts);
            }
            0x85 => {
                let parts = self.pop_n::<1>()?;
                self.push_tuple(parts);
            }
            0x86 => {
                let parts = self.pop_n::<2>()?;
                self.push_tuple(parts);
            }
            0x87 => {
                let parts = self.pop_n::<3>()?;
                self.push_tuple(parts);
            }
            b'd' => {
                let parts = self.pop_to_mark()?;
                self.push_leaf(Object::Dict(Vec::new()));
                self.set_items("DICT", parts)?;
            }
            b'Q' => {
                let parts = self.pop_n::<1>()?;
                let obj = Object::PersistentLoad(Box::new(parts[0].obj.clone()));
                self.push(Value::combine(&parts, obj));
            }
            b'R' | 0x81 => {
                let parts = self.pop_n::<2>()?;
                let obj = reduce(parts[0].obj.clone(), parts[1].obj.clone());
                self.push(Value::combine(&parts, obj));
            }
            b'b' => {
                let parts = self.pop_n::<2>()?;
                let obj = build(parts[0].obj.clone(), parts[1].obj.clone());
                self.push(Value::combine(&parts, obj));
            }
            b'a' => {
                let item = self.pop()?;
                self.append("APPEND", vec![item])?;
            }
            b'e' => {
                let items = self.pop_to_mark()?;
                self.append("APPENDS", items)?;
            }
            b's' => {
                let items = self.pop_n::<2>()?;
                self.set_items("SETITEM", items)?;
            }
            b'u' => {
                let items = self.pop_to_mark()?;
                self.set_items("SETITEMS", items)?;
            }
            other => {
                let name = unsupported_opcode_name(other).unwrap_or("unknown");
                return Err(format!(
                    "unsupported pickle opcode 0x{other:02x} ({name}); torch.save writes \
                     protocol 2 by default, re-save the file with torch.save(obj, path)"
                ));
            }
        }
        Ok(Step::Continue)
    }

    fn push_tuple(&mut self, parts: Vec<Value>) {
        let obj = Object::Tuple(parts.iter().map(|p| p.obj.clone()).collect());
        self.push(Value::combine(&parts, obj));
    }
}

/// `REDUCE` / `NEWOBJ`: an ordered or default dict becomes a plain dict (its items follow as
/// SETITEMS); any other call is kept as the call, not made.
fn reduce(callable: Object, args: Object) -> Object {
    match &callable {
        Object::Class {
            module_name,
            class_name,
        } if module_name == "collections"
            && (class_name == "OrderedDict" || class_name == "defaultdict") =>
        {
            Object::Dict(Vec::new())
        }
        _ => Object::Reduce {
            callable: Box::new(callable),
            args: Box::new(args),
        },
    }
}

/// `BUILD`: a dict's state (torch's state_dict `_metadata`) joins its items; other state is
/// kept beside the object, not applied.
fn build(obj: Object, state: Object) -> Object {
    match (obj, state) {
        (Object::Dict(mut items), Object::Dict(state)) => {
            items.extend(state);
            Object::Dict(items)
        }
        (obj, state) => Object::Build {
            callable: Box::new(obj),
            args: Box::new(state),
        },
    }
}

/// What kind of value `obj` is, for errors about misplaced opcodes.
fn kind_of(obj: &Object) -> &'static str {
    match obj {
        Object::Class { .. } => "a global",
        Object::Int(_) => "an integer",
        Object::Float(_) => "a number",
        Object::Unicode(_) => "a string",
        Object::Bool(_) => "a boolean",
        Object::None => "None",
        Object::Tuple(_) => "a tuple",
        Object::List(_) => "a list",
        Object::Dict(_) => "a dict",
        Object::Reduce { .. } | Object::Build { .. } => "a constructed object",
        Object::PersistentLoad(_) => "a storage",
    }
}

/// Names of the opcodes this reader does not interpret, for a helpful error.
fn unsupported_opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'I' => "INT (protocol 0)",
        b'L' => "LONG (protocol 0)",
        b'F' => "FLOAT (protocol 0)",
        b'S' => "STRING (protocol 0)",
        b'V' => "UNICODE (protocol 0)",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        b'P' => "PERSID (protocol 0)",
        b'p' => "PUT (protocol 0)",
        b'g' => "GET (protocol 0)",
        b'l' => "LIST (protocol 0)",
        b'i' => "INST",
        b'o' => "OBJ",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        0x82..=0x84 => "EXT",
        0x8b => "LONG4",
        0x8c => "SHORT_BINUNICODE (protocol 4)",
        0x8d => "BINUNICODE8 (protocol 4)",
        0x8e => "BINBYTES8 (protocol 4)",
        0x8f => "EMPTY_SET (protocol 4)",
        0x90 => "ADDITEMS (protocol 4)",
        0x91 => "FROZENSET (protocol 4)",
        0x92 => "NEWOBJ_EX (protocol 4)",
        0x93 => "STACK_GLOBAL (protocol 4)",
        0x94 => "MEMOIZE (protocol 4)",
        0x95 => "FRAME (protocol 4)",
        0x96 => "BYTEARRAY8 (protocol 5)",
        0x97 => "NEXT_BUFFER (protocol 5)",
        0x98 => "READONLY_BUFFER (protocol 5)",
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn s(text: &str) -> Object {
        Object::Unicode(text.into())
    }

    #[test]
    fn parses_a_small_dict() {
        // {'a': 1} at protocol 2: PROTO 2, EMPTY_DICT, BINUNICODE 'a', BININT1 1, SETITEM, STOP
        let bytes = b"\x80\x02}X\x01\x00\x00\x00aK\x01s.";
        assert_eq!(
            parse(bytes).unwrap(),
            Object::Dict(vec![(s("a"), Object::Int(1))])
        );
    }

    #[test]
    fn setitems_keep_the_file_order() {
        // {'a': 1, 'b': 2, 'c': 3} with one SETITEMS batch.
        let bytes =
            b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00bK\x02X\x01\x00\x00\x00cK\x03u.";
        assert_eq!(
            parse(bytes).unwrap(),
            Object::Dict(vec![
                (s("a"), Object::Int(1)),
                (s("b"), Object::Int(2)),
                (s("c"), Object::Int(3)),
            ])
        );
    }

    #[test]
    fn integers_floats_and_memo_copies() {
        // (-2 as LONG1, 70000 as BININT, 1.5, the first element again from the memo)
        let bytes =
            b"\x80\x02(\x8a\x01\xfeq\x00J\x70\x11\x01\x00G\x3f\xf8\x00\x00\x00\x00\x00\x00h\x00t.";
        assert_eq!(
            parse(bytes).unwrap(),
            Object::Tuple(vec![
                Object::Int(-2),
                Object::Int(70000),
                Object::Float(1.5),
                Object::Int(-2),
            ])
        );
    }

    #[test]
    fn calls_are_kept_not_made() {
        // posix.system('x'): a GLOBAL and a REDUCE, returned as data.
        let bytes = b"\x80\x02cposix\nsystem\nX\x01\x00\x00\x00x\x85R.";
        assert_eq!(
            parse(bytes).unwrap(),
            Object::Reduce {
                callable: Box::new(Object::Class {
                    module_name: "posix".into(),
                    class_name: "system".into(),
                }),
                args: Box::new(Object::Tuple(vec![s("x")])),
            }
        );
    }

    #[test]
    fn an_ordered_dict_with_state_is_a_dict_with_the_state_last() {
        // OrderedDict() with item 'w' and BUILD state {'_metadata': None}.
        let bytes = b"\x80\x02ccollections\nOrderedDict\n)RX\x01\x00\x00\x00wK\x07s}X\x09\x00\x00\x00_metadataNsb.";
        assert_eq!(
            parse(bytes).unwrap(),
            Object::Dict(vec![
                (s("w"), Object::Int(7)),
                (s("_metadata"), Object::None)
            ])
        );
    }

    #[test]
    fn rejects_protocol_4_with_a_name() {
        let err = parse(b"\x80\x04\x95\x00").unwrap_err();
        assert_eq!(err.offset, 2);
        assert!(err.message.contains("FRAME"), "{}", err.message);
    }

    #[test]
    fn huge_string_length_is_an_error_not_an_allocation() {
        let err = parse(b"\x80\x02X\xff\xff\xff\xffabc").unwrap_err();
        assert!(err.message.contains("truncated"), "{}", err.message);
        assert_eq!(err.offset, 2);
    }

    #[test]
    fn missing_stop_is_an_error() {
        let err = parse(b"\x80\x02}").unwrap_err();
        assert_eq!(err.offset, 3);
    }

    #[test]
    fn corrupt_streams_are_errors_with_their_offset() {
        for (bytes, offset, words) in [
            (&b"\x80\x02."[..], 2, "empty stack"),
            (b"\x80\x02t.", 2, "MARK"),
            (b"\x80\x02h\x05.", 2, "memo entry 5"),
            (b"\x80\x02K\x00K\x01K\x02s.", 8, "not a dict"),
            (b"\x80\x02](\x85.", 4, "empty stack"),
            (b"\x80\x02\x8a\x09", 2, "64 bits"),
            (b"\x80\x02cposix", 2, "not terminated"),
            (b"\x80\x02X\x01\x00\x00\x00\xff.", 2, "UTF-8"),
        ] {
            let err = parse(bytes).unwrap_err();
            assert_eq!(err.offset, offset, "{bytes:?}: {}", err.message);
            assert!(err.message.contains(words), "{bytes:?}: {}", err.message);
        }
    }

    #[test]
    fn deep_nesting_is_capped() {
        let mut bytes = b"\x80\x02N".to_vec();
        bytes.extend(std::iter::repeat_n(0x85u8, 500)); // TUPLE1 500 times
        bytes.push(b'.');
        let err = parse(&bytes).unwrap_err();
        assert!(err.message.contains("nested deeper"), "{}", err.message);
    }

    #[test]
    fn memo_bomb_is_capped() {
        // x = []; repeat: x = (x, x) through the memo; doubles the object count each round.
        let mut bytes = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            bytes.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        bytes.push(b'.');
        let err = parse_with_limits(&bytes, MAX_DEPTH, 10_000).unwrap_err();
        assert!(
            err.message.contains("more than 10000 pickle objects"),
            "{}",
            err.message
        );
    }
}
