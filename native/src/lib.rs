//! otel_kafka_ebpf._core: the compiled hot path of the decoder (DESIGN.md decisions 2 and 11).
//!
//! Per connection and direction it splits frames, reads request heads, decodes Produce and Fetch bodies (digests
//! included: batch headers, high watermarks, error codes) and pairs requests with responses by the rules of
//! kafka/connection.py, building the decoder's own Python objects (KafkaPair and the message NamedTuples).
//! Bodies of every other api, and Produce/Fetch bodies it cannot read, go to the Python decoder whole.
//!
//! It keeps a connection only while the connection is plain: bytes in order, no gap, frame boundaries
//! where the sizes say. Before an event it cannot take exactly as the Python decoder would (a gap, a jump,
//! a size or request head that is not Kafka, a skip that is not a whole digest frame), `feed_data` returns
//! None and changes nothing; the caller then takes the connection's state (`take`) into a Python
//! `KafkaConnection` and feeds it the event. So the core is never the reason a pair differs or is unseen.

mod wire;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PySet, PyString, PyTuple, PyType};
use std::collections::{HashMap, HashSet, VecDeque};
use wire::{nt, Bad, Classes, Rd, R};

const MIN_FRAME: i64 = 4; // kafka/frames.py
const MAX_FRAME: i64 = 256 << 20;
const MAX_PENDING: usize = 1024; // kafka/connection.py
const MAX_EARLY: usize = 8;
const MAX_API_VERSION: i16 = 30; // kafka/versions.py
const MAX_CLIENT_IDS: usize = 4096; // kafka/headers.py's cache
const PRODUCE: i16 = 0;
const FETCH: i16 = 1;

struct Pending {
    corr: i32,
    api: i16,
    ver: i16,
    client_id: PyObject,
    request: PyObject,
    ts: i64,
    end_ts: i64,
    error: PyObject,
    fetch_offsets: PyObject,
}

struct Early {
    corr: i32,
    payload: Vec<u8>,
    first: i64,
    last: i64,
    skips: Vec<(u32, u32)>,
}

/// A captured piece of the frame being assembled (for its timestamps, and to hand it over as it came).
struct Piece {
    off: u64,
    ts: i64,
    last: i64,
    len: usize,
}

#[derive(Default)]
struct Dir {
    end: u64,        // stream offset after the last byte seen
    pend: Vec<u8>,   // the frame being assembled, from its size prefix
    pieces: Vec<Piece>,
    frames: u64,
}

impl Dir {
    /// Bytes of the frame being assembled, kept with where and when they came.
    fn keep(&mut self, off: u64, data: &[u8], ts: i64, last: i64) {
        self.pend.extend_from_slice(data);
        self.pieces.push(Piece { off, ts, last, len: data.len() });
    }
}

struct Conn {
    server: bool,
    dirs: [Dir; 2], // [requests, responses]
    pending: VecDeque<Pending>,
    pending_ids: HashMap<i32, u32>,
    client_id: PyObject,
    client_str: Option<String>,
    client_raw: Option<Vec<u8>>,
    last_corr: Option<i32>,
    seen: HashSet<(i16, i16)>,
    session: PyObject,
    early: VecDeque<Early>,
}

struct Ctx {
    cls: Classes,
    stats: Py<PyDict>,
    known_api: [bool; 256],
    flexible_from: [i16; 256], // -1: never flexible
    decode_request: PyObject,  // (api, version, payload, pos, skips) -> (message, error)
    decode_response: PyObject, // (api, version, payload, skips) -> (message, error)
    decode_client_id: PyObject,
    new_session: PyObject,
    lost: PyObject,
    no_response: PyObject,
    client_ids: HashMap<Vec<u8>, (PyObject, String)>,
    out: Vec<PyObject>,
}

struct Head {
    api: i16,
    ver: i16,
    corr: i32,
    client: Option<(usize, usize)>,
    body: usize,
}

