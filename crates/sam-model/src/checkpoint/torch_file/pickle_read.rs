//! A guarded driver around candle's pickle interpreter.
//!
//! `candle_core::pickle::Stack` interprets pickle opcodes into a tree of `Object`s without ever
//! importing or calling anything: a `GLOBAL` becomes an `Object::Class` naming the global, a
//! `REDUCE` an `Object::Reduce` holding the callable and its arguments. This module feeds it one
//! opcode at a time and adds what a reader of untrusted files needs on top:
//!
//! - opcodes are checked before they run (unsupported ones are named; string lengths must fit
//!   in the remaining bytes, so a corrupt length never allocates gigabytes);
//! - the nesting depth and the number of objects ever created (memo look-ups clone) are
//!   tracked in a shadow stack and capped, so neither a deeply nested nor a "billion laughs"
//!   pickle can exhaust the stack or the memory;
//! - errors carry the byte offset of the opcode that failed.
//!
//! Which globals are acceptable is decided later, on the finished tree (see `super::unpickle`).

use candle_core::pickle::{Object, Stack};
use std::collections::HashMap;
use std::io::Cursor;

/// Deepest object nesting accepted. A state_dict tensor is ~6 levels deep, an optimiser
/// state ~10; anything near this limit is not a checkpoint.
const MAX_DEPTH: u32 = 100;

/// Most objects (including memo clones) one pickle may create: far above the ~20 per tensor of
/// a state_dict (vit_h: ~600 tensors) or a training checkpoint, far below exhausting memory.
const MAX_OBJECTS: u64 = 5_000_000;

/// A pickle that cannot be interpreted.
#[derive(Debug)]
pub(crate) struct PickleError {
    /// Byte offset of the opcode that failed.
    pub offset: u64,
    /// What went wrong.
    pub message: String,
}

impl PickleError {
    fn new(offset: u64, message: impl Into<String>) -> Self {
        Self {
            offset,
            message: message.into(),
        }
    }
}

/// Depth and object count of one value on the interpreter's stack or in its memo.
#[derive(Debug, Clone, Copy)]
struct Shadow {
    depth: u32,
    objects: u64,
}

const LEAF: Shadow = Shadow {
    depth: 1,
    objects: 1,
};

