//! Kafka wire reading for the hot path: a bounds-checked reader and the Produce/Fetch bodies.
//!
//! Every read that would pass the end of the frame, and every value the Python decoder would refuse,
//! is `Bad`: the caller then hands the frame to the Python decoder, which gives its own verdict
//! (a message or a declared error). So `Ok` here must mean exactly what the Python decoder returns;
//! being stricter than Python only costs speed, never a different answer.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyMemoryView, PyString, PyType};
use std::collections::HashMap;

pub struct Bad;
pub type R<T> = Result<T, Bad>;

pub const MAX_STRING: u64 = 1 << 16; // kafka/primitives.py MAX_STRING
const BATCH_HEADER_SIZE: usize = 61;
const LOG_OVERHEAD: usize = 12; // base_offset + batch_length
const MAGIC_OFFSET: usize = 16;

pub struct Rd<'a> {
    pub b: &'a [u8],
    pub p: usize,
}

macro_rules! be {
    ($name:ident, $t:ty, $n:expr) => {
        #[inline]
        pub fn $name(&mut self) -> R<$t> {
            Ok(<$t>::from_be_bytes(self.take($n)?.try_into().map_err(|_| Bad)?))
        }
    };
}

impl<'a> Rd<'a> {
    pub fn new(b: &'a [u8], p: usize) -> Self {
        Rd { b, p }
    }
    be!(i16, i16, 2);
    be!(i32, i32, 4);
    be!(u32, u32, 4);
    be!(i64, i64, 8);
    /// One byte, the cursor past it.
    #[inline]
    pub fn u8(&mut self) -> R<u8> {
        let v = *self.b.get(self.p).ok_or(Bad)?;
        self.p += 1;
        Ok(v)
    }
    #[inline]
    pub fn i8(&mut self) -> R<i8> {
        Ok(self.u8()? as i8)
    }
    /// The bounds (start, end) of the next `n` bytes, the cursor past them: the one place a read of
    /// several bytes checks the end of the buffer and moves the cursor.
    #[inline]
    pub fn span(&mut self, n: usize) -> R<(usize, usize)> {
        let start = self.p;
        let end = start.checked_add(n).ok_or(Bad)?;
        if end > self.b.len() {
            return Err(Bad);
        }
        self.p = end;
        Ok((start, end))
    }
    #[inline]
    pub fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let (start, end) = self.span(n)?;
        Ok(&self.b[start..end])
    }
    /// Unsigned LEB128 of at most 5 bytes (primitives.read_uvarint).
    #[inline]
    pub fn uvarint(&mut self) -> R<u64> {
        let mut result: u64 = 0;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            result |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(result);
            }
            shift += 7;
            if shift > 28 {
                return Err(Bad);
            }
        }
    }
    /// int16-length string, strict UTF-8; -1 is null.
    pub fn string(&mut self) -> R<Option<&'a str>> {
        let n = self.i16()?;
        if n < 0 {
            return if n == -1 { Ok(None) } else { Err(Bad) };
        }
        let s = self.take(n as usize)?;
        std::str::from_utf8(s).map(Some).map_err(|_| Bad)
    }
    /// uvarint(length + 1) string; 0 is null.
    pub fn cstring(&mut self) -> R<Option<&'a str>> {
        let n = self.uvarint()?;
        if n == 0 {
            return Ok(None);
        }
        if n > MAX_STRING {
            return Err(Bad);
        }
        let s = self.take((n - 1) as usize)?;
        std::str::from_utf8(s).map(Some).map_err(|_| Bad)
    }
    /// int32 array length, -1 (null) as -1 (primitives.read_array_len).
    pub fn array_len(&mut self) -> R<i64> {
        let left = self.b.len() as i64 - self.p as i64;
        let n = self.i32()? as i64;
        if n < -1 || n > left {
            return Err(Bad);
        }
        Ok(n)
    }
    pub fn carray_len(&mut self) -> R<i64> {
        let n = self.uvarint()? as i64 - 1;
        if n > self.b.len() as i64 - self.p as i64 {
            return Err(Bad);
        }
        Ok(n)
    }
    pub fn alen(&mut self, flex: bool) -> R<i64> {
        if flex {
            self.carray_len()
        } else {
            self.array_len()
        }
    }
    pub fn skip_tags(&mut self) -> R<()> {
        let b = *self.b.get(self.p).ok_or(Bad)?;
        if b == 0 {
            self.p += 1;
            return Ok(());
        }
        let count = self.uvarint()?;
        for _ in 0..count {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.p = self.p.checked_add(size).ok_or(Bad)?;
        }
        if self.p > self.b.len() {
            return Err(Bad);
        }
        Ok(())
    }
    pub fn tags_if(&mut self, flex: bool) -> R<()> {
        if flex {
            self.skip_tags()
        } else {
            Ok(())
        }
    }
    /// A bytes field's length: uvarint(length + 1) when flexible, else int32; -1 is null.
    pub fn bytes_len(&mut self, flex: bool) -> R<i64> {
        if flex {
            return Ok(self.uvarint()? as i64 - 1);
        }
        let n = self.i32()? as i64;
        if n < -1 {
            return Err(Bad);
        }
        Ok(n)
    }
    /// A bytes field: Some((start, end)) of its bytes, None when null.
    pub fn bytes_range(&mut self, flex: bool) -> R<Option<(usize, usize)>> {
        let n = self.bytes_len(flex)?;
        if n < 0 {
            return Ok(None);
        }
        self.span(n as usize).map(Some)
    }
    pub fn end(&self) -> R<()> {
        if self.p == self.b.len() {
            Ok(())
        } else {
            Err(Bad)
        }
    }
    /// The end of a body: its tagged fields when flexible, then nothing left.
    pub fn finish(&mut self, flex: bool) -> R<()> {
        self.tags_if(flex)?;
        self.end()
    }
    /// A reader at a response's body: after its correlation id and, when flexible, the header's tagged fields.
    pub fn response_body(b: &'a [u8], flex: bool) -> R<Self> {
        let mut r = Rd::new(b, 4);
        r.tags_if(flex)?; // response header v1
        Ok(r)
    }
}