impl Ctx {
    fn bump(&self, py: Python<'_>, key: &str, n: u64) -> PyResult<()> {
        if n == 0 {
            return Ok(());
        }
        let stats = self.stats.bind(py);
        let old: u64 = match stats.get_item(key)? {
            Some(v) => v.extract()?,
            None => 0,
        };
        stats.set_item(key, old + n)
    }

    /// headers.read_request_header, and the checks connection._on_request makes on its result.
    fn head(&self, p: &[u8]) -> R<Head> {
        let mut r = Rd::new(p, 0);
        let api = r.i16()?;
        let ver = r.i16()?;
        let corr = r.i32()?;
        let n = r.i16()?;
        let client = if n < 0 {
            if n != -1 {
                return Err(Bad);
            }
            None
        } else {
            Some(r.span(n as usize)?)
        };
        if (0..256).contains(&api) {
            let first = self.flexible_from[api as usize];
            if first >= 0 && ver >= first {
                r.skip_tags()?;
            }
        }
        if !(0..256).contains(&api) || !self.known_api[api as usize] || !(0..=MAX_API_VERSION).contains(&ver) {
            return Err(Bad);
        }
        Ok(Head { api, ver, corr, client, body: r.p })
    }

    fn client_id(&mut self, py: Python<'_>, raw: &[u8]) -> PyResult<(PyObject, String)> {
        if let Some((o, s)) = self.client_ids.get(raw) {
            return Ok((o.clone_ref(py), s.clone()));
        }
        let (o, s) = match std::str::from_utf8(raw) {
            Ok(s) => (PyString::new_bound(py, s).into_any().unbind(), s.to_string()),
            Err(_) => {
                let o = self.decode_client_id.call1(py, (PyBytes::new_bound(py, raw),))?;
                let s: String = o.extract(py)?;
                (o, s)
            }
        };
        if self.client_ids.len() < MAX_CLIENT_IDS {
            self.client_ids.insert(raw.to_vec(), (o.clone_ref(py), s.clone()));
        }
        Ok((o, s))
    }

