package io.otelkafkaebpf.workload;

import java.io.BufferedWriter;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.kafka.clients.CommonClientConfigs;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.config.SaslConfigs;
import org.apache.kafka.common.config.SslConfigs;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.common.utils.AppInfoParser;

/**
 * The Java (kafka-clients) workload of otel-kafka-ebpf's tests.
 *
 * <p>Follows tests/workloads/CONTRACT.md: produces --messages records to --topic, then (mode both)
 * consumes them back in a consumer group, and writes the ground truth (what it produced and
 * consumed, with wall clock times) as JSON lines to --out.
 */
public final class Workload {
    static final String CLIENT = "java";
    static final int EXIT_OK = 0, EXIT_ERROR = 1, EXIT_TIMEOUT = 2, EXIT_UNSUPPORTED = 3;

    /** A failure and the exit code it maps to. */
    static final class Fail extends Exception {
        private static final long serialVersionUID = 1L;
        final int code;

        Fail(int code, String message) {
            super(message);
            this.code = code;
        }
    }

    // ------------------------------------------------------------------ options

    static final class Options {
        String bootstrap, topic, out;
        int partitions = 1, messages = 100, size = 100, lingerMs = 5, batchSize = 16384, hangAfter = -1,
            processAfter = 0, processUntil = -1, fetchMaxBytes = 0, maxPartitionFetchBytes = 0;
        double rate = 0, timeoutS = 60, processMs = 0, hangS = 0;
        String compression = "none", acks = "all", mode = "both", group, groupProtocol = "classic";
        String clientId = "okw-" + CLIENT;
        String securityProtocol = "PLAINTEXT", caFile, saslUser, saslPassword = "";
        boolean transactional, headers;