/// The Python classes the hot path builds (the decoder's own NamedTuples), and small caches.
pub struct Classes {
    pub kafka_pair: Py<PyType>,
    pub produce_request: Py<PyType>,
    pub produce_request_partition: Py<PyType>,
    pub produce_response: Py<PyType>,
    pub produce_response_partition: Py<PyType>,
    pub fetch_request: Py<PyType>,
    pub fetch_request_partition: Py<PyType>,
    pub forgotten_topic: Py<PyType>,
    pub fetch_response: Py<PyType>,
    pub fetch_response_partition: Py<PyType>,
    pub aborted_transaction: Py<PyType>,
    pub record_batch: Py<PyType>,
    pub topics: HashMap<Vec<u8>, Py<PyString>>,
}

const MAX_CACHED_TOPICS: usize = 4096;

/// A NamedTuple instance made the way `tuple.__new__(cls, items)` makes it, without the Python call.
pub fn nt<const N: usize>(py: Python<'_>, cls: &Py<PyType>, items: [PyObject; N]) -> PyResult<PyObject> {
    unsafe {
        let tp = cls.as_ptr() as *mut pyo3::ffi::PyTypeObject;
        let slot = pyo3::ffi::PyType_GetSlot(tp, pyo3::ffi::Py_tp_alloc);
        if slot.is_null() {
            return Err(pyo3::exceptions::PyTypeError::new_err("type without tp_alloc"));
        }
        let alloc: pyo3::ffi::allocfunc = std::mem::transmute(slot);
        let obj = alloc(tp, N as pyo3::ffi::Py_ssize_t);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        for (i, it) in items.into_iter().enumerate() {
            pyo3::ffi::PyTuple_SetItem(obj, i as pyo3::ffi::Py_ssize_t, it.into_ptr());
        }
        Ok(PyObject::from_owned_ptr(py, obj))
    }
}

impl Classes {
    fn topic_name(&mut self, py: Python<'_>, s: &str) -> PyObject {
        if let Some(v) = self.topics.get(s.as_bytes()) {
            return v.clone_ref(py).into_any();
        }
        let v = PyString::new_bound(py, s).unbind();
        if self.topics.len() < MAX_CACHED_TOPICS {
            self.topics.insert(s.as_bytes().to_vec(), v.clone_ref(py));
        }
        v.into_any()
    }

