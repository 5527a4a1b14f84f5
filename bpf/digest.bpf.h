/* SPDX-License-Identifier: Apache-2.0
 * The digest: what of a frame body is copied and what is skipped, one unit at a time.
 *
 * A frame starts with its head (request: api key and version, correlation id; response: the
 * correlation id, matched with the request it answers). The head picks a layout, loaded by user
 * space into `layouts` (otel_kafka_ebpf/capture/layouts.py): a list of ops for the body of one
 * API, version and direction (Produce requests, Fetch and ShareFetch responses, SASL frames).
 * The walker asks digest_next() for a unit whenever it has used up the last one; units never
 * cross the frame's end, so a malformed frame costs that frame's digest only, never the framing. */
#ifndef OKE_DIGEST_BPF_H
#define OKE_DIGEST_BPF_H

#define API_SASL_HANDSHAKE   17
#define BATCH_LOG_OVERHEAD   12   /* base offset, batch length: the part of a batch not counted in its length */
#define BATCH_HEADER_REST    49   /* the rest of the 61-byte record batch header */
#define BATCH_TO_ATTRIBUTES  9    /* partition leader epoch, magic, crc: then the attributes */
#define BATCH_AFTER_ATTRS    38   /* last offset delta ... record count */

/* steps of OKE_OP_RECORDS / OKE_OP_CRECORDS */
enum records_step {
	R_LENGTH = 0, R_START, R_BATCH, R_BASE, R_LENGTH_READ, R_ATTRIBUTES, R_ATTRS_READ, R_PREFIX, R_SKIP,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, OKE_MAX_LAYOUTS);
	__type(key, __u32);
	__type(value, struct oke_layout);
} layouts SEC(".maps");

/* OKE_LAYOUT_KEY(is_response, api_key, version) -> layout id, 0 for none */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, OKE_LAYOUT_KEYS);
	__type(key, __u32);
	__type(value, __u8);
} layout_of SEC(".maps");

static __always_inline __u8 layout_for(__u32 is_response, __u32 api_key, __u32 version)
{
	if (api_key > 127 || version > 63)
		return 0;
	__u32 key = OKE_LAYOUT_KEY(is_response, api_key, version);
	__u8 *id = bpf_map_lookup_elem(&layout_of, &key);
	return id ? *id : 0;
}

static __always_inline void unit(struct dir_state *d, __u8 kind, __u32 n)
{
	d->unit = kind;
	d->unit_left = n;
	d->have = 0;
	d->acc = 0;
}

/* Follow layout `id` from the next byte (0: copy the rest of the frame, under the budget). */
static __always_inline void start_layout(struct dir_state *d, __u8 id)
{
	d->layout = id;
	d->pc = 0;
	d->step = 0;
	d->depth = 0;
	if (id == LAYOUT_NONE)
		unit(d, U_BODY, d->frame_left);
	else
		d->unit = U_NONE;
}

static __always_inline void inflight_push(struct conn *c, __s32 corr, __u8 api_key, __u8 version)
{
	struct inflight *f = &c->inflight[c->inflight_head & (OKE_INFLIGHT - 1)];
	f->corr = corr;
	f->api_key = api_key;
	f->version = version;
	c->inflight_head = (c->inflight_head + 1) & (OKE_INFLIGHT - 1);
	if (c->inflight_n < OKE_INFLIGHT)
		c->inflight_n++;
}

/* The request a response answers; the ones before it are answered or lost (Kafka answers in order). */
static __always_inline bool inflight_match(struct conn *c, __s32 corr, __u8 *api_key, __u8 *version)
{
	__u32 n = c->inflight_n;
	if (n > OKE_INFLIGHT)
		n = OKE_INFLIGHT;
	__u32 oldest = c->inflight_head - n;
#pragma unroll
	for (int k = 0; k < OKE_INFLIGHT; k++) {
		if (k >= n)
			break;
		struct inflight *f = &c->inflight[(oldest + k) & (OKE_INFLIGHT - 1)];
		if (f->corr == corr) {
			*api_key = f->api_key;
			*version = f->version;
			c->inflight_n = n - k - 1;
			return true;
		}
	}
	return false;
}

