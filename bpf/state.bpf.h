/* SPDX-License-Identifier: Apache-2.0
 * Per-connection state of the capture, the settings, the ring buffer and the counters: what every
 * part of the program (walker, digest, events) shares. */
#ifndef OKE_STATE_BPF_H
#define OKE_STATE_BPF_H

const volatile struct oke_config cfg = {};

/* What the next `unit_left` bytes of a frame body are, for the walker. */
enum unit_kind {
	U_NONE = 0,   /* nothing set up: the digest decides what comes next */
	U_BODY,       /* plain copy under the frame budget (frames without a layout) */
	U_COPY,       /* copied (structure the decoder reads) */
	U_SKIP,       /* skipped on purpose (records, SASL) */
	U_FIELD,      /* a big-endian integer of unit_left bytes, copied and accumulated in acc */
	U_VARINT,     /* an unsigned varint, copied and accumulated in acc */
};

#define LAYOUT_NONE 0
#define LAYOUT_HEAD 255  /* reading a frame's first fields: api key, version, correlation id */

struct dir_state {
	__u64 offset;        /* stream bytes seen so far */
	__u32 frame_left;    /* body bytes left in the current frame; 0: at a size field */
	__u32 frame_copied;  /* bytes of the current frame copied (size field included) */
	__u8  size_have;     /* bytes of the size field seen so far */
	__u8  synced;        /* frame boundaries known */
	__u8  gap_flags;     /* reasons for bytes missed since the last event */
	__u8  raw_next;      /* the next frame is a raw SASL token (after SaslHandshake v0) */
	__u8  size_buf[4];
	/* the digest of the frame body being walked */
	__u8  layout;        /* LAYOUT_NONE, LAYOUT_HEAD or the id of the layout followed */
	__u8  pc;            /* next op of the layout */
	__u8  step;          /* where in that op */
	__u8  depth;         /* arrays open */
	__u8  unit;          /* enum unit_kind */
	__u8  have;          /* U_FIELD, U_VARINT: bytes accumulated */
	__u8  skip_reason;   /* U_SKIP: OKE_SKIP_* */
	__u8  seq_known;     /* seq_base is learnt */
	__u32 unit_left;     /* bytes left in the unit (U_VARINT: unused) */
	__u32 acc;           /* the field read last */
	__u32 aux;           /* op-specific: tagged fields left; api key and version of the frame */
	__u32 rec_left;      /* bytes left of the record batches being walked */
	__u32 batch_left;    /* records of the current batch not yet walked */
	__u32 loop_left[OKE_MAX_DEPTH];
	__u8  loop_pc[OKE_MAX_DEPTH];
	__u32 seq_base;      /* TCP sequence number of stream offset 0, mod 2^32 (note_unseen) */
	__u32 pad1;
};

/* A request whose response has a layout: responses come in request order on a connection. */
struct inflight {
	__s32 corr;
	__u8  api_key;
	__u8  version;
	__u16 pad0;
};

struct conn {
	__u64 conn_id;
	__u64 ino;           /* socket inode: tells a reused struct sock from the old one */
	__u64 open_ts;
	__u32 tgid;
	__u8  verdict;
	__u8  role;
	__u8  open_sent;
	__u8  attempts;
	struct dir_state dir[2];
	__s32 resync_corr;   /* correlation id of the request seen when joining mid-stream */
	__u8  resync_armed;  /* responses may resynchronise on resync_corr */
	__u8  pending4_valid;
	__u8  pending4[4];   /* a lone 4-byte read: maybe the size field of the awaited response, or
	                      * (lead4) the size field of the first request, read alone */
	__u8  lead4;         /* classified on a request whose size field came alone: emit pending4 first */
	__u8  inflight_head; /* next slot of inflight to write */
	__u8  inflight_n;    /* slots in use, the oldest at inflight_head - inflight_n */
	__u8  rearm;         /* responses lost their sync: the next request says which response resyncs them */
	__u8  tls;           /* enum oke_tls_stack: the plaintext of this TLS library is walked, not the socket's bytes */
	__u8  pad1;
	struct inflight inflight[OKE_INFLIGHT];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, OKE_RINGBUF_BYTES);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, OKE_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += n;
}

/* Kafka's integers are big-endian */
static __always_inline __s32 be32(const __u8 *b)
{
	return (__s32)(((__u32)b[0] << 24) | ((__u32)b[1] << 16) | ((__u32)b[2] << 8) | b[3]);
}

static __always_inline __s16 be16(const __u8 *b)
{
	return (__s16)(((__u16)b[0] << 8) | b[1]);
}

#endif