    /// primitives.read_topic: (name, id)
    fn topic(&mut self, py: Python<'_>, r: &mut Rd, ids: bool, flex: bool) -> R<(PyObject, PyObject)> {
        if ids {
            let raw = r.take(16)?;
            return Ok((py.None(), PyBytes::new_bound(py, raw).into_any().unbind()));
        }
        let name = if flex { r.cstring()? } else { r.string()? };
        let name = match name {
            Some(s) => self.topic_name(py, s),
            None => py.None(),
        };
        Ok((name, py.None()))
    }

    fn opt_str(py: Python<'_>, s: Option<&str>) -> PyObject {
        match s {
            Some(s) => PyString::new_bound(py, s).into_any().unbind(),
            None => py.None(),
        }
    }

    fn batch(&self, py: Python<'_>, h: &[u8], partial: bool, data: &[u8], skipped: i64) -> PyResult<PyObject> {
        let mut r = Rd::new(h, 0);
        let f = (|| -> R<_> {
            Ok((r.i64()?, r.i32()?, r.i32()?, r.i8()?, r.u32()?, r.i16()?, r.i32()?, r.i64()?, r.i64()?,
                r.i64()?, r.i16()?, r.i32()?, r.i32()?))
        })()
        .map_err(|_| pyo3::exceptions::PyValueError::new_err("short batch header"))?;
        // a view, as the Python decoder gives (downstream calls memoryview methods on it)
        let view = PyMemoryView::from_bound(&PyBytes::new_bound(py, data).into_any())?.into_any().unbind();
        nt(py, &self.record_batch, [
            f.0.into_py(py), f.1.into_py(py), f.2.into_py(py), f.3.into_py(py), f.4.into_py(py), f.5.into_py(py),
            f.6.into_py(py), f.7.into_py(py), f.8.into_py(py), f.9.into_py(py), f.10.into_py(py),
            f.11.into_py(py), f.12.into_py(py), partial.into_py(py), view,
            skipped.into_py(py),
        ])
    }

    /// records.read_batches over buf[start..end]: (batches, size)
    fn read_batches(&self, py: Python<'_>, buf: &[u8], range: Option<(usize, usize)>) -> R<(PyObject, i64)> {
        let list = PyList::empty_bound(py);
        let (start, end) = match range {
            None => return Ok((list.into_any().unbind(), 0)),
            Some(r) => r,
        };
        let view = &buf[start..end];
        let size = view.len();
        let mut pos = 0usize;
        while size - pos >= LOG_OVERHEAD {
            let mut r = Rd::new(view, pos);
            let _base = r.i64()?;
            let batch_length = r.i32()? as i64;
            let bend = pos as i64 + LOG_OVERHEAD as i64 + batch_length;
            if size - pos < BATCH_HEADER_SIZE {
                break;
            }
            let magic = view[pos + MAGIC_OFFSET];
            if magic != 2 {
                if magic > 2 || batch_length < 0 {
                    return Err(Bad);
                }
                pos = bend as usize; // >= pos + 12
                if pos > size {
                    break;
                }
                continue;
            }
            if batch_length < (BATCH_HEADER_SIZE - LOG_OVERHEAD) as i64 {
                return Err(Bad);
            }
            let bend = bend as usize;
            if bend > size {
                let b = self.batch(py, &view[pos..pos + BATCH_HEADER_SIZE], true, &view[pos..size], 0).map_err(|_| Bad)?;
                list.append(b).map_err(|_| Bad)?;
                break;
            }
            let b = self.batch(py, &view[pos..pos + BATCH_HEADER_SIZE], false, &view[pos..bend], 0).map_err(|_| Bad)?;
            list.append(b).map_err(|_| Bad)?;
            pos = bend;
        }
        Ok((list.into_any().unbind(), size as i64))
    }