        static Options parse(String[] args) throws Fail {
            Options o = new Options();
            for (int i = 0; i < args.length; i++) {
                String a = args[i], v = null;
                if (!a.startsWith("--")) throw new Fail(EXIT_ERROR, "unexpected argument: " + a);
                int eq = a.indexOf('=');
                if (eq > 0) {
                    v = a.substring(eq + 1);
                    a = a.substring(0, eq);
                }
                if (a.equals("--transactional") || a.equals("--headers")) {
                    boolean on = v == null || Boolean.parseBoolean(v);
                    if (a.equals("--transactional")) o.transactional = on; else o.headers = on;
                    continue;
                }
                if (v == null) {
                    if (i + 1 >= args.length) throw new Fail(EXIT_ERROR, a + " needs a value");
                    v = args[++i];
                }
                switch (a) {
                    case "--bootstrap": o.bootstrap = v; break;
                    case "--topic": o.topic = v; break;
                    case "--partitions": o.partitions = integer(a, v); break;
                    case "--messages": o.messages = integer(a, v); break;
                    case "--size": o.size = integer(a, v); break;
                    case "--rate": o.rate = number(a, v); break;
                    case "--compression": o.compression = v; break;
                    case "--acks": o.acks = v; break;
                    case "--linger-ms": o.lingerMs = integer(a, v); break;
                    case "--batch-size": o.batchSize = integer(a, v); break;
                    case "--mode": o.mode = v; break;
                    case "--group": o.group = v; break;
                    case "--group-protocol": o.groupProtocol = v; break;
                    case "--client-id": o.clientId = v; break;
                    case "--timeout-s": o.timeoutS = number(a, v); break;
                    case "--out": o.out = v; break;
                    case "--process-ms": o.processMs = number(a, v); break;
                    case "--hang-after": o.hangAfter = integer(a, v); break;
                    case "--process-after": o.processAfter = integer(a, v); break;
                    case "--process-until": o.processUntil = integer(a, v); break;
                    case "--hang-s": o.hangS = number(a, v); break;
                    case "--fetch-max-bytes": o.fetchMaxBytes = integer(a, v); break;
                    case "--max-partition-fetch-bytes": o.maxPartitionFetchBytes = integer(a, v); break;
                    case "--security-protocol": o.securityProtocol = v; break;
                    case "--ca-file": o.caFile = v; break;
                    case "--sasl-user": o.saslUser = v; break;
                    case "--sasl-password": o.saslPassword = v; break;
                    default: throw new Fail(EXIT_ERROR, "unknown option " + a);
                }
            }
            if (o.bootstrap == null || o.bootstrap.isEmpty()) throw new Fail(EXIT_ERROR, "--bootstrap is required");
            if (o.topic == null || o.topic.isEmpty()) throw new Fail(EXIT_ERROR, "--topic is required");
            if (o.out == null || o.out.isEmpty()) throw new Fail(EXIT_ERROR, "--out is required");
            if (o.partitions < 1) throw new Fail(EXIT_ERROR, "--partitions must be >= 1");
            if (o.messages < 0) throw new Fail(EXIT_ERROR, "--messages must be >= 0");
            if (o.size < 0) throw new Fail(EXIT_ERROR, "--size must be >= 0");
            if (o.rate < 0) throw new Fail(EXIT_ERROR, "--rate must be >= 0");
            if (o.lingerMs < 0) throw new Fail(EXIT_ERROR, "--linger-ms must be >= 0");
            if (o.batchSize < 1) throw new Fail(EXIT_ERROR, "--batch-size must be >= 1");
            if (!(o.timeoutS > 0)) throw new Fail(EXIT_ERROR, "--timeout-s must be > 0");
            if (o.fetchMaxBytes < 0) throw new Fail(EXIT_ERROR, "--fetch-max-bytes must be >= 0");
            if (o.maxPartitionFetchBytes < 0) throw new Fail(EXIT_ERROR, "--max-partition-fetch-bytes must be >= 0");
            oneOf("--compression", o.compression, "none", "gzip", "snappy", "lz4", "zstd");
            if (o.acks.equals("-1")) o.acks = "all";
            oneOf("--acks", o.acks, "0", "1", "all");
            oneOf("--mode", o.mode, "produce", "consume", "both");
            oneOf("--group-protocol", o.groupProtocol, "classic", "consumer");
            oneOf("--security-protocol", o.securityProtocol, "PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL");
            if (o.securityProtocol.startsWith("SASL_") && (o.saslUser == null || o.saslUser.isEmpty()))
                throw new Fail(EXIT_ERROR, "--security-protocol " + o.securityProtocol + " needs --sasl-user");
            if (o.group == null || o.group.isEmpty()) o.group = o.topic + "-group";
            if (o.transactional && !o.acks.equals("all")) {
                // Transactions need the idempotent producer, which needs acks=all.
                throw new Fail(EXIT_UNSUPPORTED, "kafka-clients: --transactional needs --acks all");
            }
            return o;
        }

        private static int integer(String name, String v) throws Fail {
            try {
                return Integer.parseInt(v);
            } catch (NumberFormatException e) {
                throw new Fail(EXIT_ERROR, name + " must be an integer, not \"" + v + "\"");
            }
        }

        private static double number(String name, String v) throws Fail {
            try {
                return Double.parseDouble(v);
            } catch (NumberFormatException e) {
                throw new Fail(EXIT_ERROR, name + " must be a number, not \"" + v + "\"");
            }
        }

        private static void oneOf(String name, String v, String... choices) throws Fail {
            for (String c : choices) if (c.equals(v)) return;
            throw new Fail(EXIT_ERROR, name + " must be " + String.join("|", choices) + ", not \"" + v + "\"");
        }
    }

    // ------------------------------------------------------------------ ground truth

    /** Ground-truth events, one JSON object per line, keys in insertion order; thread-safe. */
    static final class Truth implements AutoCloseable {
        final long pid = ProcessHandle.current().pid();
        private final BufferedWriter w;
        private IOException err;

        Truth(String path) throws IOException {
            w = Files.newBufferedWriter(Path.of(path), StandardCharsets.UTF_8);
        }