    fn skips_tuple<'py>(py: Python<'py>, skips: &[(u32, u32)]) -> Bound<'py, PyTuple> {
        PyTuple::new_bound(py, skips.iter().map(|&(a, n)| -> PyObject { (a, n).into_py(py) }))
    }

    #[allow(clippy::too_many_arguments)]
    fn pair(&mut self, py: Python<'_>, conn_id: u64, p: &Pending, response: PyObject, response_ts: PyObject,
            response_error: PyObject, fetch_offsets: PyObject, response_start: PyObject) -> PyResult<()> {
        let pair = nt(py, &self.cls.kafka_pair, [
            conn_id.into_py(py), p.api.into_py(py), p.ver.into_py(py), p.corr.into_py(py), p.client_id.clone_ref(py),
            p.request.clone_ref(py), response, p.ts.into_py(py), response_ts, p.error.clone_ref(py), response_error,
            fetch_offsets, p.end_ts.into_py(py), response_start,
        ])?;
        self.out.push(pair);
        Ok(())
    }

    fn unanswered(&mut self, py: Python<'_>, conn_id: u64, p: &Pending, reason: PyObject) -> PyResult<()> {
        self.pair(py, conn_id, p, py.None(), py.None(), reason, py.None(), py.None())
    }

    /// A whole frame of one direction: a request (`is_req`) or a response.
    #[allow(clippy::too_many_arguments)]
    fn on_frame(&mut self, py: Python<'_>, is_req: bool, conn_id: u64, conn: &mut Conn, payload: &[u8], first: i64,
                last: i64, skips: &[(u32, u32)]) -> PyResult<()> {
        if is_req {
            self.on_request(py, conn_id, conn, payload, first, last, skips)
        } else {
            self.on_response(py, conn_id, conn, payload, first, last, skips)
        }
    }

    fn on_request(&mut self, py: Python<'_>, conn_id: u64, conn: &mut Conn, payload: &[u8], first: i64, last: i64,
                  skips: &[(u32, u32)]) -> PyResult<()> {
        let h = self.head(payload).map_err(|_| pyo3::exceptions::PyAssertionError::new_err("unchecked head"))?;
        // _learn
        conn.seen.insert((h.api, h.ver));
        conn.last_corr = Some(h.corr);
        let (client_id, client_str, raw) = match h.client {
            None => (py.None(), None, None),
            Some((s, e)) => {
                let (o, st) = self.client_id(py, &payload[s..e])?;
                (o, Some(st), Some(&payload[s..e]))
            }
        };
        if client_str != conn.client_str || conn.client_raw.is_none() {
            conn.client_id = client_id.clone_ref(py);
            conn.client_str = client_str;
            conn.client_raw = raw.map(|r| r.to_vec());
        }
        // the body
        let mut acks: Option<i16> = None;
        let mut decoded: Option<PyObject> = None;
        if h.api == PRODUCE && (0..=13).contains(&h.ver) {
            if let Ok((m, a)) = self.cls.produce_request(py, payload, h.body, h.ver, skips) {
                decoded = Some(m);
                acks = Some(a);
            }
        } else if h.api == FETCH && (4..=18).contains(&h.ver) && skips.is_empty() {
            decoded = self.cls.fetch_request(py, payload, h.body, h.ver).ok();
        }
        let (request, error) = match decoded {
            Some(m) => (m, py.None()),
            None => {
                let res = self.decode_request.call1(py, (h.api, h.ver, PyBytes::new_bound(py, payload), h.body,
                                                         Self::skips_tuple(py, skips)))?;
                res.extract::<(PyObject, PyObject)>(py)?
            }
        };
        if h.api == PRODUCE && !request.is_none(py) {
            let a = match acks {
                Some(a) => a as i64,
                None => request.getattr(py, "acks")?.extract::<i64>(py)?,
            };
            if a == 0 {
                let p = Pending { corr: h.corr, api: h.api, ver: h.ver, client_id, request, ts: first, end_ts: last,
                                  error: py.None(), fetch_offsets: py.None() };
                let nr = self.no_response.clone_ref(py);
                return self.pair(py, conn_id, &p, py.None(), py.None(), nr, py.None(), py.None());
            }
        }
        let fetch_offsets = if h.api == FETCH && !request.is_none(py) {
            conn.session.call_method1(py, "on_request", (request.clone_ref(py),))?
        } else {
            py.None()
        };
        // _add_pending (no gap ever reached this connection: no id is ambiguous)
        conn.pending.push_back(Pending { corr: h.corr, api: h.api, ver: h.ver, client_id, request, ts: first,
                                         end_ts: last, error, fetch_offsets });
        *conn.pending_ids.entry(h.corr).or_insert(0) += 1;
        if conn.pending.len() > MAX_PENDING {
            self.bump(py, "pending_overflow", 1)?;
            let e = pop_oldest(conn);
            let lost = self.lost.clone_ref(py);
            self.unanswered(py, conn_id, &e, lost)?;
        }
        if let Some(i) = conn.early.iter().position(|e| e.corr == h.corr) {
            let e = conn.early.remove(i).unwrap();
            self.on_response(py, conn_id, conn, &e.payload, e.first, e.last, &e.skips)?;
        }
        Ok(())
    }

    fn on_response(&mut self, py: Python<'_>, conn_id: u64, conn: &mut Conn, payload: &[u8], first: i64, last: i64,
                   skips: &[(u32, u32)]) -> PyResult<()> {
        let corr = i32::from_be_bytes(payload[0..4].try_into().unwrap());
        if !conn.pending_ids.contains_key(&corr) {
            conn.early.push_back(Early { corr, payload: payload.to_vec(), first, last, skips: skips.to_vec() });
            if conn.early.len() > MAX_EARLY {
                conn.early.pop_front();
                self.bump(py, "unmatched_responses", 1)?;
            }
            return Ok(());
        }
        // _match: earlier requests lost their responses (Kafka answers in order)
        let entry = loop {
            let e = pop_oldest(conn);
            if e.corr == corr {
                break e;
            }
            self.bump(py, "lost_responses", 1)?;
            let lost = self.lost.clone_ref(py);
            self.unanswered(py, conn_id, &e, lost)?;
        };
        let mut decoded: Option<PyObject> = None;
        if entry.api == PRODUCE && (0..=13).contains(&entry.ver) && skips.is_empty() {
            decoded = self.cls.produce_response(py, payload, entry.ver).ok();
        } else if entry.api == FETCH && (4..=18).contains(&entry.ver) {
            decoded = self.cls.fetch_response(py, payload, entry.ver, skips).ok();
        }
        let (response, error) = match decoded {
            Some(m) => (m, py.None()),
            None => {
                let res = self.decode_response.call1(py, (entry.api, entry.ver, PyBytes::new_bound(py, payload),
                                                          Self::skips_tuple(py, skips)))?;
                res.extract::<(PyObject, PyObject)>(py)?
            }
        };
        if !entry.fetch_offsets.is_none(py) && !response.is_none(py) {
            conn.session.call_method1(py, "on_response", (entry.request.clone_ref(py), response.clone_ref(py)))?;
        }
        let fo = entry.fetch_offsets.clone_ref(py);
        self.pair(py, conn_id, &entry, response, last.into_py(py), error, fo, first.into_py(py))
    }
}