    /// records.Holes.read_records: a records field of a digest frame
    fn read_holes(&self, py: Python<'_>, r: &mut Rd, flex: bool, holes: &mut Holes) -> R<(PyObject, i64)> {
        let n = r.bytes_len(flex)?;
        let list = PyList::empty_bound(py);
        if n <= 0 {
            return Ok((list.into_any().unbind(), n.max(0)));
        }
        let buf = r.b;
        let mut pos = r.p;
        let skips = holes.skips;
        let mut k = holes.k;
        let mut left = n as usize;
        let end_of_buf = buf.len();
        while left >= LOG_OVERHEAD {
            if end_of_buf < pos + LOG_OVERHEAD {
                return Err(Bad);
            }
            let mut h = Rd::new(buf, pos);
            let _base = h.i64()?;
            let batch_length = h.i32()? as i64;
            let span = ((LOG_OVERHEAD as i64 + batch_length.max(0)) as usize).min(left);
            let mut skipped = 0usize;
            if k < skips.len() && (skips[k].0 as i64) <= (pos + span) as i64 - skips[k].1 as i64 {
                skipped = skips[k].1 as usize;
                if (skips[k].0 as usize) < pos + BATCH_HEADER_SIZE {
                    return Err(Bad);
                }
                k += 1;
            }
            let end = (pos + span).checked_sub(skipped).ok_or(Bad)?;
            if end > end_of_buf {
                return Err(Bad);
            }
            if left < BATCH_HEADER_SIZE {
                pos += left;
                left = 0;
                break;
            }
            let magic = *buf.get(pos + MAGIC_OFFSET).ok_or(Bad)?;
            if magic != 2 {
                if magic > 2 || batch_length < 0 {
                    return Err(Bad);
                }
                pos = end;
                left -= span;
                continue;
            }
            if batch_length < (BATCH_HEADER_SIZE - LOG_OVERHEAD) as i64 {
                return Err(Bad);
            }
            if end < pos + BATCH_HEADER_SIZE {
                return Err(Bad); // Python would read the header past the batch's bytes: let it decide
            }
            let partial = LOG_OVERHEAD as i64 + batch_length > left as i64;
            let b = self
                .batch(py, &buf[pos..pos + BATCH_HEADER_SIZE], partial, &buf[pos..end], skipped as i64)
                .map_err(|_| Bad)?;
            list.append(b).map_err(|_| Bad)?;
            pos = end;
            left -= span;
        }
        holes.k = k;
        r.p = pos + left;
        Ok((list.into_any().unbind(), n))
    }

    /// A partition's records field: its batches read around the digest's holes, or from its bytes.
    fn records(&self, py: Python<'_>, r: &mut Rd, flex: bool, holes: &mut Holes) -> R<(PyObject, i64)> {
        if !holes.skips.is_empty() {
            return self.read_holes(py, r, flex, holes);
        }
        let range = r.bytes_range(flex)?;
        self.read_batches(py, r.b, range)
    }

