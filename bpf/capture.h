/* SPDX-License-Identifier: Apache-2.0
 * Events, settings and digest layouts shared by capture.bpf.c and otel_kafka_ebpf/capture/events.py.
 * Every struct is naturally aligned with explicit padding (tests/unit/test_event_layout.py
 * checks the Python mirror against the sizes and offsets in the compiled object's BTF). */
#ifndef OKE_CAPTURE_H
#define OKE_CAPTURE_H

#define OKE_CHUNK_SIZE      16384   /* payload bytes in one data event at most (power of two) */
#define OKE_MAX_SKIPS       64      /* skipped ranges in one data event at most */
#define OKE_COMM_LEN        16
#define OKE_MAX_KAFKA_PORTS 8
#define OKE_MAX_IOV         1024    /* iovecs walked per syscall (UIO_MAXIOV); the rest become a gap */
#define OKE_MAX_MMSG        4       /* messages walked per recvmmsg/sendmmsg */
#define OKE_DETECT_ATTEMPTS 16      /* syscalls tried before a mid-stream connection is judged not Kafka */
#define OKE_LAYOUT_OPS      64      /* ops in one digest layout (power of two) */
#define OKE_MAX_LAYOUTS     64      /* digest layouts loaded at most */
#define OKE_MAX_DEPTH       4       /* nested arrays a layout may open */
#define OKE_INFLIGHT        8       /* requests remembered per connection whose responses have a layout */

/* Map sizes: the entries each map holds at most (tests/unit/test_capture_constants.py checks the object's maps) */
#define OKE_RINGBUF_BYTES   (16 << 20)  /* the ring buffer of the digest mode (the loader sizes it per mode) */
#define OKE_MAX_CONNS       65536   /* TCP connections followed (LRU: the least recently used go first) */
#define OKE_MAX_FD_VERDICTS 131072  /* fds judged not a socket or not Kafka (LRU) */
#define OKE_MAX_KAFKA_FDS   65536   /* fds of Kafka connections, for their close() (LRU) */
#define OKE_MAX_PIDS        4096    /* processes a pid filter names */
#define OKE_MAX_KAFKA_TGIDS 16384   /* processes with Kafka connections, for their exit events (LRU) */
#define OKE_MAX_LISTENERS   16384   /* sockets listening when the agent started */
#define OKE_MAX_TLS_SESSIONS 65536  /* TLS sessions (process, session object) whose socket is known (LRU) */
#define OKE_MAX_TLS_CALLS   16384   /* TLS reads and writes under way (thread or goroutine) (LRU) */
#define OKE_MAX_PENDING_EVENTS 16384  /* unfinished events kept between syscalls (connection and direction) */

enum oke_event_type {
	OKE_EV_OPEN  = 1,
	OKE_EV_DATA  = 2,
	OKE_EV_CLOSE = 3,
	OKE_EV_EXIT  = 4,
	OKE_EV_EXEC_MAP = 5,  /* a process mapped a file executable (struct oke_exit_event): TLS libraries, now */
};

enum oke_direction {
	OKE_DIR_SEND = 0,
	OKE_DIR_RECV = 1,
};

enum oke_role {
	OKE_ROLE_UNKNOWN = 0,
	OKE_ROLE_CLIENT  = 1,
	OKE_ROLE_SERVER  = 2,
};

/* Why bytes before a data event were not captured (bit set, accumulated until the next event). */
enum oke_gap_flag {
	OKE_GAP_BUDGET    = 1 << 0,
	OKE_GAP_RINGBUF   = 1 << 1,
	OKE_GAP_IOVEC     = 1 << 2,
	OKE_GAP_USER_COPY = 1 << 3,
	OKE_GAP_UNSYNCED  = 1 << 4,  /* payload does not start on a known frame boundary */
	OKE_GAP_LOOP      = 1 << 5,  /* frame walker hit its iteration bound */
	OKE_GAP_SENDFILE  = 1 << 6,  /* bytes sent from a file by sendfile(): never in user memory */
	OKE_GAP_MISSED_RUN = 1 << 7, /* bytes of syscalls the program never ran for (the kernel skipped the run) */
};

enum oke_data_flag {
	OKE_DATA_FRAME_START = 1 << 0,  /* payload[0] is the first byte of a frame's size field */
};

