/* SPDX-License-Identifier: Apache-2.0
 * TLS: the plaintext at the TLS library's boundary, through uprobes, into the same stream machinery as the
 * syscalls' bytes (capture.h: enum oke_tls_stack, the attach cookie).
 *
 * The seam is tls_plain(): a library's read or write of n plaintext bytes of a socket fd, from one user
 * buffer. The connection is the socket's: the probes name the fd, the fd leads to the struct sock, and from
 * then on the socket's ciphertext is not walked (its fd's verdict is FD_TLS, which costs what a socket that
 * is not Kafka costs). One TLS connection is one Kafka connection.
 *
 * OpenSSL (1.1 and 3, shared or linked into a binary): SSL_read/SSL_write and their _ex twins, a uprobe at
 * the entry (session, buffer) and a uretprobe at the return (the count). The session's fd comes from
 * SSL_set_fd/SSL_set_rfd/SSL_set_wfd; for a session set up before the agent started, from the first socket
 * syscall its thread makes inside a TLS call (tls_learn_fd). */
#ifndef OKE_TLS_BPF_H
#define OKE_TLS_BPF_H

struct tls_session_key {
	__u32 tgid;
	__u32 pad0;
	__u64 session;  /* SSL * */
};

/* (process, SSL *) -> its socket's fd */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, OKE_MAX_TLS_SESSIONS);
	__type(key, struct tls_session_key);
	__type(value, __s32);
} tls_fds SEC(".maps");

struct tls_call {
	__u64 session;
	__u64 buf;
	__u64 out;       /* the _ex variants: where the library writes the count */
	__u32 cookie;
	__u8  learning;  /* the session's fd is not known: counted in tls_learning */
	__u8  pad0[3];
};

/* thread (pid_tgid) -> the OpenSSL read or write under way */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, OKE_MAX_TLS_CALLS);
	__type(key, __u64);
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

/* processes that have entries in tls_fds or tls_calls: their exit removes them */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, OKE_MAX_KAFKA_TGIDS);
	__type(key, __u32);
	__type(value, __u8);
} tls_tgids SEC(".maps");

/* slot of a probed file (the attach cookie) -> bpf_ktime_get_ns() when its probes were all in place */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, OKE_MAX_TLS_FILES);
	__type(key, __u32);
	__type(value, __u64);
} tls_attached SEC(".maps");

/* TLS calls under way whose session's fd is not known: while there are none, the syscall path does not look */
__u32 tls_learning = 0;

/* The session's socket is fd: its ciphertext is not looked at from now on. */
static __always_inline void tls_session_fd(__u32 tgid, __u64 session, int fd)
{
	struct tls_session_key k = { .tgid = tgid, .session = session };
	bpf_map_update_elem(&tls_fds, &k, &fd, BPF_ANY);
	__u8 one = 1;
	bpf_map_update_elem(&tls_tgids, &tgid, &one, BPF_ANY);
	__u64 key = fd_key(tgid, fd);
	__u8 v = FD_TLS;
	bpf_map_update_elem(&fd_verdicts, &key, &v, BPF_ANY);
}

/* A socket syscall of a thread inside a TLS call whose session's fd is not known: that fd is the session's. */
static __noinline void tls_learn_fd(__u64 pid_tgid, int fd)
{
	struct tls_call *call = bpf_map_lookup_elem(&tls_calls, &pid_tgid);
	if (!call || !call->learning)
		return;
	__u64 ino = 0;
	bool is_socket;
	if (!tcp_sock_of_fd(fd, &ino, &is_socket))
		return;  /* the library read something else (a random device...) */
	call->learning = 0;
	__sync_fetch_and_add(&tls_learning, -1);
	tls_session_fd(pid_tgid >> 32, call->session, fd);
}

/* The connection whose plaintext `stack` hands over. A connection followed until now by its socket's bytes
 * (its TLS handshake reported, or nothing seen since connect()) ends, and a new one starts. It starts at the
 * start of both plaintext streams when nothing of them can have been missed: connect() was seen and either
 * the probes learnt the session's socket before its handshake (nothing seen of it since), or the handshake
 * began after the probes of the library (file `slot`) were in place. Else it joins mid-stream. */
