/* SPDX-License-Identifier: Apache-2.0
 * The fallback when a kernel refuses the frame walker: frame heads only, without bpf_loop.
 *
 * Per data syscall of a Kafka connection, a bounded loop follows the frames that begin in the
 * syscall's first segment and copies, of each, its size field and its head: a request's api key,
 * version, correlation id and client id; a response's correlation id. The rest of each frame is
 * declared skipped (OKE_SKIP_HEADS), so offsets stay exact and user space pairs requests with their
 * responses (API, client, latency), but sees no topic, partition or offset. No body is ever copied,
 * so no record and no credential leaves the kernel; a raw SASL token (after SaslHandshake v0) is
 * skipped from its size field on. Frames past the first segment or the loop's bound are a gap; the
 * direction resynchronises at a later syscall that starts with a frame (try_resync).
 */
#ifndef OKE_HEADS_BPF_H
#define OKE_HEADS_BPF_H

#define HEADS_STEPS       32  /* phases per syscall: size field, fixed head, client id, skip (4 per request) */
#define HEADS_FIXED       10  /* api key, version, correlation id, client id length */
#define HEADS_MAX_CLIENT  255 /* client id bytes copied at most */

enum { HEADS_FIXED_PART = 0, HEADS_CLIENT_ID = 1, HEADS_REST = 2 };  /* dir_state.step */

/* The first segment of the syscall's bytes: its address, and its length (0: unreadable). */
static __always_inline __u32 heads_segment(struct active_op *op, __u32 total, struct ev_scratch *sb, __u64 *ptr)
{
	*ptr = op->ptr;
	if (op->kind == OP_BUF)
		return total;
	__u64 iov = op->ptr;
	__u32 cnt = op->count;
	if (op->kind == OP_MSG) {
		if (bpf_probe_read_user(&sb->u.msg, sizeof(sb->u.msg), (void *)op->ptr))
			return 0;
		iov = (__u64)sb->u.msg.msg_iov;
		cnt = sb->u.msg.msg_iovlen;
	}
	if (!cnt || bpf_probe_read_user(&sb->u.v, sizeof(sb->u.v), (void *)iov))
		return 0;
	*ptr = (__u64)sb->u.v.iov_base;
	return sb->u.v.iov_len < total ? sb->u.v.iov_len : total;
}

/* A frame's size field is complete: the head to copy, by direction. */
static __always_inline void heads_frame(struct conn *c, struct dir_state *d, bool is_request)
{
	d->frame_copied = 4;
	d->skip_reason = OKE_SKIP_HEADS;
	if (d->raw_next == 1) {
		/* a raw SASL token: nothing of it is copied */
		d->raw_next = 0;
		d->skip_reason = OKE_SKIP_SASL;
		d->step = HEADS_REST;
		d->unit_left = 0;
		return;
	}
	if (d->raw_next == 2)
		d->raw_next = 1;  /* this is the SaslHandshake v0 response; the token comes next */
	d->step = is_request ? HEADS_FIXED_PART : HEADS_CLIENT_ID;
	d->unit_left = is_request ? HEADS_FIXED : 4;  /* a response's head: its correlation id */
	if (d->unit_left > d->frame_left)
		d->unit_left = d->frame_left;
}

/* One phase of the heads walk (a size field, a fixed head, a client id, a skipped rest): 0 to go
 * on, 1 to stop. A global function, so that the verifier checks it once, whatever the loop's state;
 * the walk's position is sb->w (ptr and len: the first segment). */