/* Why the ranges an event skips were not copied: on purpose, never a loss. */
enum oke_skip_reason {
	OKE_SKIP_RECORDS = 1,  /* the records after a record batch's header (digest) */
	OKE_SKIP_SASL    = 2,  /* SaslHandshake/SaslAuthenticate bodies: credentials never leave the kernel */
	OKE_SKIP_HEADS   = 3,  /* a frame's body (the fallback program, bpf/heads.bpf.h, copies heads only) */
};

enum oke_capture_mode {
	OKE_MODE_DIGEST = 0,
	OKE_MODE_FULL   = 1,
};

enum oke_counter {
	OKE_CNT_SYSCALLS = 0,       /* socket syscalls seen on Kafka connections */
	OKE_CNT_EVENTS,             /* events written to the ring buffer */
	OKE_CNT_BYTES,              /* payload bytes written */
	OKE_CNT_RINGBUF_DROPS,      /* events the ring buffer had no room for */
	OKE_CNT_GAP_BYTES,          /* bytes not copied and lost (budget, ring full, ...) */
	OKE_CNT_CONN_KAFKA,         /* connections classified (or forced by port) Kafka */
	OKE_CNT_CONN_OTHER,         /* TCP connections classified not Kafka */
	OKE_CNT_TRACEPOINT_HITS,    /* socket syscalls of traced processes looked at */
	OKE_CNT_SKIPPED_BYTES,      /* bytes not copied on purpose (record payloads, SASL) */
	OKE_CNT_TLS_OPS,            /* plaintext reads and writes handed over by the TLS probes */
	OKE_CNT_TLS_NO_FD,          /* TLS plaintext whose socket is not known (bytes lost, counted here) */
	OKE_CNT_TLS_UNDECODED,      /* connections that began a TLS handshake on a Kafka port, plaintext unseen */
	OKE_CNT_MAX,
};

struct oke_open_event {
	__u32 type;
	__u32 pid;
	__u32 tid;
	__u16 family;
	__u8  role;
	__u8  tls;          /* enum oke_tls_stack: whose plaintext the events carry (0: the socket's own bytes) */
	__u64 conn_id;
	__u64 ts_ns;
	__u64 cgroup_id;
	__u32 netns;
	__u16 local_port;
	__u16 remote_port;
	__u8  local_addr[16];
	__u8  remote_addr[16];
	char  comm[OKE_COMM_LEN];
};

/* A piece of one direction's stream: this header, then `len` copied bytes, then `n_skips` oke_skip
 * entries. It covers the stream from `offset` on, len + the skipped lengths bytes, and lies within
 * one Kafka frame (or within one syscall's bytes where frame boundaries are unknown). */
struct oke_data_event {
	__u32 type;
	__u32 len;          /* payload bytes that follow */
	__u64 conn_id;
	__u64 ts_ns;        /* time of the first syscall whose bytes the event covers */
	__u64 offset;       /* stream position of the first byte covered */
	__u32 pid;
	__u32 tid;
	__u8  direction;
	__u8  gap_flags;    /* reasons for any bytes missing before offset */
	__u16 flags;        /* OKE_DATA_* */
	__u16 n_skips;      /* oke_skip entries after the payload */
	__u8  skip_reason;  /* OKE_SKIP_*: why the skipped ranges were not copied */
	__u8  pad0;
	__u64 last_ts_ns;   /* time of the last syscall whose bytes the event covers */
};

/* `len` stream bytes that were not copied, between payload[at - 1] and payload[at]. */
struct oke_skip {
	__u32 at;
	__u32 len;
};

struct oke_close_event {
	__u32 type;
	__u32 pid;
	__u64 conn_id;
	__u64 ts_ns;
	__u64 send_bytes;   /* final stream lengths, so a trailing gap is exact */
	__u64 recv_bytes;
	__u8  gap_flags[2]; /* [send, recv]: why bytes are missing before those lengths (note_tail), as in data */
	__u8  _pad[6];
};

struct oke_exit_event {
	__u32 type;
	__u32 pid;
	__u64 ts_ns;
};

