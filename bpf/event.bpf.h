/* SPDX-License-Identifier: Apache-2.0
 * The data event under construction: one per CPU while a syscall is walked, kept per connection
 * direction between syscalls while its frame is unfinished, so that a frame read in several
 * syscalls (a Java client reads the size field alone) still becomes one event. */
#ifndef OKE_EVENT_BPF_H
#define OKE_EVENT_BPF_H

#define PAYLOAD_MASK  (2 * OKE_CHUNK_SIZE - 1)
#define OKE_PENDING_BYTES 2048  /* an unfinished event bigger than this is sent rather than kept */
#define OKE_PENDING_SKIPS 16

/* A data syscall of a TCP socket that just returned. */
struct active_op {
	__u64 sk;
	__u64 ino;
	__u64 ptr;           /* buffer, iovec array, msghdr or mmsghdr array */
	__u32 count;         /* buffer length, iovcnt or vlen */
	__u8  kind;
	__u8  direction;
	__u8  tls;           /* enum oke_tls_stack: bytes a TLS probe handed over (0: a syscall's) */
	__u8  pad0;
	__u32 fd;
	__u32 pad1;
};

/* The first bytes of a syscall, across iovecs, for detection and resynchronisation. */
struct peek {
	__u8 b[64];  /* 16 used; the rest keeps masked variable-offset reads in bounds */
};

/* The frame walk through the bytes of one syscall. */
struct walk {
	__u64 iov;           /* user iovec array, 0 for a plain buffer */
	__u32 iovcnt;
	__u32 seg;           /* current iovec */
	__u32 total;         /* bytes the syscall moved */
	__u32 covered;       /* bytes of the syscall in segments loaded so far */
	__u64 ptr;           /* current segment's user buffer */
	__u32 len;
	__u32 pos;           /* next byte of the segment to walk */
	__u64 base_offset;   /* stream offset of ptr[0] */
	__u64 start;         /* stream offset of the syscall's first byte */
	__u64 ts;
	__u8  direction;
	__u8  is_request;    /* this direction carries requests */
	__u8  failed;
	__u8  done;
	__u8  end_frame;     /* the frame ended with its head: end it once the head is digested */
	__u8  pad0[3];
};

/* Per CPU, while one syscall is walked. Everything larger than a few words lives here rather
 * than on the stack: the verifier allows 512 bytes for a whole call chain (the program, the walk
 * callback and the functions it calls), and the margin under it is what lets the object load on
 * kernels and compilers other than the ones it was built and tested with (tests/unit/test_headroom.py). */
struct ev_scratch {
	struct oke_data_event ev;              /* ev.type 0: no event open */
	__u8  payload[2 * OKE_CHUNK_SIZE];     /* ev.len used; room for one more append and the skip table */
	struct oke_skip skips[OKE_MAX_SKIPS];
	__u64 wire_end;                        /* stream offset after the last byte the event covers */
	struct active_op op;                   /* the data syscall that returned */
	struct walk w;
	struct peek peek;                      /* the syscall's first bytes */
	struct peek lead;                      /* a lone size field and the next read's first bytes */
	union {                                /* user structures read on the way to the bytes */
		struct user_msghdr msg;
		struct mmsghdr mm;
		struct iovec v;
	} u;
};

/* One entry per CPU (the loader sets max_entries): too big for a per-CPU array's value. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ev_scratch);
} scratch SEC(".maps");

/* An event kept between syscalls while its frame is unfinished. */
struct oke_pending_event {
	struct oke_data_event ev;    /* ev.type 0: none */
	__u64 wire_end;
	struct oke_skip skips[OKE_PENDING_SKIPS];
	__u8  payload[OKE_PENDING_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OKE_MAX_PENDING_EVENTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);  /* memory only for Kafka connections with a frame under way */
	__type(key, __u64);                    /* conn_id << 1 | direction */
	__type(value, struct oke_pending_event);
} pending SEC(".maps");

static __always_inline struct ev_scratch *scratch_get(void)
{
	__u32 cpu = bpf_get_smp_processor_id();
	return bpf_map_lookup_elem(&scratch, &cpu);
}