static __noinline struct conn *tls_conn(__u64 sk, __u64 ino, __u32 tgid, __u32 stack_slot)
{
	__u8 stack = stack_slot & 0xff;
	__u32 slot = stack_slot >> 16;
	struct conn *old = bpf_map_lookup_elem(&conns, &sk);
	__u8 role = OKE_ROLE_UNKNOWN;
	if (old) {
		if (old->ino == ino && old->tls == stack)
			return old;
		__u64 *attached = bpf_map_lookup_elem(&tls_attached, &slot);
		bool after_attach = attached && *attached && old->open_ts > *attached;
		if (old->ino == ino && old->role != OKE_ROLE_UNKNOWN &&
		    ((old->tls == OKE_TLS_UNDECODED && after_attach) ||
		     (old->tls == OKE_TLS_NONE && old->dir[0].offset == 0 && old->dir[1].offset == 0)))
			role = old->role;
		if (old->ino == ino && old->verdict == CONN_KAFKA && old->open_sent)
			emit_close(old);
		bpf_map_delete_elem(&conns, &sk);
	}
	struct conn *c = conn_for(sk, ino, role, tgid);
	if (c)
		c->tls = stack;
	return c;
}

/* sb->op for n plaintext bytes of socket fd moved by a TLS stack; `how`: the direction in bits 0-7, the
 * stack (enum oke_tls_stack) in 8-15, the slot of the probed file in 16-31. The connection set up; false
 * when they are not to be walked. Its own frame: the programs that hand
 * plaintext over keep the stack margin of the walk (tests/unit/test_headroom.py). */
static __noinline bool tls_op(struct ev_scratch *sb, int fd, __u64 buf, __u32 n, __u32 how)
{
	__u8 stack = (how >> 8) & 0xff;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 key = fd_key(tgid, fd);
	__u8 *verdict = bpf_map_lookup_elem(&fd_verdicts, &key);
	__u8 known = verdict ? *verdict : 0;
	if (known == FD_TLS_OTHER || known == FD_NOT_SOCKET)
		return false;  /* plaintext judged not Kafka, or not a socket */
	__u64 ino = 0;
	bool is_socket;
	struct sock *sk = tcp_sock_of_fd(fd, &ino, &is_socket);
	if (!sk) {
		count(OKE_CNT_TLS_NO_FD, 1);
		return false;
	}
	if (known != FD_TLS) {
		__u8 v = FD_TLS;
		bpf_map_update_elem(&fd_verdicts, &key, &v, BPF_ANY);
	}
	if (!tls_conn((__u64)sk, ino, tgid, stack | (how & 0xffff0000)))
		return false;
	count(OKE_CNT_TLS_OPS, 1);
	struct active_op *op = &sb->op;
	__builtin_memset(op, 0, sizeof(*op));
	op->sk = (__u64)sk;
	op->ino = ino;
	op->ptr = buf;
	op->count = n;
	op->kind = OP_BUF;
	op->direction = how & 0xff;
	op->tls = stack;
	op->fd = fd;
	return true;
}

/* The seam: a TLS library (`stack`, enum oke_tls_stack) moved n plaintext bytes of socket fd of the current
 * process, from or to the user buffer buf; `slot`: the probed file's (the attach cookie's bits 16-31).
 * Called by the TLS probes, in the task that made the call. */
static __always_inline void tls_plain(int fd, __u64 buf, __u32 n, __u8 direction, __u8 stack, __u32 slot,
				      const bool heads)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!n || !traced(pid_tgid >> 32))
		return;
	struct ev_scratch *sb = scratch_get();
	if (!sb || !tls_op(sb, fd, buf, n, direction | ((__u32)stack << 8) | (slot << 16)))
		return;
	on_data_exit(pid_tgid, &sb->op, n, sb, heads);
}

/* ---- OpenSSL ---- */

SEC("uprobe")
int BPF_KPROBE(tls_set_fd, void *ssl, int fd)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (traced(tgid))
		tls_session_fd(tgid, (__u64)ssl, fd);
	return 0;
}