/// How an opcode changes the stack, for the shadow bookkeeping.
enum Effect {
    /// Pushes one new leaf object.
    Leaf,
    /// Pops one or more objects (down to and including a mark for the mark-based opcodes) and
    /// pushes one object built from them.
    Combine,
    /// Pops objects and adds them into the object left on top (list append, dict set item).
    Extend,
    /// Pushes a copy of a memo entry.
    MemoGet(u32),
    /// Copies the top of the stack into the memo.
    MemoPut(u32),
    /// Changes nothing on the stack (PROTO).
    Nothing,
    /// Ends the pickle.
    Stop,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Names of opcodes candle does not interpret, for a helpful error.
fn unsupported_opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'd' => "DICT (protocol 0)",
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

/// Classifies the opcode at `pos` and checks that its argument fits in the input.
fn effect_of(bytes: &[u8], pos: usize) -> Result<Effect, PickleError> {
    let at = pos as u64;
    let op = bytes[pos];
    let need = |n: usize| -> Result<(), PickleError> {
        if pos + 1 + n > bytes.len() {
            Err(PickleError::new(
                at,
                "the pickle ends inside an opcode (truncated file?)",
            ))
        } else {
            Ok(())
        }
    };
    let effect = match op {
        0x80 => {
            need(1)?;
            Effect::Nothing
        }
        b'.' => Effect::Stop,
        b'c' => {
            // Module and name, each terminated by a newline.
            let rest = &bytes[pos + 1..];
            let newlines = rest.iter().filter(|&&b| b == b'\n').take(2).count();
            if newlines < 2 {
                return Err(PickleError::new(
                    at,
                    "GLOBAL is not terminated (truncated file?)",
                ));
            }
            Effect::Leaf
        }
        b'K' => {
            need(1)?;
            Effect::Leaf
        }
        b'M' => {
            need(2)?;
            Effect::Leaf
        }
        b'J' => {
            need(4)?;
            Effect::Leaf
        }
        b'G' => {
            need(8)?;
            Effect::Leaf
        }
        0x8a => {
            need(1)?;
            let n = bytes[pos + 1] as usize;
            if n > 8 {
                return Err(PickleError::new(
                    at,
                    format!("LONG1 of {n} bytes does not fit in 64 bits"),
                ));
            }
            need(1 + n)?;
            Effect::Leaf
        }
        b'X' => {
            need(4)?;
            let len = u32_at(bytes, pos + 1).unwrap_or(u32::MAX) as usize;
            need(4 + len)?;
            Effect::Leaf
        }
        0x88 | 0x89 | b'N' | b'}' | b']' | b')' | b'(' => Effect::Leaf,
        b'h' => {
            need(1)?;
            Effect::MemoGet(bytes[pos + 1] as u32)
        }
        b'j' => {
            need(4)?;
            Effect::MemoGet(u32_at(bytes, pos + 1).unwrap_or(u32::MAX))
        }
        b'q' => {
            need(1)?;
            Effect::MemoPut(bytes[pos + 1] as u32)
        }
        b'r' => {
            need(4)?;
            Effect::MemoPut(u32_at(bytes, pos + 1).unwrap_or(u32::MAX))
        }
        b't' | 0x85 | 0x86 | 0x87 | b'R' | 0x81 | b'b' | b'Q' => Effect::Combine,
        b'a' | b'e' | b's' | b'u' => Effect::Extend,
        other => {
            let name = unsupported_opcode_name(other).unwrap_or("unknown");
            return Err(PickleError::new(
                at,
                format!(
                    "unsupported pickle opcode 0x{other:02x} ({name}); torch.save writes \
                     protocol 2 by default, re-save the file with torch.save(obj, path)"
                ),
            ));
        }
    };
    Ok(effect)
}

/// Interprets a whole pickle into candle's object tree, never running code from it.
pub(crate) fn parse(bytes: &[u8]) -> Result<Object, PickleError> {
    parse_with_limits(bytes, MAX_DEPTH, MAX_OBJECTS)
}

/// [`parse`] with explicit limits on nesting depth and on the number of objects created.
fn parse_with_limits(
    bytes: &[u8],
    max_depth: u32,
    max_objects: u64,
) -> Result<Object, PickleError> {
    let mut cursor = Cursor::new(bytes);
    let mut stack = Stack::empty();
    let mut shadow: Vec<Shadow> = Vec::new();
    let mut memo: HashMap<u32, Shadow> = HashMap::new();
    let mut created: u64 = 0;
    loop {
        let pos = cursor.position() as usize;
        if pos >= bytes.len() {
            return Err(PickleError::new(
                pos as u64,
                "the pickle ends before its STOP opcode (truncated file?)",
            ));
        }
        let effect = effect_of(bytes, pos)?;
        let before = stack.stack().len();
        let done = stack
            .read(&mut cursor)
            .map_err(|e| PickleError::new(pos as u64, e.to_string()))?;
        if done {
            break;
        }
        let after = stack.stack().len();
        // Keep the shadow stack in step with candle's stack.
        match effect {
            Effect::Nothing | Effect::Stop => {}
            Effect::Leaf => {
                shadow.push(LEAF);
                created += 1;
            }
            Effect::MemoGet(id) => {
                let s = memo.get(&id).copied().unwrap_or(LEAF);
                created += s.objects;
                shadow.push(s);
            }
            Effect::MemoPut(id) => {
                let s = shadow.last().copied().unwrap_or(LEAF);
                created += s.objects;
                memo.insert(id, s);
            }
            Effect::Combine => {
                let start = after.saturating_sub(1).min(shadow.len());
                let end = before.min(shadow.len());
                let parts = &shadow[start..end];
                let combined = Shadow {
                    depth: 1 + parts.iter().map(|s| s.depth).max().unwrap_or(0),
                    objects: 1 + parts.iter().map(|s| s.objects).sum::<u64>(),
                };
                shadow.truncate(start);
                shadow.push(combined);
                created += 1;
            }
            Effect::Extend => {
                let start = after.min(shadow.len());
                let end = before.min(shadow.len());
                let depth = 1 + shadow[start..end]
                    .iter()
                    .map(|s| s.depth)
                    .max()
                    .unwrap_or(0);
                let objects: u64 = shadow[start..end].iter().map(|s| s.objects).sum();
                shadow.truncate(start);
                if let Some(target) = shadow.last_mut() {
                    target.depth = target.depth.max(depth);
                    target.objects += objects;
                }
            }
        }
        if shadow.len() != after {
            // Cannot happen with the effects above; fail loudly rather than mis-track.
            return Err(PickleError::new(
                pos as u64,
                "internal: pickle stack bookkeeping diverged",
            ));
        }
        if let Some(top) = shadow.last() {
            if top.depth > max_depth {
                return Err(PickleError::new(
                    pos as u64,
                    format!("objects nested deeper than {max_depth} levels; not a checkpoint"),
                ));
            }
        }
        if created > max_objects {
            return Err(PickleError::new(
                pos as u64,
                format!("more than {max_objects} pickle objects; not a checkpoint"),
            ));
        }
    }
    stack
        .finalize()
        .map_err(|e| PickleError::new(cursor.position(), e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_small_dict() {
        // {'a': 1} at protocol 2: PROTO 2, EMPTY_DICT, BINUNICODE 'a', BININT1 1, SETITEM, STOP
        let bytes = b"\x80\x02}X\x01\x00\x00\x00aK\x01s.";
        let obj = parse(bytes).unwrap();
        assert_eq!(
            obj,
            Object::Dict(vec![(Object::Unicode("a".into()), Object::Int(1))])
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
    }

    #[test]
    fn missing_stop_is_an_error() {
        let err = parse(b"\x80\x02}").unwrap_err();
        assert_eq!(err.offset, 3);
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
