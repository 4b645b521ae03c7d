//! The byte layout of Kafka's internal-topic record schemas
//! (`__consumer_offsets`, `__transaction_state`), shared by both coordinators.
//!
//! Classic versions: big-endian fixed-width integers, strings as an `int16`
//! length and UTF-8 bytes (`-1` is null), byte arrays as an `int32` length,
//! arrays as an `int32` count. Flexible versions: unsigned varints, compact
//! lengths (`n + 1`, `0` for null) for strings and arrays, and a tagged-field
//! section after every struct.
//!
//! The [`Reader`] never panics: every read checks the bytes that remain. The
//! `put_*` writers append to a `Vec<u8>`; they panic only on a length that
//! its field cannot hold, which callers rule out before building a record.

use std::fmt;

/// Why bytes do not follow the schema's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaError {
    /// A read needed more bytes than remain.
    Truncated {
        position: usize,
        needed: usize,
        remaining: usize,
    },
    /// A null (negative) length where the field is not nullable.
    NegativeLength(i64),
    NotUtf8,
    /// An unsigned varint whose fifth byte still has its continuation bit.
    VarintTooLong,
    /// Bytes left after the whole record was read.
    TrailingBytes(usize),
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaError::Truncated {
                position,
                needed,
                remaining,
            } => write!(
                f,
                "record truncated: needed {needed} bytes at position {position}, {remaining} remain"
            ),
            SchemaError::NegativeLength(len) => {
                write!(f, "negative length {len} for a non-nullable field")
            }
            SchemaError::NotUtf8 => f.write_str("string is not UTF-8"),
            SchemaError::VarintTooLong => f.write_str("varint longer than 5 bytes"),
            SchemaError::TrailingBytes(left) => write!(f, "{left} trailing bytes after the record"),
        }
    }
}

impl std::error::Error for SchemaError {}

// ---------------------------------------------------------------- reading