fn pop_oldest(conn: &mut Conn) -> Pending {
    let e = conn.pending.pop_front().expect("pending");
    if let Some(n) = conn.pending_ids.get_mut(&e.corr) {
        if *n > 1 {
            *n -= 1;
        } else {
            conn.pending_ids.remove(&e.corr);
        }
    }
    e
}

fn be_i32(b: &[u8]) -> i64 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64
}

/// One frame of an event, as planned before anything is changed.
enum Src {
    Joined(Vec<u8>),      // the buffered frame completed by the event's first bytes
    Slice(usize, usize), // payload bounds inside the event's data
}

#[pyclass(module = "otel_kafka_ebpf._core")]
struct Core {
    conns: HashMap<u64, Conn>,
    ctx: Ctx,
}

fn ty(d: &Bound<'_, PyDict>, k: &str) -> PyResult<Py<PyType>> {
    Ok(d.get_item(k)?
        .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(k.to_string()))?
        .downcast_into::<PyType>()?
        .unbind())
}

fn obj(d: &Bound<'_, PyDict>, k: &str) -> PyResult<PyObject> {
    Ok(d.get_item(k)?.ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(k.to_string()))?.unbind())
}

#[pymethods]
impl Core {
    /// `parts`: the decoder's classes, helpers and tables (otel_kafka_ebpf/fastpath.py); `stats`: the decoder's
    /// Counter, which the core adds to as the Python decoder would.
    #[new]
    fn new(py: Python<'_>, parts: &Bound<'_, PyDict>, stats: Bound<'_, PyDict>) -> PyResult<Self> {
        let mut known_api = [false; 256];
        for k in obj(parts, "api_keys")?.bind(py).iter()? {
            let k: i64 = k?.extract()?;
            if (0..256).contains(&k) {
                known_api[k as usize] = true;
            }
        }
        let mut flexible_from = [-1i16; 256];
        for (k, v) in obj(parts, "flexible_from")?.bind(py).downcast::<PyDict>()?.iter() {
            let k: i64 = k.extract()?;
            if (0..256).contains(&k) {
                flexible_from[k as usize] = v.extract()?;
            }
        }
        let cls = Classes {
            kafka_pair: ty(parts, "KafkaPair")?,
            produce_request: ty(parts, "ProduceRequest")?,
            produce_request_partition: ty(parts, "ProduceRequestPartition")?,
            produce_response: ty(parts, "ProduceResponse")?,
            produce_response_partition: ty(parts, "ProduceResponsePartition")?,
            fetch_request: ty(parts, "FetchRequest")?,
            fetch_request_partition: ty(parts, "FetchRequestPartition")?,
            forgotten_topic: ty(parts, "ForgottenTopic")?,
            fetch_response: ty(parts, "FetchResponse")?,
            fetch_response_partition: ty(parts, "FetchResponsePartition")?,
            aborted_transaction: ty(parts, "AbortedTransaction")?,
            record_batch: ty(parts, "RecordBatch")?,
            topics: HashMap::new(),
        };
        Ok(Core {
            conns: HashMap::new(),
            ctx: Ctx {
                cls,
                stats: stats.unbind(),
                known_api,
                flexible_from,
                decode_request: obj(parts, "decode_request")?,
                decode_response: obj(parts, "decode_response")?,
                decode_client_id: obj(parts, "decode_client_id")?,
                new_session: obj(parts, "FetchSession")?,
                lost: obj(parts, "LOST")?,
                no_response: obj(parts, "NO_RESPONSE")?,
                client_ids: HashMap::new(),
                out: Vec::new(),
            },
        })
    }