/* Wake the reader only once enough data waits: no context switch per event. */
static __always_inline __u64 ringbuf_flags(void)
{
	if (!cfg.wakeup_bytes)
		return 0;
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= cfg.wakeup_bytes ? BPF_RB_FORCE_WAKEUP
										 : BPF_RB_NO_WAKEUP;
}

/* &sb->payload[off] for off <= max, or NULL. The offset is checked in the very register the pointer is
 * made from: 6.1's verifier does not carry a check over to a copy the compiler spilled before it. */
static __always_inline __u8 *payload_at(struct ev_scratch *sb, __u32 off32, __u32 max)
{
	__u64 off = off32;
	barrier_var(off);
	if (off > max)
		return NULL;
	return &sb->payload[off];
}

/* Open an event at stream offset `at`; the direction's loss reasons move into it. */
static __always_inline void ev_begin(struct ev_scratch *sb, struct conn *c, struct dir_state *d, __u8 dir,
				     __u64 at, __u64 ts, __u16 flags)
{
	struct oke_data_event *e = &sb->ev;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	e->type = OKE_EV_DATA;
	e->len = 0;
	e->conn_id = c->conn_id;
	e->ts_ns = ts;
	e->offset = at;
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->direction = dir;
	e->gap_flags = d->gap_flags;
	e->flags = flags;
	e->n_skips = 0;
	e->skip_reason = 0;
	e->pad0 = 0;
	e->last_ts_ns = ts;
	sb->wire_end = at;
	d->gap_flags = 0;
}

/* Send the open event, if any. A full ring buffer turns its bytes into a loss before the next event. */
static __always_inline void ev_flush(struct ev_scratch *sb, struct dir_state *d)
{
	struct oke_data_event *e = &sb->ev;
	if (!e->type)
		return;
	e->type = 0;
	__u32 len = e->len;
	__u32 n = e->n_skips;
	if (len > OKE_CHUNK_SIZE || n > OKE_MAX_SKIPS)
		return;
	__u8 *table = payload_at(sb, len, OKE_CHUNK_SIZE);
	if (!table)
		return;
	if (n)  /* the skip table follows the payload */
		bpf_probe_read_kernel(table, n * sizeof(struct oke_skip), sb->skips);
	/* the size passed is bounded in its own register (6.1's verifier loses the bound of a sum whose
	 * parts were checked before a spill) */
	__u64 size = sizeof(*e) + len + n * sizeof(struct oke_skip);
	barrier_var(size);
	if (size > sizeof(*e) + OKE_CHUNK_SIZE + OKE_MAX_SKIPS * sizeof(struct oke_skip))
		return;
	e->type = OKE_EV_DATA;
	if (bpf_ringbuf_output(&events, e, size, ringbuf_flags())) {
		d->gap_flags |= OKE_GAP_RINGBUF | e->gap_flags;
		count(OKE_CNT_RINGBUF_DROPS, 1);
		count(OKE_CNT_GAP_BYTES, sb->wire_end - e->offset);
	} else {
		count(OKE_CNT_EVENTS, 1);
		count(OKE_CNT_BYTES, len);
	}
	e->type = 0;
}

/* Append n (1..OKE_CHUNK_SIZE) bytes of user memory; the caller left room for them. */
static __always_inline int ev_put_user(struct ev_scratch *sb, __u64 src, __u32 n)
{
	__u32 len = sb->ev.len;
	__u64 size = n;
	if (len >= OKE_CHUNK_SIZE || size == 0 || size > OKE_CHUNK_SIZE)
		return -1;
	/* bound the register that is passed, whatever the compiler kept of the checks above */
	barrier_var(size);
	if (size > OKE_CHUNK_SIZE)
		return -1;
	__u8 *dst = payload_at(sb, len, OKE_CHUNK_SIZE - 1);
	if (!dst || bpf_probe_read_user(dst, size, (void *)src))
		return -1;
	sb->ev.len = len + size;
	return 0;
}