/* Settings, written into .rodata before load. */
struct oke_config {
	__u32 frame_budget;          /* bytes copied per frame that has no digest layout */
	__u32 filter_pids;           /* 1: only tgids in the pid_filter map */
	__u64 cgroup_id;             /* 0: any; else only this cgroup (v2) and its descendants */
	__u32 cgroup_level;          /* ancestor level of cgroup_id */
	__u32 ports_only;            /* 1: only connections with a port in kafka_ports */
	__u16 kafka_ports[OKE_MAX_KAFKA_PORTS];  /* connections on these ports are Kafka without detection */
	__u32 self_tgid;             /* the agent itself, never traced */
	__u32 server_side;           /* 1: also capture connections the process accept()ed (brokers) */
	__u32 capture_mode;          /* OKE_MODE_*: which layouts user space loaded (informative) */
	__u32 record_prefix;         /* record bytes copied after the header of an uncompressed batch */
	__u32 wakeup_bytes;          /* wake the reader only once this much data waits (0: every event) */
	__u32 refuse_walker;         /* tests: the frame walker does what the verifier refuses (the fallback's test) */
};

/* ---- digest layouts: what the walker copies and skips of a frame body, one op after another ---- */

enum oke_op {
	OKE_OP_STOP = 0,     /* end of the layout: the rest of the frame (normally none) is copied */
	OKE_OP_COPY,         /* `arg` bytes */
	OKE_OP_STR16,        /* int16 length, then that many bytes (negative: none) */
	OKE_OP_CSTR,         /* unsigned varint length + 1, then the bytes (0: null) */
	OKE_OP_TAGS,         /* tagged fields: a count, then (tag, size, size bytes) each */
	OKE_OP_ARRAY,        /* int32 count, then the `arg` ops that follow that many times, then OKE_OP_END */
	OKE_OP_CARRAY,       /* unsigned varint count + 1; otherwise as OKE_OP_ARRAY */
	OKE_OP_END,          /* end of an array body */
	OKE_OP_RECORDS,      /* int32 length, then record batches: headers copied, records skipped */
	OKE_OP_CRECORDS,     /* unsigned varint length + 1, then record batches */
	OKE_OP_SKIP_REST,    /* the rest of the frame is skipped (SASL) */
};

struct oke_layout {
	__u8 op[OKE_LAYOUT_OPS];
	__u8 arg[OKE_LAYOUT_OPS];
};

/* Index of the layout_of map: which layout (0: none, copy the frame) a frame body follows. */
#define OKE_LAYOUT_KEY(is_response, api_key, version) \
	((((__u32)(is_response) & 1) << 13) | (((__u32)(api_key) & 127) << 6) | ((__u32)(version) & 63))
#define OKE_LAYOUT_KEYS (1 << 14)

/* The TLS probes' seam with the stream machinery (bpf/tls.bpf.h): a TLS library's read or write of n
 * plaintext bytes of a socket fd, from one user buffer, enters the same walk as a syscall's bytes. The
 * connection is the socket's (one TLS connection is one Kafka connection); its ciphertext is not walked. */
enum oke_tls_stack {
	OKE_TLS_NONE      = 0,
	OKE_TLS_OPENSSL   = 1,  /* OpenSSL 1.1/3, shared or linked in (SSL_read, SSL_write and their _ex) */
	OKE_TLS_GO        = 2,  /* Go crypto/tls: (*Conn).Read, (*Conn).Write */
	OKE_TLS_UNDECODED = 3,  /* a TLS handshake seen on a Kafka port, no probe hands its plaintext over */
};

/* The attach cookie of a TLS probe: the direction in bits 0-7, flags in 8-15, the slot of the file probed
 * in 16-31 (tls_attached: when its probes were in place; go_offsets: a Go binary's offsets). */
#define OKE_TLS_COOKIE_DIR(c)   ((__u8)((c) & 0xff))
#define OKE_TLS_COOKIE_EX       (1 << 8)   /* OpenSSL's SSL_read_ex/SSL_write_ex: the count is in *arg4 */
#define OKE_TLS_COOKIE_SLOT(c)  ((__u32)(((c) >> 16) & 0xffff))
#define OKE_MAX_TLS_FILES       1024       /* files (libraries, binaries) the TLS probes are attached to */

#endif
