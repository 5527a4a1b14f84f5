// Command workload is the franz-go client workload of otel-kafka-ebpf's tests.
//
// It follows tests/workloads/CONTRACT.md: it produces --messages records to --topic,
// then (mode both) consumes them back in a consumer group, and writes the ground truth
// (what it produced and consumed, with wall clock times) as JSON lines to --out.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
)

const clientName = "go"

// Exit codes of the contract.
const (
	exitOK          = 0
	exitError       = 1
	exitTimeout     = 2
	exitUnsupported = 3
)

type options struct {
	bootstrap     string
	topic         string
	partitions    int
	messages      int
	size          int
	rate          float64
	compression   string
	acks          string
	lingerMs      int
	batchSize     int
	mode          string
	group         string
	groupProtocol string
	clientID      string
	transactional bool
	headers       bool
	timeoutS      float64
	out           string
	processMs     float64
	hangAfter     int
	processAfter  int
	processUntil  int
	hangS         float64
	fetchMaxBytes int
	partFetchMax  int
	securityProto string
	caFile        string
	saslUser      string
	saslPassword  string
	tlsConfig     *tls.Config // SSL, SASL_SSL: trusts --ca-file (else the system's roots)
}

// exitErr carries the exit code a failure maps to.
type exitErr struct {
	code int
	msg  string
}

func (e *exitErr) Error() string { return e.msg }

func fail(code int, format string, args ...any) error {
	return &exitErr{code: code, msg: fmt.Sprintf(format, args...)}
}