/* The frame's first fields, then its layout. */
static __always_inline void head_next(struct conn *c, struct dir_state *d, bool is_request)
{
	switch (d->step) {
	case 0:
		d->step = is_request ? 1 : 3;
		unit(d, U_FIELD, 4);  /* request: api key and version; response: correlation id */
		return;
	case 1:
		d->aux = d->acc;
		d->step = 2;
		unit(d, U_FIELD, 4);  /* correlation id */
		return;
	case 2: {
		__u32 api_key = d->aux >> 16, version = d->aux & 0xffff;
		if (layout_for(1, api_key, version))
			inflight_push(c, d->acc, api_key, version);
		if (api_key == API_SASL_HANDSHAKE && version == 0)
			d->raw_next = 1;  /* v0: the SASL tokens follow as raw frames */
		start_layout(d, layout_for(0, api_key, version));
		return;
	}
	case 3: {
		__u8 api_key = 0, version = 0, id = 0;
		if (inflight_match(c, d->acc, &api_key, &version)) {
			id = layout_for(1, api_key, version);
			if (api_key == API_SASL_HANDSHAKE && version == 0)
				d->raw_next = 1;
		}
		start_layout(d, id);
		return;
	}
	}
	start_layout(d, LAYOUT_NONE);
}

/* A records field: each batch's 61-byte header copied, its records skipped (or, for uncompressed
 * batches, their first cfg.record_prefix bytes copied). Returns true when the field is done. */
static __always_inline bool records_next(struct dir_state *d, __u8 op)
{
	__u32 rec = d->rec_left;
	switch (d->step) {
	case R_LENGTH:
		d->step = R_START;
		unit(d, op == OKE_OP_RECORDS ? U_FIELD : U_VARINT, 4);
		return false;
	case R_START: {
		__s32 n = op == OKE_OP_RECORDS ? (__s32)d->acc : (__s32)d->acc - 1;
		if (n <= 0)
			return true;
		d->rec_left = n;
		d->step = R_BATCH;
		return false;
	}
	case R_BATCH:
		if (!rec)
			return true;
		if (rec < BATCH_LOG_OVERHEAD) {
			d->rec_left = 0;
			unit(d, U_COPY, rec);
			return false;
		}
		d->rec_left = rec - 8;
		d->step = R_BASE;
		unit(d, U_COPY, 8);  /* base offset */
		return false;
	case R_BASE:
		d->rec_left = rec - 4;
		d->step = R_LENGTH_READ;
		unit(d, U_FIELD, 4);  /* batch length */
		return false;
	case R_LENGTH_READ: {
		__s32 length = d->acc;
		__u32 body = length > 0 ? length : 0;
		__u32 span = body < rec ? body : rec;  /* what of the batch is in this field */
		__u32 head = span < BATCH_HEADER_REST ? span : BATCH_HEADER_REST;
		d->batch_left = span - head;
		if (cfg.record_prefix && head == BATCH_HEADER_REST) {
			d->rec_left = rec - BATCH_TO_ATTRIBUTES;
			d->step = R_ATTRIBUTES;
			unit(d, U_COPY, BATCH_TO_ATTRIBUTES);
			return false;
		}
		d->rec_left = rec - head;
		d->step = R_SKIP;
		if (head)
			unit(d, U_COPY, head);
		return false;
	}
	case R_ATTRIBUTES:
		d->rec_left = rec - 2;
		d->step = R_ATTRS_READ;
		unit(d, U_FIELD, 2);
		return false;
	case R_ATTRS_READ:
		d->rec_left = rec - BATCH_AFTER_ATTRS;
		d->step = (d->acc & 7) == 0 ? R_PREFIX : R_SKIP;  /* compression none: a prefix is readable */
		unit(d, U_COPY, BATCH_AFTER_ATTRS);
		return false;
	case R_PREFIX: {
		__u32 prefix = cfg.record_prefix < d->batch_left ? cfg.record_prefix : d->batch_left;
		d->step = R_SKIP;
		if (prefix) {
			d->batch_left -= prefix;
			d->rec_left = rec - prefix;
			unit(d, U_COPY, prefix);
		}
		return false;
	}
	case R_SKIP: {
		__u32 left = d->batch_left;
		d->step = R_BATCH;
		if (left) {
			d->batch_left = 0;
			d->rec_left = rec - left;
			d->skip_reason = OKE_SKIP_RECORDS;
			unit(d, U_SKIP, left);
		}
		return false;
	}
	}
	return true;
}