    pub fn produce_request(&mut self, py: Python<'_>, buf: &[u8], pos: usize, version: i16, skips: &[(u32, u32)])
                           -> R<(PyObject, i16)> {
        let flex = version >= 9;
        let ids = version >= 13;
        let mut r = Rd::new(buf, pos);
        let mut holes = Holes { skips, k: 0 };
        let txn = if flex { r.cstring()? } else if version >= 3 { r.string()? } else { None };
        let txn = Self::opt_str(py, txn);
        let acks = r.i16()?;
        let timeout = r.i32()?;
        let parts = PyList::empty_bound(py);
        let n_topics = r.alen(flex)?;
        for _ in 0..n_topics.max(0) {
            let (topic, topic_id) = self.topic(py, &mut r, ids, flex)?;
            let n_parts = r.alen(flex)?;
            for _ in 0..n_parts.max(0) {
                let index = r.i32()?;
                let (batches, size) = self.records(py, &mut r, flex, &mut holes)?;
                r.tags_if(flex)?;
                let p = nt(py, &self.produce_request_partition,
                           [topic.clone_ref(py), topic_id.clone_ref(py), index.into_py(py), batches, size.into_py(py)])
                    .map_err(|_| Bad)?;
                parts.append(p).map_err(|_| Bad)?;
            }
            r.tags_if(flex)?;
        }
        r.finish(flex)?;
        holes.all_read()?;
        let req = nt(py, &self.produce_request, [txn, acks.into_py(py), timeout.into_py(py), parts.into_any().unbind()])
            .map_err(|_| Bad)?;
        Ok((req, acks))
    }

    pub fn produce_response(&mut self, py: Python<'_>, buf: &[u8], version: i16) -> R<PyObject> {
        let flex = version >= 9;
        let ids = version >= 13;
        let mut r = Rd::response_body(buf, flex)?;
        let parts = PyList::empty_bound(py);
        let n_topics = r.alen(flex)?;
        for _ in 0..n_topics.max(0) {
            let (topic, topic_id) = self.topic(py, &mut r, ids, flex)?;
            let n_parts = r.alen(flex)?;
            for _ in 0..n_parts.max(0) {
                let index = r.i32()?;
                let error_code = r.i16()?;
                let base_offset = r.i64()?;
                let log_append = if version >= 2 { r.i64()? } else { -1 };
                let log_start = if version >= 5 { r.i64()? } else { -1 };
                let mut msg: Option<&str> = None;
                if version >= 8 {
                    let n_errors = r.alen(flex)?;
                    for _ in 0..n_errors.max(0) {
                        r.take(4)?;
                        if flex {
                            r.cstring()?;
                            r.skip_tags()?;
                        } else {
                            r.string()?;
                        }
                    }
                    msg = if flex { r.cstring()? } else { r.string()? };
                    r.tags_if(flex)?;
                }
                let p = nt(py, &self.produce_response_partition, [
                    topic.clone_ref(py), topic_id.clone_ref(py), index.into_py(py), error_code.into_py(py),
                    base_offset.into_py(py), log_append.into_py(py), log_start.into_py(py), Self::opt_str(py, msg),
                ])
                .map_err(|_| Bad)?;
                parts.append(p).map_err(|_| Bad)?;
            }
            r.tags_if(flex)?;
        }
        let throttle = if version >= 1 { r.i32()? } else { 0 };
        r.finish(flex)?;
        nt(py, &self.produce_response, [parts.into_any().unbind(), throttle.into_py(py)]).map_err(|_| Bad)
    }

    pub fn fetch_request(&mut self, py: Python<'_>, buf: &[u8], pos: usize, version: i16) -> R<PyObject> {
        let flex = version >= 12;
        let ids = version >= 13;
        let mut r = Rd::new(buf, pos);
        let replica_id = if version <= 14 { r.i32()? } else { -1 };
        let max_wait = r.i32()?;
        let min_bytes = r.i32()?;
        let max_bytes = r.i32()?;
        let (isolation, session_id, session_epoch) =
            if version >= 7 { (r.i8()?, r.i32()?, r.i32()?) } else { (r.i8()?, 0, -1) };
        let isolation: PyObject = if version >= 7 { isolation.into_py(py) } else { (isolation as u8).into_py(py) };
        let parts = PyList::empty_bound(py);
        let n_topics = r.alen(flex)?;
        for _ in 0..n_topics.max(0) {
            let (topic, topic_id) = self.topic(py, &mut r, ids, flex)?;
            let n_parts = r.alen(flex)?;
            for _ in 0..n_parts.max(0) {
                let (partition, cle, fetch_offset) =
                    if version >= 9 { (r.i32()?, r.i32()?, r.i64()?) } else { (r.i32()?, -1, r.i64()?) };
                let (lfe, lso, max_part) = if version >= 12 {
                    (r.i32()?, r.i64()?, r.i32()?)
                } else if version >= 5 {
                    (-1, r.i64()?, r.i32()?)
                } else {
                    (-1, -1, r.i32()?)
                };
                r.tags_if(flex)?;
                let p = nt(py, &self.fetch_request_partition, [
                    topic.clone_ref(py), topic_id.clone_ref(py), partition.into_py(py), fetch_offset.into_py(py),
                    cle.into_py(py), lfe.into_py(py), lso.into_py(py), max_part.into_py(py),
                ])
                .map_err(|_| Bad)?;
                parts.append(p).map_err(|_| Bad)?;
            }
            r.tags_if(flex)?;
        }
        let forgotten = PyList::empty_bound(py);
        if version >= 7 {
            let n_forgotten = r.alen(flex)?;
            for _ in 0..n_forgotten.max(0) {
                let (topic, topic_id) = self.topic(py, &mut r, ids, flex)?;
                let n = r.alen(flex)?;
                let ps = PyList::empty_bound(py);
                if n > 0 {
                    let need = (n as usize).checked_mul(4).ok_or(Bad)?;
                    if r.p + need > buf.len() {
                        return Err(Bad);
                    }
                    for _ in 0..n {
                        ps.append(r.i32()?).map_err(|_| Bad)?;
                    }
                }
                r.tags_if(flex)?;
                let f = nt(py, &self.forgotten_topic, [topic, topic_id, ps.into_any().unbind()]).map_err(|_| Bad)?;
                forgotten.append(f).map_err(|_| Bad)?;
            }
        }
        let rack: PyObject = if version >= 11 {
            let s = if flex { r.cstring()? } else { r.string()? };
            Self::opt_str(py, s)
        } else {
            py.None()
        };
        r.finish(flex)?;
        nt(py, &self.fetch_request, [
            replica_id.into_py(py), max_wait.into_py(py), min_bytes.into_py(py), max_bytes.into_py(py), isolation,
            session_id.into_py(py), session_epoch.into_py(py), parts.into_any().unbind(),
            forgotten.into_any().unbind(), rack,
        ])
        .map_err(|_| Bad)
    }

    pub fn fetch_response(&mut self, py: Python<'_>, buf: &[u8], version: i16, skips: &[(u32, u32)]) -> R<PyObject> {
        let flex = version >= 12;
        let ids = version >= 13;
        let mut r = Rd::response_body(buf, flex)?;
        let mut holes = Holes { skips, k: 0 };
        let (throttle, error_code, session_id) =
            if version >= 7 { (r.i32()?, r.i16()?, r.i32()?) } else { (r.i32()?, 0, 0) };
        let parts = PyList::empty_bound(py);
        let n_topics = r.alen(flex)?;
        for _ in 0..n_topics.max(0) {
            let (topic, topic_id) = self.topic(py, &mut r, ids, flex)?;
            let n_parts = r.alen(flex)?;
            for _ in 0..n_parts.max(0) {
                let partition = r.i32()?;
                let p_error = r.i16()?;
                let hw = r.i64()?;
                let lso = r.i64()?;
                let log_start = if version >= 5 { r.i64()? } else { -1 };
                let n_aborted = r.alen(flex)?;
                let aborted: PyObject = if n_aborted >= 0 {
                    let l = PyList::empty_bound(py);
                    for _ in 0..n_aborted {
                        let pid = r.i64()?;
                        let first = r.i64()?;
                        r.tags_if(flex)?;
                        l.append(nt(py, &self.aborted_transaction, [pid.into_py(py), first.into_py(py)]).map_err(|_| Bad)?)
                            .map_err(|_| Bad)?;
                    }
                    l.into_any().unbind()
                } else {
                    py.None()
                };
                let preferred = if version >= 11 { r.i32()? } else { -1 };
                let (batches, size) = self.records(py, &mut r, flex, &mut holes)?;
                r.tags_if(flex)?;
                let p = nt(py, &self.fetch_response_partition, [
                    topic.clone_ref(py), topic_id.clone_ref(py), partition.into_py(py), p_error.into_py(py),
                    hw.into_py(py), lso.into_py(py), log_start.into_py(py), aborted, preferred.into_py(py), batches,
                    size.into_py(py),
                ])
                .map_err(|_| Bad)?;
                parts.append(p).map_err(|_| Bad)?;
            }
            r.tags_if(flex)?;
        }
        r.finish(flex)?;
        holes.all_read()?;
        nt(py, &self.fetch_response, [
            throttle.into_py(py), error_code.into_py(py), session_id.into_py(py), parts.into_any().unbind(),
        ])
        .map_err(|_| Bad)
    }
}

pub struct Holes<'a> {
    pub skips: &'a [(u32, u32)],
    pub k: usize,
}

impl Holes<'_> {
    /// Every skipped range was met by a records field.
    fn all_read(&self) -> R<()> {
        if self.k == self.skips.len() {
            Ok(())
        } else {
            Err(Bad)
        }
    }
}