/// A bounds-checked reader over one key or value.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], SchemaError> {
        let remaining = self.remaining();
        if n > remaining {
            return Err(SchemaError::Truncated {
                position: self.pos,
                needed: n,
                remaining,
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SchemaError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn i8(&mut self) -> Result<i8, SchemaError> {
        Ok(i8::from_be_bytes(self.array()?))
    }

    pub fn i16(&mut self) -> Result<i16, SchemaError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub fn i32(&mut self) -> Result<i32, SchemaError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64, SchemaError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn utf8(&mut self, len: usize) -> Result<String, SchemaError> {
        let b = self.take(len)?;
        let s = std::str::from_utf8(b).map_err(|_| SchemaError::NotUtf8)?;
        Ok(s.to_owned())
    }

    /// A classic string; a null one is `NegativeLength`.
    pub fn string(&mut self) -> Result<String, SchemaError> {
        let len = self.i16()?;
        if len < 0 {
            return Err(SchemaError::NegativeLength(i64::from(len)));
        }
        self.utf8(len as usize)
    }

    /// A classic nullable string: any negative length is null.
    pub fn nullable_string(&mut self) -> Result<Option<String>, SchemaError> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        self.utf8(len as usize).map(Some)
    }

    /// Classic bytes (`int32` length): any negative length is null.
    pub fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>, SchemaError> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(None);
        }
        self.take(len as usize).map(Some)
    }

    /// An unsigned varint as Kafka's `ByteUtils.readUnsignedVarint` reads
    /// it: at most five bytes, and bits of the fifth past the 32nd dropped.
    pub fn uvarint(&mut self) -> Result<u32, SchemaError> {
        let mut value = 0u32;
        for i in 0..5 {
            let b = self.take(1)?[0];
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(SchemaError::VarintTooLong)
    }

    /// A compact length or count (`n + 1`, `0` for null), not yet checked
    /// against the bytes that remain: read it through `take`, or pass a
    /// count to `checked_count` before reserving anything for it.
    pub fn compact_len(&mut self) -> Result<Option<usize>, SchemaError> {
        Ok(match self.uvarint()? {
            0 => None,
            n => Some(n as usize - 1),
        })
    }

    /// A compact array count, `None` for null, refused (before anything is
    /// allocated for it) when its elements of at least `element_bytes_min`
    /// bytes each cannot fit in what remains.
    pub fn compact_array_len(
        &mut self,
        element_bytes_min: usize,
    ) -> Result<Option<usize>, SchemaError> {
        self.compact_len()?
            .map(|count| self.checked_count(count, element_bytes_min))
            .transpose()
    }

    /// A compact string; a null one is `NegativeLength(-1)`.
    pub fn compact_string(&mut self) -> Result<String, SchemaError> {
        match self.compact_len()? {
            Some(len) => self.utf8(len),
            None => Err(SchemaError::NegativeLength(-1)),
        }
    }

    pub fn compact_nullable_string(&mut self) -> Result<Option<String>, SchemaError> {
        match self.compact_len()? {
            Some(len) => self.utf8(len).map(Some),
            None => Ok(None),
        }
    }

    /// A count that must fit in what remains, each element taking at least
    /// `element_bytes_min`: a corrupt count fails here instead of reserving
    /// memory for it.
    pub fn checked_count(
        &self,
        count: usize,
        element_bytes_min: usize,
    ) -> Result<usize, SchemaError> {
        let needed = count.saturating_mul(element_bytes_min);
        if needed > self.remaining() {
            return Err(SchemaError::Truncated {
                position: self.pos,
                needed,
                remaining: self.remaining(),
            });
        }
        Ok(count)
    }

    /// The tagged fields that end a flexible struct; `on_tag` sees each
    /// tag and its bytes.
    pub fn tagged_fields(
        &mut self,
        mut on_tag: impl FnMut(u32, &'a [u8]) -> Result<(), SchemaError>,
    ) -> Result<(), SchemaError> {
        let count = self.uvarint()? as usize;
        // A tag takes at least its tag and its size.
        for _ in 0..self.checked_count(count, 2)? {
            let tag = self.uvarint()?;
            let size = self.uvarint()? as usize;
            on_tag(tag, self.take(size)?)?;
        }
        Ok(())
    }

    /// Skips a tagged-field section (unknown tags are ignored).
    pub fn skip_tagged_fields(&mut self) -> Result<(), SchemaError> {
        self.tagged_fields(|_, _| Ok(()))
    }

    /// Refuses bytes left after the record.
    pub fn finish(&self) -> Result<(), SchemaError> {
        match self.remaining() {
            0 => Ok(()),
            left => Err(SchemaError::TrailingBytes(left)),
        }
    }
}

// ---------------------------------------------------------------- writing

pub fn put_i8(buf: &mut Vec<u8>, v: i8) {
    buf.extend_from_slice(&v.to_be_bytes());
}

pub fn put_i16(buf: &mut Vec<u8>, v: i16) {
    buf.extend_from_slice(&v.to_be_bytes());
}

pub fn put_i32(buf: &mut Vec<u8>, v: i32) {
    buf.extend_from_slice(&v.to_be_bytes());
}

pub fn put_i64(buf: &mut Vec<u8>, v: i64) {
    buf.extend_from_slice(&v.to_be_bytes());
}

/// A classic string. Panics past `i16::MAX` bytes: group ids, topics,
/// member and transactional ids come from requests whose own strings carry
/// `int16` lengths, and callers cap the rest (offset metadata) below it.
pub fn put_string(buf: &mut Vec<u8>, s: &str) {
    let len = i16::try_from(s.len()).expect("string longer than i16::MAX bytes");
    put_i16(buf, len);
    buf.extend_from_slice(s.as_bytes());
}

pub fn put_nullable_string(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => put_i16(buf, -1),
        Some(s) => put_string(buf, s),
    }
}

/// Classic bytes: an `int32` length and the bytes.
pub fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    let len = i32::try_from(b.len()).expect("bytes longer than i32::MAX");
    put_i32(buf, len);
    buf.extend_from_slice(b);
}

/// A classic array count (`int32`).
pub fn put_count(buf: &mut Vec<u8>, n: usize) {
    let n = i32::try_from(n).expect("array longer than i32::MAX");
    put_i32(buf, n);
}

pub fn put_uvarint(buf: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        buf.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// A compact (non-null) length or count: `len + 1`.
pub fn put_compact_len(buf: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len)
        .ok()
        .and_then(|n| n.checked_add(1))
        .expect("compact length overflows u32");
    put_uvarint(buf, len);
}

pub fn put_compact_string(buf: &mut Vec<u8>, s: &str) {
    put_compact_len(buf, s.len());
    buf.extend_from_slice(s.as_bytes());
}

pub fn put_compact_nullable_string(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => put_uvarint(buf, 0),
        Some(s) => put_compact_string(buf, s),
    }
}

/// An empty tagged-field section.
pub fn put_empty_tags(buf: &mut Vec<u8>) {
    put_uvarint(buf, 0);
}
