/* SPDX-License-Identifier: Apache-2.0
 * Events and settings shared by capture.bpf.c and otel_kafka_ebpf/capture/events.py.
 * Every struct is naturally aligned with explicit padding (tests/unit/test_event_layout.py
 * checks the Python mirror against the sizes and offsets in the compiled object's BTF). */
#ifndef OKE_CAPTURE_H
#define OKE_CAPTURE_H

#define OKE_CHUNK_SIZE      16384   /* payload bytes in one data event (power of two) */
#define OKE_COMM_LEN        16
#define OKE_MAX_KAFKA_PORTS 8
#define OKE_MAX_IOV         1024    /* iovecs walked per syscall (UIO_MAXIOV); the rest become a gap */
#define OKE_MAX_MMSG        4       /* messages walked per recvmmsg/sendmmsg */
#define OKE_DETECT_ATTEMPTS 16      /* syscalls tried before a mid-stream connection is judged not Kafka */

enum oke_event_type {
	OKE_EV_OPEN  = 1,
	OKE_EV_DATA  = 2,
	OKE_EV_CLOSE = 3,
	OKE_EV_EXIT  = 4,
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
};

enum oke_data_flag {
	OKE_DATA_FRAME_START = 1 << 0,  /* payload[0] is the first byte of a frame's size field */
};

enum oke_counter {
	OKE_CNT_SYSCALLS = 0,       /* socket syscalls seen on Kafka connections */
	OKE_CNT_EVENTS,             /* events written to the ring buffer */
	OKE_CNT_BYTES,              /* payload bytes written */
	OKE_CNT_RINGBUF_DROPS,      /* events the ring buffer had no room for */
	OKE_CNT_GAP_BYTES,          /* bytes not copied, any reason */
	OKE_CNT_CONN_KAFKA,         /* connections classified Kafka */
	OKE_CNT_CONN_OTHER,         /* TCP connections classified not Kafka */
	OKE_CNT_TRACEPOINT_HITS,    /* all syscall tracepoint hits that passed the filters */
	OKE_CNT_MAX,
};

struct oke_open_event {
	__u32 type;
	__u32 pid;
	__u32 tid;
	__u16 family;
	__u8  role;
	__u8  pad0;
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

struct oke_data_event {
	__u32 type;
	__u32 len;          /* payload bytes that follow */
	__u64 conn_id;
	__u64 ts_ns;
	__u64 offset;       /* stream position of payload[0] */
	__u32 pid;
	__u32 tid;
	__u8  direction;
	__u8  gap_flags;    /* reasons for any bytes missing before offset */
	__u16 flags;        /* OKE_DATA_* */
	__u32 pad1;
	__u8  payload[OKE_CHUNK_SIZE];
};

struct oke_close_event {
	__u32 type;
	__u32 pid;
	__u64 conn_id;
	__u64 ts_ns;
	__u64 send_bytes;   /* final stream lengths, so a trailing gap is exact */
	__u64 recv_bytes;
};

struct oke_exit_event {
	__u32 type;
	__u32 pid;
	__u64 ts_ns;
};

/* Settings, written into .rodata before load. */
struct oke_config {
	__u32 frame_budget;          /* bytes copied per frame, including its 4-byte size */
	__u32 filter_pids;           /* 1: only tgids in the pid_filter map */
	__u64 cgroup_id;             /* 0: any; else only this cgroup (v2) and its descendants */
	__u32 cgroup_level;          /* ancestor level of cgroup_id */
	__u32 ports_only;            /* 1: only connections with a port in kafka_ports */
	__u16 kafka_ports[OKE_MAX_KAFKA_PORTS];  /* connections on these ports are Kafka without detection */
	__u32 self_tgid;             /* the agent itself, never traced */
	__u32 server_side;           /* 1: also capture connections the process accept()ed (brokers) */
};

#endif