        synchronized void write(Map<String, Object> ev) {
            StringBuilder b = new StringBuilder(256).append('{');
            boolean first = true;
            for (Map.Entry<String, Object> e : ev.entrySet()) {
                if (!first) b.append(',');
                first = false;
                quote(b, e.getKey()).append(':');
                Object v = e.getValue();
                if (v == null) b.append("null");
                else if (v instanceof Number || v instanceof Boolean) b.append(v);
                else quote(b, v.toString());
            }
            b.append("}\n");
            try {
                w.write(b.toString());
            } catch (IOException e) {
                if (err == null) err = e;
            }
        }

        private static StringBuilder quote(StringBuilder b, String s) {
            b.append('"');
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                switch (c) {
                    case '"': b.append("\\\""); break;
                    case '\\': b.append("\\\\"); break;
                    case '\n': b.append("\\n"); break;
                    case '\r': b.append("\\r"); break;
                    case '\t': b.append("\\t"); break;
                    default:
                        if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
                        else b.append(c);
                }
            }
            return b.append('"');
        }

        @Override
        public synchronized void close() throws IOException {
            try {
                w.close();
            } catch (IOException e) {
                if (err == null) err = e;
            }
            if (err != null) throw err;
        }
    }

    static Map<String, Object> event(String name, Truth t) {
        Map<String, Object> ev = new LinkedHashMap<>();
        ev.put("event", name);
        ev.put("client", CLIENT);
        ev.put("pid", t.pid);
        return ev;
    }

    /** Wall clock nanoseconds since the epoch. */
    static long nowNs() {
        Instant i = Instant.now();
        return i.getEpochSecond() * 1_000_000_000L + i.getNano();
    }

    /** The deterministic value of record seq: lowercase letters, shifted by seq. */
    static byte[] value(int seq, int size) {
        byte[] v = new byte[size];
        for (int i = 0; i < size; i++) v[i] = (byte) ('a' + (seq + i) % 26);
        return v;
    }

    static String traceparent() {
        byte[] id = new byte[24];
        ThreadLocalRandom.current().nextBytes(id);
        id[0] |= 1; // never the all-zero (invalid) trace id or span id
        id[16] |= 1;
        StringBuilder b = new StringBuilder("00-");
        for (int i = 0; i < 24; i++) {
            if (i == 16) b.append('-');
            b.append(String.format("%02x", id[i] & 0xff));
        }
        return b.append("-01").toString();
    }

    // ------------------------------------------------------------------ run

    final Options o;
    final Truth t;
    final long deadline; // System.nanoTime() at which the run gives up

    Workload(Options o, Truth t) {
        this.o = o;
        this.t = t;
        this.deadline = System.nanoTime() + (long) (o.timeoutS * 1e9);
    }

    long remainingMs() {
        return Math.max(0, TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime()));
    }

    boolean expired() {
        return System.nanoTime() - deadline >= 0;
    }

    public static void main(String[] args) {
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel",
                System.getProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn"));
        System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
        System.exit(run(args));
    }

    static int run(String[] args) {
        Options o;
        try {
            o = Options.parse(args);
        } catch (Fail f) {
            return report(f);
        }
        Truth t;
        try {
            t = new Truth(o.out);
        } catch (IOException e) {
            return report(new Fail(EXIT_ERROR, "cannot write --out: " + e));
        }
        Workload wl = new Workload(o, t);
        Map<String, Object> start = event("start", t);
        start.put("client_id", o.clientId);
        start.put("version", AppInfoParser.getVersion());
        start.put("time_ns", nowNs());
        t.write(start);

        int[] counts = new int[2]; // produced, consumed
        Fail failure = null;
        try {
            wl.work(counts);
        } catch (Fail f) {
            failure = f;
        } catch (Exception e) {
            failure = new Fail(EXIT_ERROR, e.toString());
        }
        if (failure != null && failure.code == EXIT_ERROR && wl.expired()) {
            failure = new Fail(EXIT_TIMEOUT, "timed out after " + o.timeoutS + "s: " + failure.getMessage());
        }
        Map<String, Object> done = event("done", t);
        done.put("produced", counts[0]);
        done.put("consumed", counts[1]);
        done.put("time_ns", nowNs());
        t.write(done);
        try {
            t.close();
        } catch (IOException e) {
            if (failure == null) failure = new Fail(EXIT_ERROR, "writing --out: " + e);
        }
        return report(failure);
    }

    static int report(Fail f) {
        if (f == null) return EXIT_OK;
        System.err.println("java workload: " + f.getMessage());
        return f.code;
    }

    void work(int[] counts) throws Fail, InterruptedException {
        Map<Integer, Long> start = prepareTopic(); // each partition's end offset before producing
        if (!o.mode.equals("consume")) {
            counts[0] = produce(counts);
        }
        if (!o.mode.equals("produce")) {
            int want = o.mode.equals("both") ? counts[0] : o.messages;
            counts[1] = consume(want, o.mode.equals("both") ? start : null, counts);
        }
    }

    Properties common(String clientId) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, o.bootstrap);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, clientId);
        // TLS: a PEM truststore (the CA file itself); hostname verification stays on (the default "https").
        p.put(CommonClientConfigs.SECURITY_PROTOCOL_CONFIG, o.securityProtocol);
        if (o.caFile != null && !o.caFile.isEmpty()) {
            p.put(SslConfigs.SSL_TRUSTSTORE_TYPE_CONFIG, "PEM");
            p.put(SslConfigs.SSL_TRUSTSTORE_LOCATION_CONFIG, o.caFile);
        }
        if (o.securityProtocol.startsWith("SASL_")) {
            p.put(SaslConfigs.SASL_MECHANISM, "PLAIN");
            p.put(SaslConfigs.SASL_JAAS_CONFIG, "org.apache.kafka.common.security.plain.PlainLoginModule required"
                    + " username=\"" + jaasEscape(o.saslUser) + "\" password=\"" + jaasEscape(o.saslPassword) + "\";");
        }
        return p;
    }

    /** A JAAS option value between double quotes. */
    static String jaasEscape(String s) {
        return s.replace("\\", "\\\\").replace("\"", "\\\"");
    }

    /** Creates the topic if missing; returns the partitions' end offsets once all have a leader. */
    Map<Integer, Long> prepareTopic() throws Fail, InterruptedException {
        Properties p = common(o.clientId + "-admin");
        int apiTimeout = (int) Math.max(1000, Math.min(Integer.MAX_VALUE, remainingMs()));
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, apiTimeout);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, Math.min(apiTimeout, 30000));
        try (Admin admin = Admin.create(p)) {
            try {
                admin.createTopics(List.of(new NewTopic(o.topic, Optional.of(o.partitions), Optional.empty())))
                        .all().get(Math.max(1, remainingMs()), TimeUnit.MILLISECONDS);
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof TopicExistsException)) {
                    throw new Fail(EXIT_ERROR, "create topic " + o.topic + ": " + e.getCause());
                }
            } catch (java.util.concurrent.TimeoutException e) {
                throw new Fail(EXIT_TIMEOUT, "create topic " + o.topic + ": timed out");
            }
            Exception last = null;
            while (!expired()) {
                try {
                    TopicDescription d = admin.describeTopics(List.of(o.topic)).allTopicNames()
                            .get(Math.max(1, remainingMs()), TimeUnit.MILLISECONDS).get(o.topic);
                    Map<TopicPartition, OffsetSpec> want = new HashMap<>();
                    boolean leaders = true;
                    for (TopicPartitionInfo pi : d.partitions()) {
                        leaders &= pi.leader() != null;
                        want.put(new TopicPartition(o.topic, pi.partition()), OffsetSpec.latest());
                    }
                    if (leaders && !want.isEmpty()) {
                        Map<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> ends = admin.listOffsets(want)
                                .all().get(Math.max(1, remainingMs()), TimeUnit.MILLISECONDS);
                        Map<Integer, Long> offsets = new HashMap<>();
                        ends.forEach((tp, info) -> offsets.put(tp.partition(), info.offset()));
                        return offsets;
                    }
                } catch (ExecutionException | java.util.concurrent.TimeoutException e) {
                    last = e;
                }
                Thread.sleep(100);
            }
            throw new Fail(EXIT_TIMEOUT, "topic " + o.topic + " not ready: " + last);
        }
    }

    int produce(int[] counts) throws Fail, InterruptedException {
        String clientId = o.clientId + "-p";
        Properties p = common(clientId);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.put(ProducerConfig.ACKS_CONFIG, o.acks);
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, o.acks.equals("all"));
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, o.compression);
        p.put(ProducerConfig.LINGER_MS_CONFIG, o.lingerMs);
        p.put(ProducerConfig.BATCH_SIZE_CONFIG, o.batchSize);
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, Math.max(1000, remainingMs()));
        if (o.transactional) p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, o.clientId + "-tx");

        AtomicInteger acked = new AtomicInteger();
        AtomicReference<Exception> firstErr = new AtomicReference<>();
        CountDownLatch pending = new CountDownLatch(o.messages);
        KafkaProducer<String, byte[]> producer = new KafkaProducer<>(p);
        boolean finished = false;
        try {
            if (o.transactional) {
                producer.initTransactions();
                producer.beginTransaction();
            }
            long began = System.nanoTime();
            int seq = 0;
            for (; seq < o.messages; seq++) {
                if (o.rate > 0) {
                    long due = began + (long) (seq / o.rate * 1e9);
                    long wait = Math.min(due - System.nanoTime(), deadline - System.nanoTime());
                    if (wait > 0) TimeUnit.NANOSECONDS.sleep(wait);
                }
                if (expired() || firstErr.get() != null) break;
                String key = "k" + seq;
                List<Header> headers = new ArrayList<>();
                String tp = null;
                if (o.headers) {
                    tp = traceparent();
                    headers.add(new RecordHeader("traceparent", tp.getBytes(StandardCharsets.UTF_8)));
                }
                ProducerRecord<String, byte[]> rec =
                        new ProducerRecord<>(o.topic, null, null, key, value(seq, o.size), headers);
                final String traceparent = tp;
                final int valueSize = o.size;
                long sendNs = nowNs();
                producer.send(rec, (md, ex) -> {
                    long ackNs = nowNs();
                    try {
                        if (ex != null) {
                            firstErr.compareAndSet(null, ex);
                            return;
                        }
                        Map<String, Object> ev = event("produce", t);
                        ev.put("client_id", clientId);
                        ev.put("topic", md.topic());
                        ev.put("partition", md.partition());
                        ev.put("offset", md.hasOffset() ? md.offset() : null); // acks=0: no offset
                        ev.put("timestamp_ms", md.hasTimestamp() ? md.timestamp() : null);
                        ev.put("send_ns", sendNs);
                        ev.put("ack_ns", ackNs);
                        ev.put("key", key);
                        ev.put("value_size", valueSize);
                        if (traceparent != null) ev.put("traceparent", traceparent);
                        t.write(ev);
                        counts[0] = acked.incrementAndGet();
                    } finally {
                        pending.countDown();
                    }
                });
            }
            for (int i = seq; i < o.messages; i++) pending.countDown(); // never sent
            // No flush(): it cannot be bounded by the deadline; linger sends the last batch anyway.
            if (!pending.await(Math.max(1, remainingMs()), TimeUnit.MILLISECONDS)) {
                throw new Fail(EXIT_TIMEOUT, "produced " + acked.get() + " of " + o.messages + " records");
            }
            if (firstErr.get() != null) throw new Fail(EXIT_ERROR, "produce: " + firstErr.get());
            if (o.transactional) producer.commitTransaction();
            finished = true;
        } catch (org.apache.kafka.common.KafkaException e) {
            throw new Fail(EXIT_ERROR, "produce: " + e);
        } finally {
            if (o.transactional && !finished) {
                try {
                    producer.abortTransaction();
                } catch (RuntimeException ignored) {
                    // the run already failed; the broker times the transaction out
                }
            }
            producer.close(Duration.ofMillis(finished ? 10000 : 0));
        }
        if (acked.get() != o.messages) {
            throw new Fail(EXIT_TIMEOUT, "produced " + acked.get() + " of " + o.messages + " records");
        }
        return acked.get();
    }

    /**
     * Consumes until want records were consumed. With start (mode both) only records at or after the
     * partitions' pre-produce end offsets count (and are written): those are the ones this run produced.
     */
    /** The application's own work per record: --process-ms each (from the record after --process-after to
     * --process-until), and once --hang-after records a hang of
     * --hang-s seconds (0: until killed), the poll loop blocked in the handler. */
    void handle(int got) {
        try {
            if (o.processMs > 0 && got > o.processAfter && (o.processUntil < 0 || got <= o.processUntil))
                Thread.sleep((long) o.processMs, (int) ((o.processMs % 1) * 1_000_000));
            if (got == o.hangAfter) {
                if (o.hangS > 0) Thread.sleep((long) (o.hangS * 1000));
                else Thread.sleep(Long.MAX_VALUE);
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    int consume(int want, Map<Integer, Long> start, int[] counts) throws Fail {
        String clientId = o.clientId + "-c";
        Properties p = common(clientId);
        p.put(ConsumerConfig.GROUP_ID_CONFIG, o.group);
        p.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, o.groupProtocol);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, true);
        p.put(ConsumerConfig.AUTO_COMMIT_INTERVAL_MS_CONFIG, 1000);
        if (o.transactional) p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        if (o.fetchMaxBytes > 0) p.put(ConsumerConfig.FETCH_MAX_BYTES_CONFIG, o.fetchMaxBytes);
        if (o.maxPartitionFetchBytes > 0)
            p.put(ConsumerConfig.MAX_PARTITION_FETCH_BYTES_CONFIG, o.maxPartitionFetchBytes);

        int got = 0;
        try (KafkaConsumer<String, byte[]> consumer = new KafkaConsumer<>(p)) {
            consumer.subscribe(List.of(o.topic));
            while (got < want && !expired()) {
                ConsumerRecords<String, byte[]> records =
                        consumer.poll(Duration.ofMillis(Math.max(1, Math.min(500, remainingMs()))));
                long consumeNs = nowNs();
                for (ConsumerRecord<String, byte[]> r : records) {
                    if (start != null && r.offset() < start.getOrDefault(r.partition(), 0L)) continue;
                    if (got >= want) break;
                    got++;
                    Map<String, Object> ev = event("consume", t);
                    ev.put("client_id", clientId);
                    ev.put("group", o.group);
                    ev.put("topic", r.topic());
                    ev.put("partition", r.partition());
                    ev.put("offset", r.offset());
                    ev.put("timestamp_ms", r.timestamp());
                    ev.put("consume_ns", consumeNs);
                    ev.put("key", r.key());
                    Header h = r.headers().lastHeader("traceparent");
                    if (h != null) ev.put("traceparent", new String(h.value(), StandardCharsets.UTF_8));
                    t.write(ev);
                    counts[1] = got;
                    handle(got);
                }
            }
            // Commit what was consumed (bounded wait); closing then leaves the group.
            RuntimeException commitErr = null;
            try {
                consumer.commitSync(Duration.ofSeconds(10));
            } catch (RuntimeException e) {
                commitErr = e;
            }
            if (got < want) throw new Fail(EXIT_TIMEOUT, "consumed " + got + " of " + want + " records");
            if (commitErr != null) throw new Fail(EXIT_ERROR, "commit offsets: " + commitErr);
        } catch (org.apache.kafka.common.KafkaException e) {
            throw new Fail(EXIT_ERROR, "consume: " + e);
        }
        return got;
    }
}