__noinline int heads_step(struct walk *w, struct conn *c, struct ev_scratch *sb)
{
	if (!w || !c || !sb)
		return 1;
	struct dir_state *d = &c->dir[w->direction & 1];
	__u32 pos = w->pos, total = w->total, seg = w->len;
	__u64 ptr = w->ptr;
	if (pos >= total || !d->synced)
		return 1;
	__u32 left = total - pos;
	if (d->frame_left == 0) {
		/* the size field, perhaps the rest of one a previous syscall began */
		__u32 need = 4 - (d->size_have & 3);
		__u32 take = need < left ? need : left;
		if (pos + take > seg || take == 0 || take > 4)
			return 1;
		__u64 n = take;
		barrier_var(n);  /* the mask stays in the code: older verifiers lose take's bound on a spill */
		if (bpf_probe_read_user(sb->peek.b, n & 7, (void *)(ptr + pos)))
			return 1;
		ev_put_small(sb, sb->peek.b, take);
#pragma unroll
		for (int j = 0; j < 4; j++)
			if (j < take)
				d->size_buf[(d->size_have + j) & 3] = sb->peek.b[j];
		d->size_have += take;
		w->pos = pos + take;
		if (d->size_have < 4)
			return 1;
		d->size_have = 0;
		__s32 size = be32(d->size_buf);
		if (size <= 0 || size > KAFKA_MAX_FRAME) {
			d->synced = 0;
			d->gap_flags |= OKE_GAP_UNSYNCED;
			return 1;
		}
		d->frame_left = size;
		heads_frame(c, d, w->is_request);
		return 0;
	}
	if (d->step != HEADS_REST && d->unit_left) {
		__u32 take = d->unit_left < left ? d->unit_left : left;
		if (d->step == HEADS_FIXED_PART && take < HEADS_FIXED) {
			/* the fixed head split across syscalls: this frame goes without its head */
			d->step = HEADS_REST;
			return 0;
		}
		if (pos + take > seg)
			return 1;
		if (d->step == HEADS_FIXED_PART) {
			if (bpf_probe_read_user(sb->peek.b, HEADS_FIXED, (void *)(ptr + pos)))
				return 1;
			__s16 api_key = be16(&sb->peek.b[0]);
			__s16 version = be16(&sb->peek.b[2]);
			__s16 cid = be16(&sb->peek.b[8]);
			if (api_key == API_SASL_HANDSHAKE && version == 0) {
				d->raw_next = 1;                               /* the next request is a raw token */
				c->dir[(w->direction & 1) ^ 1].raw_next = 2;   /* the next response but one */
			}
			if (ev_put_user(sb, ptr + pos, HEADS_FIXED))
				return 1;
			w->pos = pos + HEADS_FIXED;
			d->frame_left -= HEADS_FIXED;
			d->frame_copied += HEADS_FIXED;
			/* the client id and one byte more: a flexible header's tagged fields count */
			__u32 more = (cid > 0 && cid <= HEADS_MAX_CLIENT ? cid : 0) + 1;
			d->unit_left = more < d->frame_left ? more : d->frame_left;
			d->step = HEADS_CLIENT_ID;
			return 0;
		}
		if (take > HEADS_MAX_CLIENT + 1 || ev_put_user(sb, ptr + pos, take))
			return 1;
		w->pos = pos + take;
		d->frame_left -= take;
		d->frame_copied += take;
		d->unit_left -= take;
		if (!d->unit_left)
			d->step = HEADS_REST;
		return 0;
	}
	/* the rest of the frame: skipped on purpose */
	__u32 n = d->frame_left < left ? d->frame_left : left;
	if (!ev_put_skip(sb, n, d->skip_reason)) {
		sb->wire_end = w->start + pos;
		ev_flush(sb, d);
		ev_begin(sb, c, d, w->direction & 1, w->start + pos, w->ts, 0);
		ev_put_skip(sb, n, d->skip_reason);
	}
	count(OKE_CNT_SKIPPED_BYTES, n);
	w->pos = pos + n;
	d->frame_left -= n;
	if (d->frame_left == 0) {
		d->step = HEADS_FIXED_PART;
		d->unit_left = 0;
	}
	return 0;
}

static __noinline void heads_op(struct conn *c, struct active_op *op, __u32 total, __u64 ts,
				struct ev_scratch *sb)
{
	if (!c || !op || !sb)
		return;
	__u8 dir = op->direction & 1;
	struct dir_state *d = &c->dir[dir];
	__u64 start = d->offset;
	d->offset = start + total;
	struct walk *w = &sb->w;
	__builtin_memset(w, 0, sizeof(*w));
	w->len = heads_segment(op, total, sb, &w->ptr);
	w->total = total;
	w->start = start;
	w->ts = ts;
	w->direction = dir;
	w->is_request = dir == request_dir(c);
	if (c->lead4 && d->synced && d->frame_left) {
		/* the frame's size field came alone in the previous syscall (a Java client or broker reads it so),
		 * before this direction was synchronised or the connection classified: from kernel memory */
		c->lead4 = 0;
		c->pending4_valid = 0;
		ev_begin(sb, c, d, dir, start - 4, ts, OKE_DATA_FRAME_START);
		ev_put_small(sb, c->pending4, 4);
		heads_frame(c, d, w->is_request);
	} else {
		ev_begin(sb, c, d, dir, start, ts,
			 d->synced && d->frame_left == 0 && d->size_have == 0 ? OKE_DATA_FRAME_START : 0);
	}
	for (int i = 0; i < HEADS_STEPS; i++)
		if (heads_step(w, c, sb))
			break;
	__u32 pos = w->pos;
	sb->wire_end = start + pos;
	if (sb->ev.len || sb->ev.n_skips) {
		ev_flush(sb, d);
	} else {
		d->gap_flags |= sb->ev.gap_flags;  /* nothing to send: the reasons wait for the next event */
		sb->ev.type = 0;
	}
	if (pos < total) {
		/* past the first segment or the loop's bound, or not synchronised: a gap of exact length (but a
		 * size field held back by try_resync, which may yet be emitted from pending4) */
		if (d->synced || !c->pending4_valid || total != 4 || pos)
			count(OKE_CNT_GAP_BYTES, total - pos);
		d->gap_flags |= d->synced ? OKE_GAP_LOOP : OKE_GAP_UNSYNCED;
		d->synced = 0;
		d->frame_left = 0;
		d->size_have = 0;
		d->step = HEADS_FIXED_PART;
		d->unit_left = 0;
	}
}

#endif