    /// A new connection (any old state of this id must have been closed or taken first).
    fn open(&mut self, py: Python<'_>, conn_id: u64, server: bool) -> PyResult<()> {
        let session = self.ctx.new_session.call0(py)?;
        self.conns.insert(conn_id, Conn {
            server,
            dirs: [Dir::default(), Dir::default()],
            pending: VecDeque::new(),
            pending_ids: HashMap::new(),
            client_id: py.None(),
            client_str: None,
            client_raw: None,
            last_corr: None,
            seen: HashSet::new(),
            session,
            early: VecDeque::new(),
        });
        Ok(())
    }

    fn __contains__(&self, conn_id: u64) -> bool {
        self.conns.contains_key(&conn_id)
    }

    fn __len__(&self) -> usize {
        self.conns.len()
    }

    /// Captured bytes of one direction (a StreamData). Returns the pairs they complete, or None (nothing
    /// changed) when the connection must go on in the Python decoder from this event.
    #[pyo3(signature = (conn_id, direction, offset, data, ts_ns, last_ts_ns=None, skips=None, skip_reason=None))]
    #[allow(clippy::too_many_arguments)]
    fn feed_data(&mut self, py: Python<'_>, conn_id: u64, direction: i64, offset: u64, data: &[u8], ts_ns: i64,
                 last_ts_ns: Option<i64>, skips: Option<Vec<(i64, i64)>>, skip_reason: Option<i64>)
                 -> PyResult<Option<PyObject>> {
        let conn = match self.conns.get_mut(&conn_id) {
            Some(c) => c,
            None => return Ok(None),
        };
        let is_req = (direction == 0) == !conn.server;
        let di = if is_req { 0 } else { 1 };
        let last = last_ts_ns.unwrap_or(ts_ns);
        let n = data.len();
        let ctx = &mut self.ctx;
        {
            let d = &conn.dirs[di];
            if offset != d.end {
                return Ok(None);
            }
        }
        let skips = skips.unwrap_or_default();
        if !skips.is_empty() {
            // a digest: one event per frame, taken whole at a frame boundary (frames.py _feed_digest)
            if skip_reason != Some(RECORDS_SKIPPED) || !conn.dirs[di].pend.is_empty() || n < 4 {
                return Ok(None);
            }
            let mut skipped: i64 = 0;
            let mut shifted = Vec::with_capacity(skips.len());
            for &(at, len) in &skips {
                if !(4..=u32::MAX as i64).contains(&at) || !(0..=u32::MAX as i64).contains(&len) {
                    return Ok(None);
                }
                skipped += len;
                shifted.push(((at - 4) as u32, len as u32));
            }
            let size = be_i32(data);
            if !(MIN_FRAME..=MAX_FRAME).contains(&size) || 4 + size != n as i64 + skipped {
                return Ok(None);
            }
            if is_req && ctx.head(&data[4..]).is_err() {
                return Ok(None);
            }
            ctx.bump(py, "skipped_on_purpose_bytes", skipped as u64)?;
            let d = &mut conn.dirs[di];
            d.end += 4 + size as u64;
            d.frames += 1;
            ctx.on_frame(py, is_req, conn_id, conn, &data[4..], ts_ns, last, &shifted)?;
            return Ok(Some(take_out(py, ctx)));
        }
        if n == 0 {
            return Ok(Some(PyList::empty_bound(py).into_any().unbind()));
        }
        // plan: which frames the event completes; refuse before changing anything
        let mut plan: Vec<Src> = Vec::new();
        let mut pos = 0usize;
        let mut absorb_all = false;
        {
            let d = &conn.dirs[di];
            if !d.pend.is_empty() {
                let have = d.pend.len();
                if have + n < 4 {
                    absorb_all = true;
                } else {
                    let mut prefix = [0u8; 4];
                    for (i, b) in prefix.iter_mut().enumerate() {
                        *b = if i < have { d.pend[i] } else { data[i - have] };
                    }
                    let size = be_i32(&prefix);
                    if !(MIN_FRAME..=MAX_FRAME).contains(&size) {
                        return Ok(None);
                    }
                    let total = 4 + size as usize;
                    if have + n < total {
                        absorb_all = true;
                    } else {
                        let used = total - have;
                        let mut joined = Vec::with_capacity(total - 4);
                        if have > 4 {
                            joined.extend_from_slice(&d.pend[4..]);
                            joined.extend_from_slice(&data[..used]);
                        } else {
                            joined.extend_from_slice(&data[4 - have..used]);
                        }
                        if is_req && ctx.head(&joined).is_err() {
                            return Ok(None);
                        }
                        plan.push(Src::Joined(joined));
                        pos = used;
                    }
                }
            }
            if !absorb_all {
                while n - pos >= 4 {
                    let size = be_i32(&data[pos..]);
                    if !(MIN_FRAME..=MAX_FRAME).contains(&size) {
                        return Ok(None);
                    }
                    if ((n - pos - 4) as i64) < size {
                        break;
                    }
                    let (s, e) = (pos + 4, pos + 4 + size as usize);
                    if is_req && ctx.head(&data[s..e]).is_err() {
                        return Ok(None);
                    }
                    plan.push(Src::Slice(s, e));
                    pos = e;
                }
            }
        }
        // commit
        let d = &mut conn.dirs[di];
        let first_pend_ts = d.pieces.first().map(|p| p.ts).unwrap_or(ts_ns);
        d.end += n as u64;
        d.frames += plan.len() as u64;
        if absorb_all {
            d.keep(offset, data, ts_ns, last);
            return Ok(Some(PyList::empty_bound(py).into_any().unbind()));
        }
        if matches!(plan.first(), Some(Src::Joined(_))) {
            d.pend.clear();
            d.pieces.clear();
        }
        if pos < n {
            d.keep(offset + pos as u64, &data[pos..], ts_ns, last);
        }
        for src in plan {
            match src {
                Src::Joined(p) => ctx.on_frame(py, is_req, conn_id, conn, &p, first_pend_ts, last, &[])?,
                Src::Slice(s, e) => ctx.on_frame(py, is_req, conn_id, conn, &data[s..e], ts_ns, last, &[])?,
            }
        }
        Ok(Some(take_out(py, ctx)))
    }