func parseOptions(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("workload", flag.ContinueOnError)
	fs.StringVar(&o.bootstrap, "bootstrap", "", "broker HOST:PORT[,HOST:PORT...] (required)")
	fs.StringVar(&o.topic, "topic", "", "topic (required)")
	fs.IntVar(&o.partitions, "partitions", 1, "partitions when the topic is created")
	fs.IntVar(&o.messages, "messages", 100, "messages to produce and consume")
	fs.IntVar(&o.size, "size", 100, "value size in bytes")
	fs.Float64Var(&o.rate, "rate", 0, "messages per second, 0 = unlimited")
	fs.StringVar(&o.compression, "compression", "none", "none|gzip|snappy|lz4|zstd")
	fs.StringVar(&o.acks, "acks", "all", "0|1|all")
	fs.IntVar(&o.lingerMs, "linger-ms", 5, "producer linger")
	fs.IntVar(&o.batchSize, "batch-size", 16384, "producer batch size in bytes")
	fs.StringVar(&o.mode, "mode", "both", "produce|consume|both")
	fs.StringVar(&o.group, "group", "", "consumer group (default <topic>-group)")
	fs.StringVar(&o.groupProtocol, "group-protocol", "classic", "classic|consumer")
	fs.StringVar(&o.clientID, "client-id", "okw-"+clientName, "base client id")
	fs.BoolVar(&o.transactional, "transactional", false, "produce inside one transaction")
	fs.BoolVar(&o.headers, "headers", false, "add a traceparent header to every record")
	fs.Float64Var(&o.timeoutS, "timeout-s", 60, "give up after this many seconds")
	fs.Float64Var(&o.processMs, "process-ms", 0, "the application's own work per consumed record, in ms")
	fs.IntVar(&o.hangAfter, "hang-after", -1, "after this many consumed records the handler hangs")
	fs.IntVar(&o.processAfter, "process-after", 0, "--process-ms applies from this many consumed records on")
	fs.IntVar(&o.processUntil, "process-until", -1, "and up to this many (-1: to the end)")
	fs.Float64Var(&o.hangS, "hang-s", 0, "how long the handler hangs (0: until killed)")
	fs.IntVar(&o.fetchMaxBytes, "fetch-max-bytes", 0, "the consumer's bound on a fetch response (0: the client's default)")
	fs.IntVar(&o.partFetchMax, "max-partition-fetch-bytes", 0, "and on each partition in it (0: the client's default)")
	fs.StringVar(&o.securityProto, "security-protocol", "PLAINTEXT", "PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL")
	fs.StringVar(&o.caFile, "ca-file", "", "PEM CA certificate(s) to trust (SSL, SASL_SSL)")
	fs.StringVar(&o.saslUser, "sasl-user", "", "SASL/PLAIN user (SASL_PLAINTEXT, SASL_SSL)")
	fs.StringVar(&o.saslPassword, "sasl-password", "", "SASL/PLAIN password")
	fs.StringVar(&o.out, "out", "", "ground truth file (JSON lines, required)")
	if err := fs.Parse(args); err != nil {
		return nil, fail(exitError, "%v", err)
	}
	if fs.NArg() > 0 {
		return nil, fail(exitError, "unexpected arguments: %v", fs.Args())
	}
	switch {
	case o.bootstrap == "":
		return nil, fail(exitError, "--bootstrap is required")
	case o.topic == "":
		return nil, fail(exitError, "--topic is required")
	case o.out == "":
		return nil, fail(exitError, "--out is required")
	case o.partitions < 1:
		return nil, fail(exitError, "--partitions must be >= 1")
	case o.messages < 0:
		return nil, fail(exitError, "--messages must be >= 0")
	case o.size < 0:
		return nil, fail(exitError, "--size must be >= 0")
	case o.rate < 0:
		return nil, fail(exitError, "--rate must be >= 0")
	case o.lingerMs < 0:
		return nil, fail(exitError, "--linger-ms must be >= 0")
	case o.batchSize < 1:
		return nil, fail(exitError, "--batch-size must be >= 1")
	case o.timeoutS <= 0:
		return nil, fail(exitError, "--timeout-s must be > 0")
	case o.fetchMaxBytes < 0:
		return nil, fail(exitError, "--fetch-max-bytes must be >= 0")
	case o.partFetchMax < 0:
		return nil, fail(exitError, "--max-partition-fetch-bytes must be >= 0")
	}
	if !oneOf(o.compression, "none", "gzip", "snappy", "lz4", "zstd") {
		return nil, fail(exitError, "--compression must be none|gzip|snappy|lz4|zstd, not %q", o.compression)
	}
	if !oneOf(o.acks, "0", "1", "all", "-1") {
		return nil, fail(exitError, "--acks must be 0|1|all, not %q", o.acks)
	}
	if o.acks == "-1" {
		o.acks = "all"
	}
	if !oneOf(o.mode, "produce", "consume", "both") {
		return nil, fail(exitError, "--mode must be produce|consume|both, not %q", o.mode)
	}
	if !oneOf(o.groupProtocol, "classic", "consumer") {
		return nil, fail(exitError, "--group-protocol must be classic|consumer, not %q", o.groupProtocol)
	}
	if !oneOf(o.securityProto, "PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL") {
		return nil, fail(exitError, "--security-protocol must be PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL, not %q", o.securityProto)
	}
	if strings.HasPrefix(o.securityProto, "SASL_") && o.saslUser == "" {
		return nil, fail(exitError, "--security-protocol %s needs --sasl-user", o.securityProto)
	}
	if strings.HasSuffix(o.securityProto, "SSL") {
		o.tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		if o.caFile != "" {
			pem, err := os.ReadFile(o.caFile)
			if err != nil {
				return nil, fail(exitError, "--ca-file: %v", err)
			}
			o.tlsConfig.RootCAs = x509.NewCertPool()
			if !o.tlsConfig.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fail(exitError, "--ca-file %s holds no PEM certificate", o.caFile)
			}
		}
	}
	if o.group == "" {
		o.group = o.topic + "-group"
	}
	if o.transactional && o.acks != "all" {
		// Transactions need the idempotent producer, which needs acks=all.
		return nil, fail(exitUnsupported, "franz-go: --transactional needs --acks all")
	}
	return o, nil
}

func oneOf(s string, choices ...string) bool {
	for _, c := range choices {
		if s == c {
			return true
		}
	}
	return false
}

// libraryVersion is the franz-go module version compiled into this binary.
func libraryVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range bi.Deps {
			if dep.Path == "github.com/twmb/franz-go" {
				if dep.Replace != nil {
					return dep.Replace.Version
				}
				return dep.Version
			}
		}
	}
	return "unknown"
}

// truth writes ground-truth events, one JSON object per line; safe for concurrent use.
type truth struct {
	mu  sync.Mutex
	f   *os.File
	w   *bufio.Writer
	pid int
	err error
}

func newTruth(path string) (*truth, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &truth{f: f, w: bufio.NewWriter(f), pid: os.Getpid()}, nil
}

// event is an ordered list of key/value pairs, so lines read in the contract's order.
type event []kv

type kv struct {
	k string
	v any
}