/* One op of the layout: set up its next unit, or move on to the next op. */
static __always_inline void layout_next(struct dir_state *d)
{
	__u32 id = d->layout;
	struct oke_layout *l = bpf_map_lookup_elem(&layouts, &id);
	if (!l) {
		start_layout(d, LAYOUT_NONE);
		return;
	}
	__u32 pc = d->pc & (OKE_LAYOUT_OPS - 1);
	__u8 op = l->op[pc];
	__u32 arg = l->arg[pc];
	__u32 acc = d->acc;
	__u32 top = (d->depth - 1) & (OKE_MAX_DEPTH - 1);
	switch (op) {
	case OKE_OP_COPY:
		if (d->step == 0 && arg) {
			d->step = 1;
			unit(d, U_COPY, arg);
			return;
		}
		break;
	case OKE_OP_STR16:
		if (d->step == 0) {
			d->step = 1;
			unit(d, U_FIELD, 2);
			return;
		}
		if (d->step == 1 && (__s16)acc > 0) {
			d->step = 2;
			unit(d, U_COPY, (__u16)acc);
			return;
		}
		break;
	case OKE_OP_CSTR:
		if (d->step == 0) {
			d->step = 1;
			unit(d, U_VARINT, 0);
			return;
		}
		if (d->step == 1 && acc > 1) {
			d->step = 2;
			unit(d, U_COPY, acc - 1);
			return;
		}
		break;
	case OKE_OP_TAGS:
		if (d->step == 0) {  /* count */
			d->step = 1;
			unit(d, U_VARINT, 0);
			return;
		}
		if (d->step == 1) {
			if (!acc)
				break;
			d->aux = acc;
			d->step = 2;
			unit(d, U_VARINT, 0);  /* tag */
			return;
		}
		if (d->step == 2) {
			d->step = 3;
			unit(d, U_VARINT, 0);  /* size */
			return;
		}
		if (d->step == 3 && acc) {
			d->step = 4;
			unit(d, U_COPY, acc);
			return;
		}
		if (--d->aux) {
			d->step = 2;
			unit(d, U_VARINT, 0);
			return;
		}
		break;
	case OKE_OP_ARRAY:
	case OKE_OP_CARRAY: {
		if (d->step == 0) {
			d->step = 1;
			unit(d, op == OKE_OP_ARRAY ? U_FIELD : U_VARINT, 4);
			return;
		}
		__s32 n = op == OKE_OP_ARRAY ? (__s32)acc : (__s32)acc - 1;
		if (n <= 0) {  /* empty or null: past the body and its OKE_OP_END */
			d->pc = pc + arg + 2;
			d->step = 0;
			return;
		}
		if (d->depth >= OKE_MAX_DEPTH) {
			start_layout(d, LAYOUT_NONE);
			return;
		}
		d->loop_left[d->depth & (OKE_MAX_DEPTH - 1)] = n;
		d->loop_pc[d->depth & (OKE_MAX_DEPTH - 1)] = pc + 1;
		d->depth++;
		break;
	}
	case OKE_OP_END:
		if (!d->depth) {
			start_layout(d, LAYOUT_NONE);
			return;
		}
		if (--d->loop_left[top]) {
			d->pc = d->loop_pc[top];
			d->step = 0;
			return;
		}
		d->depth--;
		break;
	case OKE_OP_RECORDS:
	case OKE_OP_CRECORDS:
		if (!records_next(d, op))
			return;
		break;
	case OKE_OP_SKIP_REST:
		if (d->step == 0 && d->frame_left) {
			d->step = 1;
			d->skip_reason = OKE_SKIP_SASL;
			unit(d, U_SKIP, d->frame_left);
			return;
		}
		break;
	default:  /* OKE_OP_STOP: nothing should be left; whatever is, is copied */
		start_layout(d, LAYOUT_NONE);
		return;
	}
	d->pc = pc + 1;
	d->step = 0;
}

/* The next unit of direction `dir`'s frame body once the last one is used up. A global function:
 * the verifier checks it once, apart from the walker, whatever state the walker is in. */
__noinline int digest_next(struct conn *c, __u32 dir, __u32 is_request)
{
	if (!c)
		return 0;
	struct dir_state *d = &c->dir[dir & 1];
	for (int k = 0; k < 4; k++) {
		if (d->unit != U_NONE)
			break;
		if (d->layout == LAYOUT_HEAD)
			head_next(c, d, is_request);
		else if (d->layout == LAYOUT_NONE)
			unit(d, U_BODY, d->frame_left);
		else
			layout_next(d);
	}
	return 0;
}

#endif
