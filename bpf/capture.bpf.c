// SPDX-License-Identifier: Apache-2.0
/* Capture of Kafka client traffic at the socket syscalls.
 *
 * One program at every syscall's exit (its arguments are still in pt_regs there): filters,
 * fd -> socket, connection state, Kafka detection, frame walk per direction, digest (digest.bpf.h)
 * or bounded copy into data events (event.bpf.h). Every byte not copied is either a declared skip
 * inside an event or, when lost, a jump of the stream offset between events. Nothing runs at
 * syscall entry: a second program there would double the cost every process pays per syscall. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>
#include "capture.h"
#include "syscalls.bpf.h"
#include "state.bpf.h"
#include "event.bpf.h"
#include "digest.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET      2
#define AF_INET6     10
#define IPPROTO_TCP  6
#define SOCK_STREAM  1
#define S_IFMT       00170000
#define S_IFSOCK     0140000
#define EINPROGRESS  115
#define PROT_EXEC    4

#define KAFKA_MIN_REQUEST  10          /* api_key + api_version + correlation_id + client_id length */
#define KAFKA_MAX_FRAME    (256 << 20)
#define KAFKA_MAX_API_KEY  127
#define KAFKA_MAX_VERSION  40
#define WALK_MAX_STEPS     (1 << 20)   /* units walked per syscall: a digest takes a few per record batch */
/* what one step of the walk returns (walk_one) */
#define WALK_GO      0
#define WALK_STOP    1
#define WALK_DIGEST  2  /* the digest chooses the next unit before the next step */

enum conn_verdict { CONN_UNKNOWN = 0, CONN_KAFKA = 1, CONN_OTHER = 2 };
/* FD_TLS: a TLS probe hands this socket's plaintext over, its ciphertext is not looked at; FD_TLS_OTHER: and
 * that plaintext is not Kafka. */
enum fd_verdict { FD_NOT_SOCKET = 1, FD_NOT_KAFKA = 2, FD_TLS = 3, FD_TLS_OTHER = 4 };
enum op_kind { OP_BUF = 0, OP_IOV = 1, OP_MSG = 2, OP_MMSG = 3, OP_CONNECT = 4, OP_ACCEPT = 5, OP_SENDFILE = 6 };


struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, OKE_MAX_CONNS);
	__type(key, __u64);              /* struct sock * */
	__type(value, struct conn);
} conns SEC(".maps");

const struct conn zero_conn = {};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, OKE_MAX_FD_VERDICTS);
	__type(key, __u64);              /* tgid << 32 | fd */
	__type(value, __u8);
} fd_verdicts SEC(".maps");

/* tgid << 32 | fd -> struct sock * of Kafka connections: close() is seen at its exit, when the fd
 * no longer leads to the socket */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, OKE_MAX_KAFKA_FDS);
	__type(key, __u64);
	__type(value, __u64);
} kafka_fds SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OKE_MAX_PIDS);
	__type(key, __u32);
	__type(value, __u8);
} pid_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, OKE_MAX_KAFKA_TGIDS);
	__type(key, __u32);              /* tgids that own Kafka connections, for exit events */
	__type(value, __u8);
} kafka_tgids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} next_conn_id SEC(".maps");

/* Never written: keeps the event structs in the object's BTF, where the layout test reads them. */
struct event_layouts {
	struct oke_open_event open;
	struct oke_data_event data;
	struct oke_skip skip;
	struct oke_close_event close;
	struct oke_exit_event exit;
	struct oke_layout layout;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_layouts);
} event_structs SEC(".maps");

/* (netns inode << 16 | port) of sockets listening when the agent started, filled by user space */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OKE_MAX_LISTENERS);
	__type(key, __u64);
	__type(value, __u8);
} listen_ports SEC(".maps");

static __always_inline bool traced(__u32 tgid)
{
	if (tgid == cfg.self_tgid)
		return false;
	if (cfg.filter_pids && !bpf_map_lookup_elem(&pid_filter, &tgid))
		return false;
	if (cfg.cgroup_id && bpf_get_current_ancestor_cgroup_id(cfg.cgroup_level) != cfg.cgroup_id)
		return false;
	return true;
}

static __always_inline __u64 fd_key(__u32 tgid, int fd)
{
	return ((__u64)tgid << 32) | (__u32)fd;
}

/* fd now names another file (a new socket, a connect() or accept()): a verdict cached for its number no
 * longer holds. */
static __noinline void forget_verdict(__u32 tgid, int fd)
{
	__u64 key = fd_key(tgid, fd);
	bpf_map_delete_elem(&fd_verdicts, &key);
}