/* SSL_read(ssl, buf, num), SSL_write(ssl, buf, num), SSL_read_ex(ssl, buf, num, &count), SSL_write_ex(...) */
SEC("uprobe")
int BPF_KPROBE(tls_enter, void *ssl, void *buf, __u64 num, void *out)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	if (!traced(tgid))
		return 0;
	struct tls_call call = {};
	call.session = (__u64)ssl;
	call.buf = (__u64)buf;
	call.cookie = bpf_get_attach_cookie(ctx);
	if (call.cookie & OKE_TLS_COOKIE_EX)
		call.out = (__u64)out;
	struct tls_session_key k = { .tgid = tgid, .session = (__u64)ssl };
	if (!bpf_map_lookup_elem(&tls_fds, &k)) {
		call.learning = 1;
		__sync_fetch_and_add(&tls_learning, 1);
	}
	__u8 one = 1;
	bpf_map_update_elem(&tls_tgids, &tgid, &one, BPF_ANY);
	bpf_map_update_elem(&tls_calls, &pid_tgid, &call, BPF_ANY);
	return 0;
}

/* The OpenSSL call of this thread returned `ret`: sb->op set up for its plaintext, and how many bytes it
 * moved (0: none to walk). */
static __noinline long tls_finish(struct ev_scratch *sb, long ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_call *call = bpf_map_lookup_elem(&tls_calls, &pid_tgid);
	if (!call)
		return 0;
	struct tls_session_key k = { .tgid = pid_tgid >> 32, .session = call->session };
	__u64 buf = call->buf, out = call->out;
	__u32 cookie = call->cookie;
	if (call->learning)
		__sync_fetch_and_add(&tls_learning, -1);
	bpf_map_delete_elem(&tls_calls, &pid_tgid);
	__u64 n = ret;
	if (cookie & OKE_TLS_COOKIE_EX) {
		if (ret != 1 || bpf_probe_read_user(&n, sizeof(n), (void *)out))
			return 0;
	} else if (ret <= 0) {
		return 0;  /* an error, or the library wants the socket again (WANT_READ...): nothing moved */
	}
	if (!n || n > 0x7fffffff)
		return 0;
	__s32 *fdp = bpf_map_lookup_elem(&tls_fds, &k);
	if (!fdp) {
		count(OKE_CNT_TLS_NO_FD, 1);
		return 0;
	}
	if (!tls_op(sb, *fdp, buf, n, OKE_TLS_COOKIE_DIR(cookie) | ((__u32)OKE_TLS_OPENSSL << 8) |
		    (OKE_TLS_COOKIE_SLOT(cookie) << 16)))
		return 0;
	return n;
}

static __always_inline int tls_exit(struct pt_regs *ctx, const bool heads)
{
	struct ev_scratch *sb = scratch_get();
	if (!sb)
		return 0;
	long n = tls_finish(sb, PT_REGS_RC(ctx));
	if (n > 0)
		on_data_exit(bpf_get_current_pid_tgid(), &sb->op, n, sb, heads);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(tls_return)
{
	return tls_exit(ctx, false);
}

/* The heads program's twin (loaded when the kernel refused the frame walker) */
SEC("uretprobe")
int BPF_KRETPROBE(tls_return_heads)
{
	return tls_exit(ctx, true);
}

/* ---- a process that exits leaves nothing behind ---- */

static long forget_session(struct bpf_map *map, struct tls_session_key *key, __s32 *fd, void *ctx)
{
	if (key->tgid == *(__u32 *)ctx)
		bpf_map_delete_elem(map, key);
	return 0;
}

static long forget_call(struct bpf_map *map, __u64 *key, struct tls_call *call, void *ctx)
{
	if ((__u32)(*key >> 32) == *(__u32 *)ctx) {
		if (call->learning)
			__sync_fetch_and_add(&tls_learning, -1);
		bpf_map_delete_elem(map, key);
	}
	return 0;
}

static __always_inline void tls_forget(__u32 tgid)
{
	if (!bpf_map_lookup_elem(&tls_tgids, &tgid))
		return;
	bpf_map_delete_elem(&tls_tgids, &tgid);
	bpf_for_each_map_elem(&tls_fds, forget_session, &tgid, 0);
	bpf_for_each_map_elem(&tls_calls, forget_call, &tgid, 0);
}

#endif