    /// The connection ended (`reason` for its unanswered requests: lost, or in_flight at the end of input).
    /// None when a frame is half assembled: the Python decoder reports it (take the state first).
    fn close(&mut self, py: Python<'_>, conn_id: u64, reason: PyObject) -> PyResult<Option<PyObject>> {
        let busy = match self.conns.get(&conn_id) {
            None => return Ok(Some(PyList::empty_bound(py).into_any().unbind())),
            Some(c) => c.dirs.iter().any(|d| !d.pend.is_empty()),
        };
        if busy {
            return Ok(None);
        }
        let mut conn = self.conns.remove(&conn_id).unwrap();
        let ctx = &mut self.ctx;
        while !conn.pending.is_empty() {
            let e = pop_oldest(&mut conn);
            ctx.unanswered(py, conn_id, &e, reason.clone_ref(py))?;
        }
        ctx.bump(py, "unmatched_responses", conn.early.len() as u64)?;
        ctx.bump(py, "request_frames", conn.dirs[0].frames)?;
        ctx.bump(py, "response_frames", conn.dirs[1].frames)?;
        Ok(Some(take_out(py, ctx)))
    }

    /// The whole state of a connection, removed from the core, for a Python KafkaConnection to go on from.
    fn take(&mut self, py: Python<'_>, conn_id: u64) -> PyResult<Option<PyObject>> {
        let conn = match self.conns.remove(&conn_id) {
            Some(c) => c,
            None => return Ok(None),
        };
        let d = PyDict::new_bound(py);
        d.set_item("server", conn.server)?;
        let pending = PyList::empty_bound(py);
        for p in &conn.pending {
            pending.append((p.api, p.ver, p.corr, p.client_id.clone_ref(py), p.request.clone_ref(py), p.ts, p.end_ts,
                            p.error.clone_ref(py), p.fetch_offsets.clone_ref(py)))?;
        }
        d.set_item("pending", pending)?;
        d.set_item("client_id", conn.client_id.clone_ref(py))?;
        d.set_item("client_id_bytes", conn.client_raw.as_ref().map(|r| PyBytes::new_bound(py, r)))?;
        d.set_item("last_correlation_id", conn.last_corr)?;
        let seen = PySet::empty_bound(py)?;
        for v in &conn.seen {
            seen.add(*v)?;
        }
        d.set_item("seen_versions", seen)?;
        d.set_item("fetch_session", conn.session.clone_ref(py))?;
        let early = PyList::empty_bound(py);
        for e in &conn.early {
            early.append((e.corr, PyBytes::new_bound(py, &e.payload), e.first, e.last,
                          Ctx::skips_tuple(py, &e.skips)))?;
        }
        d.set_item("early", early)?;
        for (name, dir) in [("requests", &conn.dirs[0]), ("responses", &conn.dirs[1])] {
            let pieces = PyList::empty_bound(py);
            let mut at = 0usize;
            for p in &dir.pieces {
                pieces.append((p.off, PyBytes::new_bound(py, &dir.pend[at..at + p.len]), p.ts, p.last))?;
                at += p.len;
            }
            d.set_item(name, (dir.end, dir.frames, pieces))?;
        }
        Ok(Some(d.into_any().unbind()))
    }

    /// (request frames, response frames) of the open connections, for the decoder's summary.
    fn frame_counts(&self) -> (u64, u64) {
        self.conns.values().fold((0, 0), |(a, b), c| (a + c.dirs[0].frames, b + c.dirs[1].frames))
    }

    /// Bytes held for frames being assembled, over all connections (bounded by one frame each).
    fn buffered_bytes(&self) -> usize {
        self.conns.values().map(|c| c.dirs[0].pend.len() + c.dirs[1].pend.len()).sum()
    }

    /// Ids of the open connections.
    fn connection_ids(&self) -> Vec<u64> {
        self.conns.keys().copied().collect()
    }
}

const RECORDS_SKIPPED: i64 = 7; // streams.GapReason.RECORDS_SKIPPED

fn take_out(py: Python<'_>, ctx: &mut Ctx) -> PyObject {
    let out = std::mem::take(&mut ctx.out);
    PyList::new_bound(py, out).into_any().unbind()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Core>()?;
    m.add("RECORDS_SKIPPED", RECORDS_SKIPPED)?;
    Ok(())
}