/* task -> files -> fdt -> fd[fd] -> file; a TCP socket's struct sock, or NULL. */
static __noinline struct sock *tcp_sock_of_fd(int fd, __u64 *ino, bool *is_socket)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *file = NULL;
	*is_socket = false;
	if (!fdt || fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return NULL;
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	if ((BPF_CORE_READ(inode, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	*is_socket = true;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return NULL;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return NULL;
	if (BPF_CORE_READ(sock, type) != SOCK_STREAM || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return NULL;
	*ino = BPF_CORE_READ(inode, i_ino);
	return sk;
}

/* A connection to a forced port (a Kafka client's side); with server_side, also one accepted on it. */
static __always_inline bool port_forced(__u16 lport, __u16 rport)
{
#pragma unroll
	for (int i = 0; i < OKE_MAX_KAFKA_PORTS; i++) {
		__u16 p = cfg.kafka_ports[i];
		if (p && (p == rport || (cfg.server_side && p == lport)))
			return true;
	}
	return false;
}

static __always_inline void sock_ports(struct sock *sk, __u16 *lport, __u16 *rport)
{
	*lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	*rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

/* Connection state for sk, created on first sight. NULL when it must not be traced. */
static __always_inline struct conn *conn_for(__u64 sk_ptr, __u64 ino, __u8 role, __u32 tgid)
{
	struct conn *c = bpf_map_lookup_elem(&conns, &sk_ptr);
	if (c && c->ino == ino)
		return c;
	struct sock *sk = (struct sock *)sk_ptr;
	__u16 lport, rport;
	sock_ports(sk, &lport, &rport);
	if (role == OKE_ROLE_UNKNOWN) {
		/* a connection older than the agent: on a port that was listening then, we are its server */
		__u64 lkey = ((__u64)BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum) << 16) | lport;
		if (bpf_map_lookup_elem(&listen_ports, &lkey))
			role = OKE_ROLE_SERVER;
	}
	bool forced = port_forced(lport, rport);
	if (cfg.ports_only && !forced)
		return NULL;
	__u32 zero = 0;
	__u64 *idp = bpf_map_lookup_elem(&next_conn_id, &zero);
	if (!idp)
		return NULL;
	/* created from a zeroed template: struct conn is too big for the stack */
	bpf_map_update_elem(&conns, &sk_ptr, (void *)&zero_conn, BPF_ANY);
	struct conn *fresh = bpf_map_lookup_elem(&conns, &sk_ptr);
	if (!fresh)
		return NULL;
	fresh->conn_id = __sync_fetch_and_add(idp, 1) + 1;
	fresh->ino = ino;
	fresh->open_ts = bpf_ktime_get_ns();
	fresh->tgid = tgid;
	fresh->role = role;
	if (forced) {
		fresh->verdict = CONN_KAFKA;
		/* from connect()/accept() we are at the start of both streams */
		fresh->dir[0].synced = fresh->dir[1].synced = (role != OKE_ROLE_UNKNOWN);
		if (role == OKE_ROLE_UNKNOWN)
			fresh->dir[0].gap_flags = fresh->dir[1].gap_flags = OKE_GAP_UNSYNCED;
	}
	return fresh;
}

static __noinline bool emit_open(struct conn *c, __u64 sk_ptr)
{
	struct oke_open_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(OKE_CNT_RINGBUF_DROPS, 1);
		return false;
	}
	struct sock *sk = (struct sock *)sk_ptr;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	e->type = OKE_EV_OPEN;
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->role = c->role;
	e->tls = c->tls;
	e->conn_id = c->conn_id;
	e->ts_ns = c->open_ts;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	sock_ports(sk, &e->local_port, &e->remote_port);
	__builtin_memset(e->local_addr, 0, sizeof(e->local_addr));
	__builtin_memset(e->remote_addr, 0, sizeof(e->remote_addr));
	if (e->family == AF_INET) {
		bpf_probe_read_kernel(e->local_addr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_probe_read_kernel(e->remote_addr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_probe_read_kernel(e->local_addr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(e->remote_addr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	/* Wake the reader now (one wake-up per connection): the agent reads the process's identity from
	 * /proc when it sees its first connection, and a short-lived client can be gone within the time a
	 * batched wake-up waits. */
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	count(OKE_CNT_EVENTS, 1);
	/* once per connection, classified or forced by port */
	count(c->tls == OKE_TLS_UNDECODED ? OKE_CNT_TLS_UNDECODED : OKE_CNT_CONN_KAFKA, 1);
	return true;
}

/* ---- first bytes of a syscall, across iovecs, for detection ---- */


/* The first (up to 16) bytes the syscall moved, into sb->peek; how many, or -1. */
static __always_inline int peek_bytes(struct ev_scratch *sb, struct active_op *op, __u32 total)
{
	struct peek *out = &sb->peek;
	__builtin_memset(out->b, 0, 16);
	__u64 want = total < 16 ? total : 16;
	barrier_var(want);
	if (want > 16)
		return -1;
	if (op->kind == OP_BUF) {
		if (bpf_probe_read_user(out->b, want, (void *)op->ptr))
			return -1;
		return want;
	}
	struct iovec *iov = (struct iovec *)op->ptr;
	__u32 iovcnt = op->count;
	if (op->kind == OP_MSG) {
		struct user_msghdr *msg = &sb->u.msg;
		if (bpf_probe_read_user(msg, sizeof(*msg), (void *)op->ptr))
			return -1;
		iov = msg->msg_iov;
		iovcnt = msg->msg_iovlen;
	} else if (op->kind == OP_MMSG) {
		struct mmsghdr *mm = &sb->u.mm;
		if (bpf_probe_read_user(mm, sizeof(*mm), (void *)op->ptr))
			return -1;
		iov = mm->msg_hdr.msg_iov;
		iovcnt = mm->msg_hdr.msg_iovlen;
	}
	__u32 got = 0;
	for (int i = 0; i < 4; i++) {
		if (i >= iovcnt || got >= want)
			break;
		struct iovec *v = &sb->u.v;
		if (bpf_probe_read_user(v, sizeof(*v), &iov[i]))
			return -1;
		__u64 take = v->iov_len < want - got ? v->iov_len : want - got;
		barrier_var(take);
		if (take > 16 || got > 15)
			return -1;
		if (take && bpf_probe_read_user(&out->b[got & 15], take, v->iov_base))
			return -1;
		got += take;
	}
	return got;
}

/* A TLS record of the handshake (22, version 3.x) that carries a ClientHello (1): no Kafka request starts so
 * (its size field would read 369 MB and more). */
static __always_inline bool looks_like_tls_hello(struct peek *p, int n)
{
	return n >= 6 && p->b[0] == 0x16 && p->b[1] == 3 && p->b[2] <= 4 && p->b[5] == 1;
}

static __always_inline bool looks_like_kafka_request(struct peek *p, int n)
{
	if (n < 14)
		return false;
	__s32 size = be32(&p->b[0]);
	__s16 api_key = be16(&p->b[4]);
	__s16 version = be16(&p->b[6]);
	__s32 corr = be32(&p->b[8]);
	__s16 cid_len = be16(&p->b[12]);
	if (size < KAFKA_MIN_REQUEST || size > KAFKA_MAX_FRAME)
		return false;
	if (api_key < 0 || api_key > KAFKA_MAX_API_KEY || version < 0 || version > KAFKA_MAX_VERSION)
		return false;
	if (corr < 0)
		return false;
	if (cid_len < -1 || cid_len > size - KAFKA_MIN_REQUEST)
		return false;
	return true;
}

/* ---- the frame walker: the bytes of one syscall, segment by segment ---- */


/* The callback's context: the pointers stay out of the struct walk_one() may write to, where the
 * verifier would forget that they are pointers. */
struct walk_ctx {
	struct conn *c;
	struct ev_scratch *sb;  /* sb->w is the walk */
};

/* What one walker step works on. */
struct cursor {
	struct walk *w;
	struct conn *c;
	struct dir_state *d;
	struct ev_scratch *sb;
};

/* Make the open event able to take bytes at the current position: contiguous, and room left.
 * Returns the room for copied bytes. */
static __always_inline __u32 ev_ready(struct cursor *k)
{
	struct walk *w = k->w;
	struct ev_scratch *sb = k->sb;
	struct dir_state *d = k->d;
	__u64 at = w->base_offset + w->pos;
	if (sb->ev.type && (sb->wire_end != at || sb->ev.len >= OKE_CHUNK_SIZE))
		ev_flush(sb, d);
	if (!sb->ev.type) {
		__u16 flags = d->synced && d->frame_left == 0 && d->size_have == 0 ? OKE_DATA_FRAME_START : 0;
		ev_begin(sb, k->c, d, w->direction, at, w->ts, flags);
	}
	sb->ev.last_ts_ns = w->ts;
	return OKE_CHUNK_SIZE - sb->ev.len;
}

/* Copy up to n bytes at the current position into the event; how many were copied, 0 on a fault. */
static __always_inline __u32 put_user(struct cursor *k, __u32 n)
{
	struct walk *w = k->w;
	__u32 room = ev_ready(k);
	if (n > room)
		n = room;
	if (ev_put_user(k->sb, w->ptr + w->pos, n)) {
		w->failed = 1;
		return 0;
	}
	k->sb->wire_end += n;
	k->d->frame_copied += n;
	return n;
}

/* Up to 4 bytes already read from the current position go into the event. */
static __always_inline void put_small(struct cursor *k, const __u8 *tmp, __u32 n)
{
	ev_ready(k);
	ev_put_small(k->sb, tmp, n);
	k->sb->wire_end += n;
	k->d->frame_copied += n;
}

/* n bytes at the current position are skipped on purpose. */
static __always_inline void put_skip(struct cursor *k, __u32 n, __u8 reason)
{
	ev_ready(k);
	if (!ev_put_skip(k->sb, n, reason)) {
		ev_flush(k->sb, k->d);
		ev_ready(k);
		ev_put_skip(k->sb, n, reason);
	}
	k->sb->wire_end += n;
	count(OKE_CNT_SKIPPED_BYTES, n);
}

/* n bytes at the current position are lost (not copied, not declared): the event ends before them. */
static __always_inline void put_loss(struct cursor *k, __u32 n, __u8 why)
{
	ev_flush(k->sb, k->d);
	k->d->gap_flags |= why;
	count(OKE_CNT_GAP_BYTES, n);
}

static __always_inline void begin_frame(struct dir_state *d)
{
	d->step = 0;
	d->depth = 0;
	if (d->raw_next) {
		/* a raw SASL token (after SaslHandshake v0): its bytes never leave the kernel */
		d->raw_next = 0;
		d->layout = LAYOUT_NONE;
		d->skip_reason = OKE_SKIP_SASL;
		unit(d, U_SKIP, d->frame_left);
	} else {
		d->layout = LAYOUT_HEAD;
		d->unit = U_NONE;
	}
}

/* The frame ends here: its event goes out, and the digest starts afresh at the next size field. */
static __always_inline void end_frame(struct cursor *k)
{
	struct dir_state *d = k->d;
	ev_flush(k->sb, d);
	d->layout = LAYOUT_NONE;
	d->unit = U_NONE;
	d->step = 0;
	d->depth = 0;
}

static __always_inline long next_segment(struct walk *w)
{
	w->base_offset += w->len;
	w->seg++;
	if (!w->iov || w->seg >= w->iovcnt || w->seg >= OKE_MAX_IOV || w->covered >= w->total) {
		w->done = 1;
		return 1;
	}
	struct iovec v;
	if (bpf_probe_read_user(&v, sizeof(v), (void *)(w->iov + w->seg * sizeof(struct iovec)))) {
		w->failed = 1;
		return 1;
	}
	w->ptr = (__u64)v.iov_base;
	w->len = v.iov_len < w->total - w->covered ? v.iov_len : w->total - w->covered;
	w->covered += w->len;
	w->pos = 0;
	return 0;
}

/* No frame boundaries known: copy up to the budget per syscall, flagged unsynced. */
static __always_inline long unsynced_step(struct cursor *k, __u32 avail)
{
	struct walk *w = k->w;
	__u64 walked = w->base_offset + w->pos - w->start;
	__u32 budget = cfg.frame_budget;
	if (walked >= budget) {
		put_loss(k, avail, OKE_GAP_BUDGET);
		w->pos = w->len;
		return 0;
	}
	__u32 take = avail;
	if (take > budget - walked)
		take = budget - walked;
	__u32 n = put_user(k, take);
	if (!n)
		return 1;
	w->pos += n;
	return 0;
}

/* A frame's size field, possibly split across syscalls. */
static __always_inline long size_step(struct cursor *k, __u32 avail)
{
	struct walk *w = k->w;
	struct dir_state *d = k->d;
	__u32 need = 4 - d->size_have;
	__u32 take = avail < need ? avail : need;
	__u8 tmp[8] = {};
	if (take == 0 || take > 4)
		return 1;
	barrier_var(take);
	if (bpf_probe_read_user(tmp, take & 7, (void *)(w->ptr + w->pos))) {
		w->failed = 1;
		return 1;
	}
	put_small(k, tmp, take);
#pragma unroll
	for (int j = 0; j < 4; j++)
		if (j < take)
			d->size_buf[(d->size_have + j) & 3] = tmp[j];
	w->pos += take;
	d->size_have += take;
	if (d->size_have < 4)
		return 0;
	__s32 size = be32(d->size_buf);
	d->size_have = 0;
	d->frame_copied = 4;
	if (size == 0 && d->raw_next) {
		/* an empty raw SASL token */
		d->raw_next = 0;
		end_frame(k);
		return 0;
	}
	if (size <= 0 || size > KAFKA_MAX_FRAME) {
		/* not a frame: lose sync rather than guess */
		ev_flush(k->sb, d);
		d->synced = 0;
		d->gap_flags |= OKE_GAP_UNSYNCED;
		return 0;
	}
	d->frame_left = size;
	begin_frame(d);
	return 0;
}

/* The frame body: the current unit of the digest, or a plain copy under the budget. */
static __always_inline long body_step(struct cursor *k, __u32 avail)
{
	struct walk *w = k->w;
	struct dir_state *d = k->d;
	__u32 n = avail < d->unit_left ? avail : d->unit_left;
	if (n > d->frame_left)
		n = d->frame_left;
	bool unit_done = false;
	switch (d->unit) {
	case U_BODY: {
		__u32 budget = cfg.frame_budget;
		__u32 budget_left = budget > d->frame_copied ? budget - d->frame_copied : 0;
		if (budget_left) {
			n = put_user(k, n < budget_left ? n : budget_left);
			if (!n)
				return 1;
		} else {
			put_loss(k, n, OKE_GAP_BUDGET);
		}
		break;
	}
	case U_COPY:
		n = put_user(k, n);
		if (!n)
			return 1;
		break;
	case U_SKIP:
		put_skip(k, n, d->skip_reason);
		break;
	case U_FIELD: {
		__u8 tmp[8] = {};
		if (n > 4)
			n = 4;
		if (n == 0)
			return 1;
		barrier_var(n);
		if (bpf_probe_read_user(tmp, n & 7, (void *)(w->ptr + w->pos))) {
			w->failed = 1;
			return 1;
		}
		put_small(k, tmp, n);
		__u32 acc = d->acc;
#pragma unroll
		for (int j = 0; j < 4; j++)
			if (j < n)
				acc = (acc << 8) | tmp[j];
		d->acc = acc;
		break;
	}
	case U_VARINT: {
		__u8 b;
		if (bpf_probe_read_user(&b, 1, (void *)(w->ptr + w->pos))) {
			w->failed = 1;
			return 1;
		}
		put_small(k, &b, 1);
		n = 1;
		d->acc |= (__u32)(b & 0x7f) << ((7 * d->have) & 31);
		d->have++;
		unit_done = !(b & 0x80) || d->have >= 5;
		break;
	}
	default:
		return 1;
	}
	w->pos += n;
	d->frame_left -= n;
	if (d->unit != U_VARINT) {
		d->unit_left -= n;
		unit_done = d->unit_left == 0;
	}
	if (unit_done) {
		d->unit = U_NONE;
		if (d->frame_left == 0 && d->layout == LAYOUT_HEAD) {
			/* a frame that ends with its head (a bare correlation id) still matches its
			 * request: the head is digested first, and the frame ends at the next step */
			w->end_frame = 1;
			return WALK_DIGEST;
		}
	}
	if (d->frame_left == 0)
		end_frame(k);
	return 0;
}

/* One step of the walk: WALK_GO, WALK_STOP, or WALK_DIGEST when the digest must choose the next
 * unit. A global function: the verifier checks it once, for any state, instead of following the
 * walk's states through bpf_loop (which never converged). It never calls digest_next itself, so
 * that the two frames sit side by side under walk_step rather than one on top of the other. */
__noinline int walk_one(struct walk *w, struct conn *c, struct ev_scratch *sb)
{
	if (!w || !c || !sb)
		return WALK_STOP;
	if (cfg.refuse_walker) {
		/* a read above the frame, which every verifier refuses: only when asked to, so that the
		 * fallback is tested on a refusal of the kernel's own (the branch is dead otherwise) */
		asm volatile("r0 = *(u64 *)(r10 + 8)" ::: "r0");
	}
	struct cursor k = { .w = w, .c = c, .d = &c->dir[w->direction & 1], .sb = sb };
	struct dir_state *d = k.d;
	if (w->end_frame) {
		w->end_frame = 0;
		end_frame(&k);
		return WALK_GO;
	}
	if (w->pos >= w->len)
		return next_segment(w);
	__u32 avail = w->len - w->pos;
	if (!d->synced)
		return unsynced_step(&k, avail);
	if (d->frame_left == 0)
		return size_step(&k, avail);
	if (d->unit == U_NONE)
		return WALK_DIGEST;
	return body_step(&k, avail);
}

/* bpf_loop's callback. Its return must be 0 or 1 in a form every verifier proves (newer kernels
 * check the range): a mask, which no compiler folds away; the headroom test reads it back. */
static long walk_step(__u32 i, void *ctx)
{
	struct walk_ctx *x = ctx;
	struct ev_scratch *sb = x->sb;
	struct conn *c = x->c;
	if (!sb || !c)
		return 1;
	long r = walk_one(&sb->w, c, sb);
	if (r & WALK_DIGEST)
		digest_next(c, sb->w.direction, sb->w.is_request);
	barrier_var(r);
	return r & WALK_STOP;
}

/* requests travel from client to server */
static __always_inline __u8 request_dir(struct conn *c)
{
	return c->role == OKE_ROLE_SERVER ? OKE_DIR_RECV : OKE_DIR_SEND;
}

/* Walk the buffers of one syscall that moved `total` bytes; the stream offset always advances
 * by exactly `total`, whatever the walk managed to copy. */
static __noinline void process_op(struct conn *c, struct active_op *op, __u32 total, __u64 ts,
				  struct ev_scratch *sb)
{
	if (!c || !op)
		return;
	__u8 dir = op->direction & 1;
	struct dir_state *d = &c->dir[dir];
	__u64 start = d->offset;
	if (!sb) {
		d->offset = start + total;
		d->synced = 0;
		d->frame_left = 0;
		d->size_have = 0;
		d->gap_flags |= OKE_GAP_USER_COPY;
		return;
	}
	pending_take(sb, c, dir);
	struct walk_ctx x = { .c = c, .sb = sb };
	struct walk *w = &sb->w;
	__builtin_memset(w, 0, sizeof(*w));
	w->base_offset = start;
	w->start = start;
	w->ts = ts;
	w->total = total;
	w->direction = dir;
	w->is_request = dir == request_dir(c);
	if (c->lead4) {
		/* the frame's size field came alone before the connection was classified: from kernel memory */
		c->lead4 = 0;
		c->pending4_valid = 0;
		ev_flush(sb, d);
		ev_begin(sb, c, d, dir, start - 4, ts, OKE_DATA_FRAME_START);
		ev_put_small(sb, c->pending4, 4);
		sb->wire_end = start;
	}
	if (op->kind == OP_BUF) {
		w->ptr = op->ptr;
		w->len = total;
		w->covered = total;
	} else {
		w->iov = op->ptr;
		w->iovcnt = op->count;
		if (op->kind == OP_MSG) {
			struct user_msghdr *msg = &sb->u.msg;
			if (bpf_probe_read_user(msg, sizeof(*msg), (void *)op->ptr) == 0) {
				w->iov = (__u64)msg->msg_iov;
				w->iovcnt = msg->msg_iovlen;
			} else {
				w->iovcnt = 0;
			}
		}
		struct iovec *v = &sb->u.v;
		if (w->iovcnt && bpf_probe_read_user(v, sizeof(*v), (void *)w->iov) == 0) {
			w->ptr = (__u64)v->iov_base;
			w->len = v->iov_len < total ? v->iov_len : total;
			w->covered = w->len;
		} else {
			w->failed = 1;
		}
	}
	if (!w->failed)
		bpf_loop(WALK_MAX_STEPS, walk_step, &x, 0);
	if (!(w->done && w->covered >= total)) {
		/* unreadable memory, too many iovecs or the step bound: the rest is a gap of exact length
		 * and frame boundaries are unknown until resynchronised */
		__u64 walked = w->base_offset + w->pos - start;
		ev_flush(sb, d);
		count(OKE_CNT_GAP_BYTES, total > walked ? total - walked : 0);
		d->synced = 0;
		d->frame_left = 0;
		d->size_have = 0;
		d->layout = LAYOUT_NONE;
		d->unit = U_NONE;
		d->gap_flags |= w->failed ? OKE_GAP_USER_COPY : (w->done ? OKE_GAP_IOVEC : OKE_GAP_LOOP);
	}
	d->offset = start + total;
	if (sb->ev.type) {
		/* a frame under way stays open for the next syscall; anything else goes out now */
		bool in_frame = d->synced && (d->frame_left || d->size_have);
		if (!in_frame || !pending_put(sb, c, dir))
			ev_flush(sb, d);
	}
}

#include "heads.bpf.h"

/* Responses come in request order: the answer to the request in `p` is a sync point for them. */
static __always_inline void arm_response_resync(struct conn *c, struct peek *p)
{
	c->resync_corr = be32(&p->b[8]);
	c->resync_armed = 1;
}

/* A request whose size field came alone in the previous read: judge the size and this read's
 * first bytes together. */
static __always_inline bool classify_after_lead4(struct conn *c, struct ev_scratch *sb, int n, __u8 req_dir)
{
	struct peek *q = &sb->lead;
	__builtin_memcpy(q->b, c->pending4, 4);
	__builtin_memcpy(&q->b[4], sb->peek.b, 12);
	if (n < 10 || !looks_like_kafka_request(q, n + 4))
		return false;
	struct dir_state *d = &c->dir[req_dir & 1];
	d->frame_left = be32(c->pending4);  /* this read continues the frame after its size field */
	d->frame_copied = 4;
	d->size_have = 0;
	begin_frame(d);
	c->lead4 = 1;
	return true;
}

/* A connection on a port forced to Kafka that begins with a TLS handshake: reported, its bytes never walked. */
static __noinline void forced_tls_hello(struct conn *c, struct ev_scratch *sb, struct active_op *op, __u32 total)
{
	if (c->tls || (op->direction & 1) != request_dir(c) || c->dir[op->direction & 1].offset)
		return;
	if (looks_like_tls_hello(&sb->peek, peek_bytes(sb, op, total)))
		c->tls = OKE_TLS_UNDECODED;
}

/* Decide whether an unclassified connection speaks Kafka, from this syscall's first bytes. */
static __noinline void classify(struct conn *c, struct ev_scratch *sb, struct active_op *op, __u32 total)
{
	__u8 req_dir = request_dir(c);
	if (c->role == OKE_ROLE_SERVER && !cfg.server_side) {
		c->verdict = CONN_OTHER;
		return;
	}
	if ((op->direction & 1) != req_dir) {
		if (c->role != OKE_ROLE_UNKNOWN) {
			/* the peer spoke first: not a Kafka client exchange */
			c->verdict = CONN_OTHER;
		}
		return;
	}
	struct peek *p = &sb->peek;
	int n = peek_bytes(sb, op, total);
	if (!op->tls && c->dir[req_dir].offset == 0 && looks_like_tls_hello(p, n)) {
		/* a TLS client starts its handshake: until a TLS probe hands its plaintext over, the connection
		 * is reported (its process, its peer), never walked */
		c->verdict = CONN_KAFKA;
		c->tls = OKE_TLS_UNDECODED;
		return;
	}
	if (c->role != OKE_ROLE_UNKNOWN && c->pending4_valid) {
		c->verdict = classify_after_lead4(c, sb, n, req_dir) ? CONN_KAFKA : CONN_OTHER;
		if (c->verdict == CONN_KAFKA) {
			c->dir[req_dir].synced = 1;
			c->dir[req_dir ^ 1].synced = 1;
		}
		return;
	}
	if (c->role != OKE_ROLE_UNKNOWN && n == 4 && total == 4) {
		/* a size field read alone (a Java broker): decide with the next read */
		__s32 size = be32(&p->b[0]);
		if (size >= KAFKA_MIN_REQUEST && size <= KAFKA_MAX_FRAME) {
			__builtin_memcpy(c->pending4, p->b, 4);
			c->pending4_valid = 1;
			return;
		}
	}
	if (n > 0 && looks_like_kafka_request(p, n)) {
		c->verdict = CONN_KAFKA;
		c->dir[req_dir].synced = 1;
		if (c->role != OKE_ROLE_UNKNOWN) {
			c->dir[req_dir ^ 1].synced = 1;
		} else {
			/* joined mid-stream: requests are synced from here; the response to this request
			 * (matched by its correlation id) is where responses synchronise */
			c->dir[req_dir].gap_flags = OKE_GAP_UNSYNCED;
			c->dir[req_dir ^ 1].gap_flags = OKE_GAP_UNSYNCED;
			arm_response_resync(c, p);
		}
		return;
	}
	if (c->role != OKE_ROLE_UNKNOWN || ++c->attempts >= OKE_DETECT_ATTEMPTS)
		c->verdict = CONN_OTHER;
}

/* At the start of a syscall on an unsynced direction: does a frame begin here? */
/* heads: the heads program, which copies nothing of an unsynced direction (the walker copies it raw, so user
 * space finds the frame there): a size field read alone that resynchronises is emitted from pending4 (lead4). */
static __noinline void try_resync(struct conn *c, struct ev_scratch *sb, struct active_op *op, __u32 total,
				  const bool heads)
{
	__u8 dir = op->direction & 1;
	struct dir_state *d = &c->dir[dir];
	__u8 req_dir = request_dir(c);
	struct peek *p = &sb->peek;
	int n = peek_bytes(sb, op, total);
	if (n <= 0)
		return;
	bool found = false;
	if (dir == req_dir) {
		if (looks_like_kafka_request(p, n)) {
			found = true;
			arm_response_resync(c, p);
			c->rearm = 0;
		}
	} else if (c->resync_armed) {
		if (n >= 8 && be32(&p->b[4]) == c->resync_corr) {
			__s32 size = be32(&p->b[0]);
			found = size >= 4 && size <= KAFKA_MAX_FRAME;
		} else if (c->pending4_valid && n >= 4 && be32(&p->b[0]) == c->resync_corr) {
			/* size field came alone in the previous read (the Java client reads it so) */
			__s32 size = be32(c->pending4);
			if (size >= 4 && size <= KAFKA_MAX_FRAME) {
				d->synced = 1;
				d->frame_left = size;
				d->frame_copied = 4;
				d->size_have = 0;
				c->resync_armed = 0;
				c->pending4_valid = 0;
				c->lead4 = heads;
				return;
			}
		}
		if (heads && c->pending4_valid)
			count(OKE_CNT_GAP_BYTES, 4);  /* the size field held back was not the awaited response's */
		c->pending4_valid = total == 4;
		if (total == 4) {
			c->pending4[0] = p->b[0];
			c->pending4[1] = p->b[1];
			c->pending4[2] = p->b[2];
			c->pending4[3] = p->b[3];
		}
		if (found)
			c->resync_armed = 0;
	}
	if (found) {
		d->synced = 1;
		d->frame_left = 0;
		d->size_have = 0;
	}
}

/* The socket of a data syscall that moved `ret` bytes, unless its fd is known not to be Kafka. */
static __always_inline bool data_op(__u32 tgid, int fd, __u64 ptr, __u32 count_arg, __u8 kind, __u8 direction,
				    struct active_op *op)
{
	__u64 key = fd_key(tgid, fd);
	if (bpf_map_lookup_elem(&fd_verdicts, &key))
		return false;
	count(OKE_CNT_TRACEPOINT_HITS, 1);
	__u64 ino = 0;
	bool is_socket;
	struct sock *sk = tcp_sock_of_fd(fd, &ino, &is_socket);
	if (!sk) {
		__u8 v = is_socket ? FD_NOT_KAFKA : FD_NOT_SOCKET;
		bpf_map_update_elem(&fd_verdicts, &key, &v, BPF_ANY);
		return false;
	}
	op->sk = (__u64)sk;
	op->ino = ino;
	op->ptr = ptr;
	op->count = count_arg;
	op->kind = kind;
	op->direction = direction;
	op->fd = fd;
	return true;
}

/* sendfile() moved n bytes from a file straight to the socket: none were in user memory, so they
 * are a gap of exact length; a broker sends Fetch records so, inside a frame whose size it wrote
 * first, so frame tracking goes on across them. */
static __always_inline void skip_sendfile(struct conn *c, __u32 n)
{
	struct dir_state *d = &c->dir[OKE_DIR_SEND];
	d->offset += n;
	if (c->verdict != CONN_KAFKA || !c->open_sent)
		return;
	count(OKE_CNT_GAP_BYTES, n);
	d->gap_flags |= OKE_GAP_SENDFILE;
	if (d->synced && d->size_have == 0 && d->frame_left >= n) {
		d->frame_left -= n;
		d->frame_copied += n;
		/* the digest cannot follow bytes it never saw: the rest of the frame is copied */
		d->layout = LAYOUT_NONE;
		d->unit = d->frame_left ? U_BODY : U_NONE;
		d->unit_left = d->frame_left;
	} else {
		d->synced = 0;
		d->frame_left = 0;
		d->size_have = 0;
	}
}

#define OKE_SOCK_DONE 1     /* include/net/sock.h, enum sock_flags: the peer's FIN came (tcp_fin), in every state
                             * after it, CLOSE too (tcp_done sets sk_shutdown whole, SOCK_DONE never) */

static __always_inline bool peer_fin_came(__u64 sk)
{
	return BPF_CORE_READ((struct sock *)sk, __sk_common.skc_flags) >> OKE_SOCK_DONE & 1;
}

/* Where this direction of the TCP stream is now, mod 2^32: the next byte the user will read (receive) or
 * the next byte it queued (send; a send returns only before our FIN, which close or shutdown queue). A read
 * that reached the peer's FIN counted it in copied_seq (it then equals rcv_nxt, which counts the FIN too):
 * one sequence number that is no byte. */
static __always_inline __u32 tcp_seq_now(__u64 sk, __u8 dir)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	if ((dir & 1) != OKE_DIR_RECV)
		return BPF_CORE_READ(tp, write_seq);
	__u32 seq = BPF_CORE_READ(tp, copied_seq);
	if (peer_fin_came(sk) && seq == BPF_CORE_READ(tp, rcv_nxt))
		seq--;
	return seq;
}

/* Offset 0 of the direction's stream is at TCP sequence number `seq` less `d->offset`. */
static __always_inline void learn_seq(struct dir_state *d, __u32 seq)
{
	d->seq_base = seq - (__u32)d->offset;
	d->seq_known = 1;
}

/* Whether `seq` is the first byte this side ever sent: snd_una less the bytes acknowledged is where its
 * stream began (its SYN counted in bytes_acked or not, by role and kernel: within one). */
static __always_inline bool at_send_start(__u64 sk, __u32 seq)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	return seq - (BPF_CORE_READ(tp, snd_una) - (__u32)BPF_CORE_READ(tp, bytes_acked)) <= 1;
}

/* A connection first seen at a send of its stream's first byte, before anything was read of it: its connect()
 * run was skipped (a preempted run), or it had not spoken yet when the agent started. Whoever speaks first in
 * Kafka is the client, and both streams start here as after connect(): the role is told, not left unknown, and
 * the stream is not joined mid-way. Its own frame: the socket reads stay off the syscall program's. */
static __noinline void adopt_client_start(struct conn *c, struct active_op *op, __u32 total)
{
	if (!c || !op || c->role != OKE_ROLE_UNKNOWN || (op->direction & 1) != OKE_DIR_SEND || op->tls ||
	    op->kind == OP_MMSG || c->dir[OKE_DIR_SEND].offset || c->dir[OKE_DIR_RECV].offset ||
	    !at_send_start(op->sk, tcp_seq_now(op->sk, OKE_DIR_SEND) - total))
		return;
	c->role = OKE_ROLE_CLIENT;
	if (c->verdict == CONN_KAFKA) {  /* forced by its port: classified already, as a joined stream */
		c->dir[0].synced = c->dir[1].synced = 1;
		c->dir[0].gap_flags = c->dir[1].gap_flags = 0;
	}
}

/* Offset 0 of the receive stream is the first byte the peer ever sent: rcv_nxt less the bytes received
 * (both count the peer's FIN alike). A connection whose connect() the program never ran for (a skipped
 * run) is first seen at its first request, and a run skipped since may have read the answer to it
 * already: learnt at the socket's read position, that answer would vanish without a word. */
static __always_inline void learn_recv_start(struct dir_state *d, __u64 sk)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	d->seq_base = BPF_CORE_READ(tp, rcv_nxt) - (__u32)BPF_CORE_READ(tp, bytes_received);
	d->seq_known = 1;
}

/* A syscall of direction `dir` moved n bytes of a Kafka connection: the socket's sequence number says where
 * in the stream they began. Bytes between the direction's offset and there were moved by syscalls this
 * program never ran for: the kernel skips a run while the program is already running on that CPU (a
 * run preempted on a preemptible kernel, 7.x: recursion_misses). They become a loss of exact length, and
 * the frame boundaries are unknown after it. Ahead of there, two syscalls of the direction ran at once
 * (their bytes' order is unknown) or one only peeked: the base is learnt again. */
static __always_inline void missed_runs_before(struct conn *c, __u8 dir, __s32 behind);

static __noinline void note_unseen(struct conn *c, __u64 sk, __u8 dir, __u32 n)
{
	if (!c)
		return;
	struct dir_state *d = &c->dir[dir & 1];
	__u32 first = tcp_seq_now(sk, dir) - n;  /* the sequence number of the syscall's first byte */
	struct dir_state *other = &c->dir[(dir & 1) ^ 1];
	if (!other->seq_known) {  /* the connection is established: both sequence numbers hold */
		if ((dir & 1) == OKE_DIR_SEND && !d->seq_known && at_send_start(sk, first - (__u32)d->offset))
			learn_recv_start(other, sk);
		else
			learn_seq(other, tcp_seq_now(sk, dir ^ 1));
	}
	if (!d->seq_known) {
		learn_seq(d, first);
		return;
	}
	__s32 behind = (__s32)(first - d->seq_base - (__u32)d->offset);
	if (behind <= 0) {
		if (behind < 0)
			learn_seq(d, first);
		return;
	}
	missed_runs_before(c, dir, behind);
}

/* `behind` bytes of direction `dir`, moved by syscalls the program never ran for, come before the next. */
static __always_inline void missed_runs_before(struct conn *c, __u8 dir, __s32 behind)
{
	struct dir_state *d = &c->dir[dir & 1];
	pending_flush(c, dir);  /* a frame under way ends before the loss */
	d->offset += behind;
	d->gap_flags |= OKE_GAP_MISSED_RUN;
	count(OKE_CNT_GAP_BYTES, behind);
	d->synced = 0;
	d->frame_left = 0;
	d->size_have = 0;
	d->layout = LAYOUT_NONE;
	d->unit = U_NONE;
	d->unit_left = 0;
	d->depth = 0;
	d->step = HEADS_FIXED_PART;  /* 0: the walker's step too */
	if ((dir & 1) != request_dir(c)) {
		c->resync_armed = 0;
		c->rearm = 1;
	}
}

/* The connection is closed: the syscalls after its last one seen may have been runs the kernel skipped
 * too, with no syscall after them to tell. The socket says how far each direction went. Our FIN, once
 * close() or shutdown() queued it, is one sequence number past the last byte in write_seq: in FIN_WAIT1,
 * FIN_WAIT2, CLOSING and LAST_ACK, and in CLOSE after the peer's FIN (both FINs: the socket went on to
 * TIME_WAIT, or our FIN was acknowledged in LAST_ACK). A socket CLOSE without the peer's FIN was reset, and
 * what it queued says nothing that can be trusted. Runs at close(), not when a process exits without it. */
static __noinline void note_tail(struct conn *c, __u64 sk)
{
	if (!c || c->tls != OKE_TLS_NONE)
		return;  /* a TLS library's plaintext has no place in the TCP sequence */
	struct sock *s = (struct sock *)sk;
	__u8 state = BPF_CORE_READ(s, __sk_common.skc_state);
	if (state == TCP_LISTEN || state == TCP_SYN_SENT || state == TCP_SYN_RECV ||
	    (state == TCP_CLOSE && !peer_fin_came(sk)))
		return;
	bool our_fin = state == TCP_FIN_WAIT1 || state == TCP_FIN_WAIT2 || state == TCP_CLOSING ||
		       state == TCP_LAST_ACK || state == TCP_CLOSE;
	__u32 seq[2];  /* read once each, before the loop: inside it, the frame grew by the reads' spills */
	seq[OKE_DIR_SEND] = tcp_seq_now(sk, OKE_DIR_SEND) - our_fin;
	seq[OKE_DIR_RECV] = tcp_seq_now(sk, OKE_DIR_RECV);
	for (__u8 dir = 0; dir < 2; dir++) {
		struct dir_state *d = &c->dir[dir];
		if (!d->seq_known)
			continue;
		__s32 behind = (__s32)(seq[dir] - d->seq_base - (__u32)d->offset);
		if (behind > 0)
			missed_runs_before(c, dir, behind);
	}
}

/* A data syscall of a traced socket returned `ret`. */
static __always_inline void on_data_exit(__u64 pid_tgid, struct active_op *op, long ret, struct ev_scratch *sb,
					 const bool heads)
{
	if (ret <= 0 || !op)
		return;
	__u64 ts = bpf_ktime_get_ns();
	__u32 tgid = pid_tgid >> 32;
	struct conn *c = conn_for(op->sk, op->ino, OKE_ROLE_UNKNOWN, tgid);
	if (!c)
		return;
	if (c->tls != op->tls && c->tls != OKE_TLS_UNDECODED)
		return;  /* the ciphertext of a connection whose plaintext a TLS probe hands over */
	if (op->kind == OP_SENDFILE) {
		if (c->verdict == CONN_KAFKA && c->open_sent)
			note_unseen(c, op->sk, OKE_DIR_SEND, ret);
		skip_sendfile(c, ret);
		return;
	}
	if (!c->open_sent && c->role == OKE_ROLE_UNKNOWN)
		adopt_client_start(c, op, ret);  /* classify then judges it as after connect() */
	if (c->verdict == CONN_UNKNOWN) {
		if (sb)
			classify(c, sb, op, ret);
		if (c->verdict == CONN_OTHER) {
			count(OKE_CNT_CONN_OTHER, 1);
			__u64 key = fd_key(tgid, op->fd);
			__u8 v = op->tls ? FD_TLS_OTHER : FD_NOT_KAFKA;
			bpf_map_update_elem(&fd_verdicts, &key, &v, BPF_ANY);
			return;
		}
		if (c->verdict == CONN_UNKNOWN) {
			c->dir[op->direction & 1].offset += ret;  /* bytes before detection: not captured */
			return;
		}
	}
	if (c->verdict != CONN_KAFKA)
		return;
	if (!c->open_sent && !op->tls && sb)
		forced_tls_hello(c, sb, op, ret);
	if (!c->open_sent) {
		if (!emit_open(c, op->sk)) {
			c->dir[op->direction & 1].offset += ret;
			c->dir[op->direction & 1].gap_flags |= OKE_GAP_RINGBUF;
			return;
		}
		c->open_sent = 1;
		__u64 key = fd_key(tgid, op->fd);
		bpf_map_update_elem(&kafka_fds, &key, &op->sk, BPF_ANY);
		__u8 one = 1;  /* its exit will end its connections (classified or forced by port) */
		bpf_map_update_elem(&kafka_tgids, &tgid, &one, BPF_ANY);
	}
	if (c->tls == OKE_TLS_UNDECODED) {
		/* reported once; its ciphertext costs what a socket that is not Kafka costs from here on */
		__u64 key = fd_key(tgid, op->fd);
		__u8 v = FD_TLS;
		bpf_map_update_elem(&fd_verdicts, &key, &v, BPF_ANY);
		return;
	}
	count(OKE_CNT_SYSCALLS, 1);
	/* ret counts messages for mmsg: the next syscall's check covers their bytes; a TLS library's plaintext
	 * has no place in the TCP sequence */
	if (op->kind != OP_MMSG && !op->tls)
		note_unseen(c, op->sk, op->direction, ret);
	struct dir_state *d = &c->dir[op->direction & 1];
	bool rearm = c->rearm && (op->direction & 1) == request_dir(c) && d->frame_left == 0 && d->size_have == 0;
	if ((!d->synced || rearm) && op->kind != OP_MMSG && sb)
		try_resync(c, sb, op, ret, heads);
	if (op->kind == OP_MMSG) {
		/* ret counts messages; each message's msg_len bytes are walked like sendmsg/recvmsg */
		struct mmsghdr *vec = (struct mmsghdr *)op->ptr;
		op->kind = OP_MSG;  /* op is one message of the vector from here on */
		for (int i = 0; i < OKE_MAX_MMSG; i++) {
			if (i >= ret)
				break;
			op->ptr = (__u64)&vec[i].msg_hdr;
			__u32 len = 0;
			if (bpf_probe_read_user(&len, sizeof(len), &vec[i].msg_len))
				break;
			if (heads)
				heads_op(c, op, len, ts, sb);
			else
				process_op(c, op, len, ts, sb);
		}
		return;
	}
	if (heads)
		heads_op(c, op, ret, ts, sb);
	else
		process_op(c, op, ret, ts, sb);
}

/* ---- the raw syscall exit tracepoint: one program for every syscall ---- */

/* connect()/accept() tell the role, and that both streams start here */
static __noinline void new_conn(__u32 tgid, int fd, __u8 role)
{
	forget_verdict(tgid, fd);
	__u64 ino = 0;
	bool is_socket;
	struct sock *sk = tcp_sock_of_fd(fd, &ino, &is_socket);
	if (!sk)
		return;
	__u64 sk_ptr = (__u64)sk;
	struct conn *old = bpf_map_lookup_elem(&conns, &sk_ptr);
	if (old) {  /* a new connection on a reused struct sock */
		pending_flush(old, OKE_DIR_SEND);
		pending_flush(old, OKE_DIR_RECV);
		bpf_map_delete_elem(&conns, &sk_ptr);
	}
	struct conn *c = conn_for(sk_ptr, ino, role, tgid);
	if (!c)
		return;
	/* both streams start here: a first syscall the program never runs for is a loss it can tell */
	learn_seq(&c->dir[OKE_DIR_SEND], tcp_seq_now(sk_ptr, OKE_DIR_SEND));
	if (BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_ESTABLISHED)  /* else the peer's is not known yet */
		learn_seq(&c->dir[OKE_DIR_RECV], tcp_seq_now(sk_ptr, OKE_DIR_RECV));
}

/* fd was closed: its cached verdict no longer holds, and a Kafka connection on it ends. */
/* The connection ends: what it left unfinished, then its close event. */
static __noinline void emit_close(struct conn *c)
{
	pending_flush(c, OKE_DIR_SEND);
	pending_flush(c, OKE_DIR_RECV);
	struct oke_close_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(OKE_CNT_RINGBUF_DROPS, 1);
		return;
	}
	e->type = OKE_EV_CLOSE;
	e->pid = c->tgid;
	e->conn_id = c->conn_id;
	e->ts_ns = bpf_ktime_get_ns();
	e->send_bytes = c->dir[OKE_DIR_SEND].offset;
	e->recv_bytes = c->dir[OKE_DIR_RECV].offset;
	e->gap_flags[OKE_DIR_SEND] = c->dir[OKE_DIR_SEND].gap_flags;
	e->gap_flags[OKE_DIR_RECV] = c->dir[OKE_DIR_RECV].gap_flags;
	bpf_ringbuf_submit(e, ringbuf_flags());
	count(OKE_CNT_EVENTS, 1);
}

static __noinline void on_close(__u32 tgid, int fd)
{
	__u64 key = fd_key(tgid, fd);
	__u8 *verdict = bpf_map_lookup_elem(&fd_verdicts, &key);
	if (verdict) {
		bool tls = *verdict == FD_TLS;
		bpf_map_delete_elem(&fd_verdicts, &key);
		if (!tls)  /* a TLS connection's plaintext may be a Kafka connection */
			return;
	}
	__u64 *skp = bpf_map_lookup_elem(&kafka_fds, &key);
	if (!skp)
		return;
	__u64 sk_ptr = *skp;
	/* At close()'s exit the fd is free already: another thread of the process may have opened a new
	 * Kafka connection on the same number since, and recorded it here. The fd table still holding that
	 * socket means it is not the one closed (librdkafka closing one connection while connecting the
	 * next: the new connection was cut off after its first request). */
	__u64 ino = 0;
	bool is_socket;
	if ((__u64)tcp_sock_of_fd(fd, &ino, &is_socket) == sk_ptr)
		return;
	bpf_map_delete_elem(&kafka_fds, &key);
	struct conn *c = bpf_map_lookup_elem(&conns, &sk_ptr);
	if (!c || c->tgid != tgid)
		return;
	if (c->verdict == CONN_KAFKA && c->open_sent) {
		note_tail(c, sk_ptr);
		emit_close(c);
	}
	bpf_map_delete_elem(&conns, &sk_ptr);
}

#include "tls.bpf.h"
#if __has_include("gotls.bpf.h")
#include "gotls.bpf.h"  /* Go crypto/tls */
#endif


static __noinline void exec_mapped(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!traced(tgid))
		return;
	struct oke_exit_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(OKE_CNT_RINGBUF_DROPS, 1);
		return;
	}
	e->type = OKE_EV_EXEC_MAP;
	e->pid = tgid;
	e->ts_ns = bpf_ktime_get_ns();
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);  /* the attach races the process's first TLS call */
	count(OKE_CNT_EVENTS, 1);
}

/* A new socket took the number fd: the close() of the file that had it may be a run the kernel skipped, and
 * connect() another, and then the whole connection would pass as that file. */
static __noinline void forget_new_socket(int fd)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (traced(tgid))
		forget_verdict(tgid, fd);
}