func (t *truth) write(ev event) {
	var b strings.Builder
	b.WriteByte('{')
	for i, p := range ev {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(p.k)
		v, err := json.Marshal(p.v)
		if err != nil {
			v = []byte("null")
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteString("}\n")
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, err := t.w.WriteString(b.String()); err != nil && t.err == nil {
		t.err = err
	}
}

func (t *truth) close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.w.Flush(); err != nil && t.err == nil {
		t.err = err
	}
	if err := t.f.Close(); err != nil && t.err == nil {
		t.err = err
	}
	return t.err
}

// value returns the deterministic value of record seq: lowercase letters, shifted by seq.
func value(seq, size int) []byte {
	v := make([]byte, size)
	for i := range v {
		v[i] = byte('a' + (seq+i)%26)
	}
	return v
}

func traceparent() string {
	var id [24]byte
	if _, err := rand.Read(id[:]); err != nil {
		panic(err)
	}
	id[0] |= 1 // never the all-zero (invalid) trace id
	id[16] |= 1
	return "00-" + hex.EncodeToString(id[:16]) + "-" + hex.EncodeToString(id[16:]) + "-01"
}

func headerValue(r *kgo.Record, key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	o, err := parseOptions(args)
	if err != nil {
		return report(err)
	}
	t, err := newTruth(o.out)
	if err != nil {
		return report(fail(exitError, "cannot write --out: %v", err))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(o.timeoutS*float64(time.Second)))
	defer cancel()

	t.write(event{
		{"event", "start"}, {"client", clientName}, {"pid", t.pid}, {"client_id", o.clientID},
		{"version", libraryVersion()}, {"time_ns", time.Now().UnixNano()},
	})
	produced, consumed, err := work(ctx, o, t)
	t.write(event{
		{"event", "done"}, {"client", clientName}, {"pid", t.pid}, {"produced", produced},
		{"consumed", consumed}, {"time_ns", time.Now().UnixNano()},
	})
	if cerr := t.close(); cerr != nil && err == nil {
		err = fail(exitError, "writing --out: %v", cerr)
	}
	if err != nil && ctx.Err() != nil {
		var ee *exitErr
		if !errors.As(err, &ee) || ee.code == exitError {
			err = fail(exitTimeout, "timed out after %gs: %v", o.timeoutS, err)
		}
	}
	return report(err)
}

func report(err error) int {
	if err == nil {
		return exitOK
	}
	code := exitError
	var ee *exitErr
	if errors.As(err, &ee) {
		code = ee.code
	}
	fmt.Fprintln(os.Stderr, "go workload:", err)
	return code
}

// work runs the configured mode and returns how many records were produced and consumed.
func work(ctx context.Context, o *options, t *truth) (produced, consumed int, err error) {
	// The topic is created if missing in every mode (a consumer may start before its producer).
	start, err := prepareTopic(ctx, o) // each partition's end offset before producing
	if err != nil {
		return 0, 0, err
	}
	if o.mode != "consume" {
		if produced, err = produce(ctx, o, t); err != nil {
			return produced, 0, err
		}
	}
	if o.mode != "produce" {
		want := o.messages
		if o.mode == "both" {
			want = produced
		} else {
			start = nil // mode consume: every record counts
		}
		consumed, err = consume(ctx, o, t, want, start)
	}
	return produced, consumed, err
}

// connOptions are the brokers and how to reach them: TLS (franz-go sets ServerName to the
// address dialed, so the certificate is checked against 127.0.0.1) and SASL/PLAIN.
func connOptions(o *options) []kgo.Opt {
	opts := []kgo.Opt{kgo.SeedBrokers(strings.Split(o.bootstrap, ",")...)}
	if o.tlsConfig != nil {
		opts = append(opts, kgo.DialTLSConfig(o.tlsConfig))
	}
	if strings.HasPrefix(o.securityProto, "SASL_") {
		opts = append(opts, kgo.SASL(plain.Auth{User: o.saslUser, Pass: o.saslPassword}.AsMechanism()))
	}
	return opts
}

// prepareTopic creates the topic if missing and returns the partitions' end offsets.
func prepareTopic(ctx context.Context, o *options) (map[int32]int64, error) {
	cl, err := kgo.NewClient(append(connOptions(o), kgo.ClientID(o.clientID+"-admin"))...)
	if err != nil {
		return nil, fail(exitError, "admin client: %v", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	resp, err := adm.CreateTopic(ctx, int32(o.partitions), -1, nil, o.topic)
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return nil, fail(exitError, "create topic %s: %v", o.topic, err)
	}
	if err == nil && resp.Err != nil && !errors.Is(resp.Err, kerr.TopicAlreadyExists) {
		return nil, fail(exitError, "create topic %s: %v", o.topic, resp.Err)
	}
	// Wait until every partition has a leader and its end offset can be listed.
	for {
		ends, err := adm.ListEndOffsets(ctx, o.topic)
		if err == nil && ends.Error() == nil {
			offsets := map[int32]int64{}
			ends.Each(func(l kadm.ListedOffset) { offsets[l.Partition] = l.Offset })
			if len(offsets) > 0 {
				return offsets, nil
			}
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = ends.Error()
			}
			return nil, fail(exitError, "topic %s not ready: %v", o.topic, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func producerOptions(o *options) []kgo.Opt {
	opts := append(connOptions(o),
		kgo.ClientID(o.clientID+"-p"),
		kgo.DefaultProduceTopic(o.topic),
		kgo.ProducerLinger(time.Duration(o.lingerMs)*time.Millisecond),
		kgo.ProducerBatchMaxBytes(int32(o.batchSize)),
	)
	switch o.compression {
	case "none":
		opts = append(opts, kgo.ProducerBatchCompression(kgo.NoCompression()))
	case "gzip":
		opts = append(opts, kgo.ProducerBatchCompression(kgo.GzipCompression()))
	case "snappy":
		opts = append(opts, kgo.ProducerBatchCompression(kgo.SnappyCompression()))
	case "lz4":
		opts = append(opts, kgo.ProducerBatchCompression(kgo.Lz4Compression()))
	case "zstd":
		opts = append(opts, kgo.ProducerBatchCompression(kgo.ZstdCompression()))
	}
	switch o.acks {
	case "0":
		opts = append(opts, kgo.RequiredAcks(kgo.NoAck()), kgo.DisableIdempotentWrite())
	case "1":
		opts = append(opts, kgo.RequiredAcks(kgo.LeaderAck()), kgo.DisableIdempotentWrite())
	default:
		opts = append(opts, kgo.RequiredAcks(kgo.AllISRAcks()))
	}
	if o.transactional {
		opts = append(opts, kgo.TransactionalID(o.clientID+"-tx"))
	}
	return opts
}

func produce(ctx context.Context, o *options, t *truth) (int, error) {
	cl, err := kgo.NewClient(producerOptions(o)...)
	if err != nil {
		return 0, fail(exitError, "producer: %v", err)
	}
	defer cl.Close()
	clientID := o.clientID + "-p"

	if o.transactional {
		if err := cl.BeginTransaction(); err != nil {
			return 0, fail(exitError, "begin transaction: %v", err)
		}
	}

	var (
		mu       sync.Mutex
		acked    int
		firstErr error
		wg       sync.WaitGroup
	)
	began := time.Now()
	for seq := 0; seq < o.messages; seq++ {
		if o.rate > 0 {
			due := began.Add(time.Duration(float64(seq) / o.rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(d):
				}
			}
		}
		if ctx.Err() != nil {
			break
		}
		key := "k" + strconv.Itoa(seq)
		r := &kgo.Record{Key: []byte(key), Value: value(seq, o.size)}
		tp := ""
		if o.headers {
			tp = traceparent()
			r.Headers = []kgo.RecordHeader{{Key: "traceparent", Value: []byte(tp)}}
		}
		sendNs := time.Now().UnixNano()
		wg.Add(1)
		cl.Produce(ctx, r, func(r *kgo.Record, err error) {
			defer wg.Done()
			ackNs := time.Now().UnixNano()
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				return
			}
			var offset any = r.Offset
			if o.acks == "0" {
				offset = nil // no response, so no offset
			}
			ev := event{
				{"event", "produce"}, {"client", clientName}, {"pid", t.pid}, {"client_id", clientID},
				{"topic", r.Topic}, {"partition", r.Partition}, {"offset", offset},
				{"timestamp_ms", r.Timestamp.UnixMilli()}, {"send_ns", sendNs}, {"ack_ns", ackNs},
				{"key", key}, {"value_size", len(r.Value)},
			}
			if tp != "" {
				ev = append(ev, kv{"traceparent", tp})
			}
			t.write(ev)
			mu.Lock()
			acked++
			mu.Unlock()
		})
	}
	flushErr := cl.Flush(ctx)
	wg.Wait()
	if firstErr == nil && flushErr != nil {
		firstErr = flushErr
	}
	if o.transactional {
		commit := kgo.TryCommit
		if firstErr != nil || ctx.Err() != nil {
			commit = kgo.TryAbort
		}
		// Committing/aborting gets its own short deadline so a timed out run still ends the transaction.
		endCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := cl.EndTransaction(endCtx, commit)
		cancel()
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("end transaction: %w", err)
		}
	}
	if firstErr != nil {
		return acked, fail(exitError, "produce: %v", firstErr)
	}
	if acked != o.messages {
		return acked, fail(exitTimeout, "produced %d of %d records", acked, o.messages)
	}
	return acked, nil
}

func consumerOptions(o *options) []kgo.Opt {
	opts := append(connOptions(o),
		kgo.ClientID(o.clientID+"-c"),
		kgo.ConsumerGroup(o.group),
		kgo.ConsumeTopics(o.topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.AutoCommitInterval(time.Second),
	)
	if o.groupProtocol == "consumer" {
		// KIP-848: the broker assigns partitions ("uniform" assignor for the sticky balancer).
		opts = append(opts, kgo.Balancers(kgo.CooperativeStickyBalancer()), kgo.ServerSideBalancer())
	}
	if o.transactional {
		opts = append(opts, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	}
	if o.fetchMaxBytes > 0 {
		opts = append(opts, kgo.FetchMaxBytes(int32(o.fetchMaxBytes)))
	}
	if o.partFetchMax > 0 {
		opts = append(opts, kgo.FetchMaxPartitionBytes(int32(o.partFetchMax)))
	}
	return opts
}

// handle is the application's own work per record: --process-ms each (from the record after
// --process-after to --process-until), and once --hang-after
// records a hang of --hang-s seconds (0: until killed), the poll loop blocked in the handler.
func handle(o *options, got int) {
	if o.processMs > 0 && got > o.processAfter && (o.processUntil < 0 || got <= o.processUntil) {
		time.Sleep(time.Duration(o.processMs * float64(time.Millisecond)))
	}
	if got == o.hangAfter {
		if o.hangS > 0 {
			time.Sleep(time.Duration(o.hangS * float64(time.Second)))
		} else {
			select {}
		}
	}
}

// consume reads until want records were consumed. With start (mode both) only records at
// or after the partitions' pre-produce end offsets count (and are written): those are the
// ones this run produced.
func consume(ctx context.Context, o *options, t *truth, want int, start map[int32]int64) (int, error) {
	cl, err := kgo.NewClient(consumerOptions(o)...)
	if err != nil {
		return 0, fail(exitError, "consumer: %v", err)
	}
	defer cl.Close()
	clientID := o.clientID + "-c"

	got := 0
	for got < want {
		fetches := cl.PollFetches(ctx)
		consumeNs := time.Now().UnixNano()
		if ctx.Err() != nil {
			break
		}
		var fetchErr error
		fetches.EachError(func(topic string, partition int32, err error) {
			if fetchErr == nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				fetchErr = fmt.Errorf("%s[%d]: %w", topic, partition, err)
			}
		})
		if fetchErr != nil {
			return got, fail(exitError, "fetch: %v", fetchErr)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			if start != nil && r.Offset < start[r.Partition] {
				return // older than this run
			}
			if got >= want {
				return
			}
			got++
			ev := event{
				{"event", "consume"}, {"client", clientName}, {"pid", t.pid}, {"client_id", clientID},
				{"group", o.group}, {"topic", r.Topic}, {"partition", r.Partition}, {"offset", r.Offset},
				{"timestamp_ms", r.Timestamp.UnixMilli()}, {"consume_ns", consumeNs}, {"key", string(r.Key)},
			}
			if tp, ok := headerValue(r, "traceparent"); ok {
				ev = append(ev, kv{"traceparent", tp})
			}
			t.write(ev)
			handle(o, got)
		})
	}
	// Commit what was consumed, then leave the group, each with a bounded wait.
	commitCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	commitErr := cl.CommitUncommittedOffsets(commitCtx)
	cancel()
	if got < want {
		return got, fail(exitTimeout, "consumed %d of %d records", got, want)
	}
	if commitErr != nil {
		return got, fail(exitError, "commit offsets: %v", commitErr)
	}
	return got, nil
}