/* Append up to 4 bytes already read; the caller left room for them. */
static __always_inline void ev_put_small(struct ev_scratch *sb, const __u8 *src, __u32 n)
{
	__u32 len = sb->ev.len;
	if (len >= OKE_CHUNK_SIZE)
		return;
#pragma unroll
	for (int j = 0; j < 4; j++)
		if (j < n)
			sb->payload[(len + j) & PAYLOAD_MASK] = src[j];
	sb->ev.len = len + (n > 4 ? 4 : n);
}

/* Record n stream bytes not copied here; false when the event has no room for another range. */
static __always_inline bool ev_put_skip(struct ev_scratch *sb, __u32 n, __u8 reason)
{
	struct oke_data_event *e = &sb->ev;
	__u32 k = e->n_skips;
	if (k > 0 && k <= OKE_MAX_SKIPS) {
		struct oke_skip *prev = &sb->skips[(k - 1) & (OKE_MAX_SKIPS - 1)];
		if (prev->at == e->len) {
			prev->len += n;
			return true;
		}
	}
	if (k >= OKE_MAX_SKIPS)
		return false;
	sb->skips[k & (OKE_MAX_SKIPS - 1)].at = e->len;
	sb->skips[k & (OKE_MAX_SKIPS - 1)].len = n;
	e->n_skips = k + 1;
	e->skip_reason = reason;
	return true;
}

static __always_inline __u64 pending_key(struct conn *c, __u8 dir)
{
	return (c->conn_id << 1) | (dir & 1);
}

/* Reopen the event an earlier syscall left unfinished in this direction, if any. */
static __always_inline void pending_take(struct ev_scratch *sb, struct conn *c, __u8 dir)
{
	sb->ev.type = 0;
	__u64 key = pending_key(c, dir);
	struct oke_pending_event *p = bpf_map_lookup_elem(&pending, &key);
	if (!p || !p->ev.type)
		return;
	p->ev.type = 0;
	__u32 len = p->ev.len;
	__u32 n = p->ev.n_skips;
	if (len > OKE_PENDING_BYTES || n > OKE_PENDING_SKIPS)
		return;
	if (len)
		bpf_probe_read_kernel(sb->payload, len, p->payload);
	if (n)
		bpf_probe_read_kernel(sb->skips, n * sizeof(struct oke_skip), p->skips);
	sb->ev = p->ev;
	sb->ev.type = OKE_EV_DATA;
	sb->wire_end = p->wire_end;
}

/* Keep the open event for the next syscall of this direction; false if it is too big to keep. */
static __always_inline bool pending_put(struct ev_scratch *sb, struct conn *c, __u8 dir)
{
	__u32 len = sb->ev.len;
	__u32 n = sb->ev.n_skips;
	if (len > OKE_PENDING_BYTES || n > OKE_PENDING_SKIPS)
		return false;
	__u64 key = pending_key(c, dir);
	struct oke_pending_event *p = bpf_map_lookup_elem(&pending, &key);
	if (!p) {
		/* the value's bytes are all written below before they are read */
		bpf_map_update_elem(&pending, &key, sb, BPF_NOEXIST);
		p = bpf_map_lookup_elem(&pending, &key);
		if (!p)
			return false;
	}
	if (len)
		bpf_probe_read_kernel(p->payload, len, sb->payload);
	if (n)
		bpf_probe_read_kernel(p->skips, n * sizeof(struct oke_skip), sb->skips);
	p->ev = sb->ev;
	p->wire_end = sb->wire_end;
	sb->ev.type = 0;
	return true;
}

/* Send what a direction left unfinished (its connection ends), and forget its entry. */
static __always_inline void pending_flush(struct conn *c, __u8 dir)
{
	__u64 key = pending_key(c, dir);
	if (!bpf_map_lookup_elem(&pending, &key))
		return;
	struct ev_scratch *sb = scratch_get();
	if (sb) {
		pending_take(sb, c, dir);
		ev_flush(sb, &c->dir[dir & 1]);
	}
	bpf_map_delete_elem(&pending, &key);
}

#endif