/* heads: the fallback program's data path (bpf/heads.bpf.h) instead of the frame walker's */
static __always_inline int on_sys_exit(struct pt_regs *regs, long ret, const bool heads)
{
	__u8 kind, direction;
	switch (OKE_SYSCALL_NR(regs)) {
	case OKE_NR_write:    kind = OP_BUF;  direction = OKE_DIR_SEND; break;
	case OKE_NR_read:     kind = OP_BUF;  direction = OKE_DIR_RECV; break;
	case OKE_NR_sendto:   kind = OP_BUF;  direction = OKE_DIR_SEND; break;
	case OKE_NR_recvfrom: kind = OP_BUF;  direction = OKE_DIR_RECV; break;
	case OKE_NR_writev:   kind = OP_IOV;  direction = OKE_DIR_SEND; break;
	case OKE_NR_readv:    kind = OP_IOV;  direction = OKE_DIR_RECV; break;
	case OKE_NR_sendmsg:  kind = OP_MSG;  direction = OKE_DIR_SEND; break;
	case OKE_NR_recvmsg:  kind = OP_MSG;  direction = OKE_DIR_RECV; break;
	case OKE_NR_sendmmsg: kind = OP_MMSG; direction = OKE_DIR_SEND; break;
	case OKE_NR_recvmmsg: kind = OP_MMSG; direction = OKE_DIR_RECV; break;
	case OKE_NR_sendfile: kind = OP_SENDFILE; direction = OKE_DIR_SEND; break;
	case OKE_NR_connect: kind = OP_CONNECT; direction = 0; break;
	case OKE_NR_accept:
	case OKE_NR_accept4: kind = OP_ACCEPT; direction = 0; break;
	case OKE_NR_socket:
		if (ret >= 0)
			forget_new_socket(ret);
		return 0;
	case OKE_NR_mmap:
		/* a file mapped executable (a library loaded): the agent looks for TLS libraries in it at once,
		 * before the process's first TLS connection if it can */
		if (ret > 0 && (OKE_SYSCALL_ARG3(regs) & PROT_EXEC) && (int)OKE_SYSCALL_ARG5(regs) >= 0)
			exec_mapped();
		return 0;
	case OKE_NR_close:
	case OKE_NR_dup2:
	case OKE_NR_dup3: {
		if (ret < 0)
			return 0;
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		if (!traced(tgid))
			return 0;
		if (OKE_SYSCALL_NR(regs) == OKE_NR_close) {
			on_close(tgid, OKE_SYSCALL_ARG1(regs));
		} else {
			/* newfd now names another file: a verdict cached for it no longer holds (not forget_verdict:
			 * a call here costs the syscall program 8 B of frame, 32 B of every chain after rounding) */
			int newfd = OKE_SYSCALL_ARG2(regs);
			__u64 key = fd_key(tgid, newfd);
			bpf_map_delete_elem(&fd_verdicts, &key);
		}
		return 0;
	}
	default:
		return 0;
	}
	if (kind == OP_CONNECT ? (ret != 0 && ret != -EINPROGRESS) : ret <= 0)
		return 0;  /* nothing moved (EAGAIN...), or no connection: costs nothing more */
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	if (!traced(tgid))
		return 0;
	if (kind == OP_CONNECT) {
		new_conn(tgid, OKE_SYSCALL_ARG1(regs), OKE_ROLE_CLIENT);
		return 0;
	}
	if (kind == OP_ACCEPT) {
		new_conn(tgid, ret, OKE_ROLE_SERVER);
		return 0;
	}
	struct ev_scratch *sb = scratch_get();
	if (!sb)
		return 0;  /* never: the map has an entry for every possible CPU */
	if (tls_learning)  /* a TLS call under way whose socket is not known yet: this may be its syscall */
		tls_learn_fd(pid_tgid, OKE_SYSCALL_ARG1(regs));
	struct active_op *op = &sb->op;
	__builtin_memset(op, 0, sizeof(*op));
	if (data_op(tgid, OKE_SYSCALL_ARG1(regs), OKE_SYSCALL_ARG2(regs),
		    kind == OP_MSG ? 0 : OKE_SYSCALL_ARG3(regs), kind, direction, op))
		on_data_exit(pid_tgid, op, ret, sb, heads);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit, struct pt_regs *regs, long ret)
{
	return on_sys_exit(regs, ret, false);
}

/* The fallback, loaded instead of sys_exit when a kernel refuses the walker (capture/loader.py). */
SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit_heads, struct pt_regs *regs, long ret)
{
	return on_sys_exit(regs, ret, true);
}

/* What a process that exits left unfinished of its frames goes out before its exit event (it never
 * calls close(): the kernel closes its files, after this tracepoint). Runs the kernel skipped at the
 * connection's end are told from its socket as at close(), while the socket is still the connection's
 * (its file's inode is the one the connection was seen on: a socket freed since says nothing). */
static long flush_conn_of(struct bpf_map *map, __u64 *key, struct conn *c, void *ctx)
{
	if (c->tgid == *(__u32 *)ctx && c->verdict == CONN_KAFKA && c->open_sent) {
		struct sock *sk = (struct sock *)*key;
		if (BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino) == c->ino)
			note_tail(c, *key);
		pending_flush(c, OKE_DIR_SEND);
		pending_flush(c, OKE_DIR_RECV);
	}
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(process_exit, struct task_struct *task)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	if (tgid != (__u32)pid_tgid)
		return 0;  /* a thread, not the process */
	tls_forget(tgid);
	if (!bpf_map_lookup_elem(&kafka_tgids, &tgid))
		return 0;
	bpf_map_delete_elem(&kafka_tgids, &tgid);
	bpf_for_each_map_elem(&conns, flush_conn_of, &tgid, 0);
	struct oke_exit_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(OKE_CNT_RINGBUF_DROPS, 1);
		return 0;
	}
	e->type = OKE_EV_EXIT;
	e->pid = tgid;
	e->ts_ns = bpf_ktime_get_ns();
	bpf_ringbuf_submit(e, ringbuf_flags());
	count(OKE_CNT_EVENTS, 1);
	return 0;
}
