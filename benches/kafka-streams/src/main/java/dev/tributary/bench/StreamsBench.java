package dev.tributary.bench;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;

/**
 * The Kafka Streams side of the throughput bench: runs one job until told to stop.
 *
 * <pre>
 * java -jar kafka-streams-bench.jar JOB BOOTSTRAP INPUT OUTPUT APPLICATION_ID RECORDS GUARANTEE
 *     [--http 127.0.0.1:PORT] [--state-dir DIR] [--threads N] [--commit-interval-ms MS]
 * </pre>
 *
 * <ul>
 *   <li>JOB: `count-sum` (no sink; OUTPUT is ignored, pass `-`), `stateless` or `window`;
 *   <li>RECORDS: how many input records to expect (the app says when it has seen them all);
 *   <li>GUARANTEE: `processing.guarantee`, `at_least_once` or `exactly_once_v2`;
 *   <li>`--threads`: `num.stream.threads` (default: available cores);
 *   <li>`--commit-interval-ms`: `commit.interval.ms` (default 1000, the bench's Tributary runs').
 * </ul>
 *
 * Everything else is Kafka Streams' default (RocksDB stores, 10 MiB record cache, ...). Stops
 * on `GET /shutdown` (exit 0) or SIGTERM.
 */
public final class StreamsBench {
    private StreamsBench() {}

    public static void main(String[] args) throws Exception {
        // Before any logger exists: Kafka's INFO logging is a page per client; warnings stay.
        if (System.getProperty("org.slf4j.simpleLogger.defaultLogLevel") == null) {
            System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        }
        List<String> positional = new ArrayList<>();
        String http = null;
        String stateDir = null;
        int threads = Runtime.getRuntime().availableProcessors();
        long commitMs = 1000;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--http" -> http = value(args, ++i);
                case "--state-dir" -> stateDir = value(args, ++i);
                case "--threads" -> threads = Integer.parseInt(value(args, ++i));
                case "--commit-interval-ms" -> commitMs = Long.parseLong(value(args, ++i));
                default -> positional.add(args[i]);
            }
        }
        if (positional.size() != 7) {
            usage("expected 7 arguments, got " + positional.size() + ": " + positional);
        }
        String job = positional.get(0);
        String bootstrap = positional.get(1);
        String input = positional.get(2);
        String output = positional.get(3);
        String appId = positional.get(4);
        long expected = Long.parseLong(positional.get(5));
        String guarantee = positional.get(6);
        if (!guarantee.equals(StreamsConfig.AT_LEAST_ONCE) && !guarantee.equals(StreamsConfig.EXACTLY_ONCE_V2)) {
            usage("GUARANTEE must be at_least_once or exactly_once_v2, not '" + guarantee + "'");
        }
        if (stateDir == null) {
            stateDir = Files.createTempDirectory("kafka-streams-bench-").toString();
        }

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, commitMs);
        props.put(StreamsConfig.STATE_DIR_CONFIG, Path.of(stateDir).toString());
        // Kafka Streams' own default, stated: a new application reads the topic from the start.
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

        Progress progress = new Progress(expected);
        Topology topology = Jobs.build(job, input, output, progress);
        KafkaStreams streams = new KafkaStreams(topology, props);
        CountDownLatch shutdown = new CountDownLatch(1);
        CountDownLatch closed = new CountDownLatch(1);
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("kafka-streams-bench: stream thread failed: " + e);
            e.printStackTrace();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
                    .StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                shutdown.countDown();
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            shutdown.countDown();
            try {
                closed.await();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }));

        TreeMap<String, Object> shown = new TreeMap<>();
        props.forEach((k, v) -> shown.put(k.toString(), v));
        System.out.println("kafka-streams-bench: job " + job + ", input " + input + ", output " + output
                + ", settings " + shown);
        System.out.println("kafka-streams-bench: topology " + topology.describe().toString().replace('\n', ' '));
        System.out.flush();

        Http server = http == null ? null : new Http(http, streams, progress, shutdown);
        streams.start();
        shutdown.await();
        boolean failed = streams.state() == KafkaStreams.State.ERROR;
        streams.close();
        if (server != null) {
            server.stop();
        }
        System.out.println("kafka-streams-bench: closed after " + progress.records() + " records");
        System.out.flush();
        closed.countDown();
        System.exit(failed ? 1 : 0);
    }

    private static String value(String[] args, int i) {
        if (i >= args.length) {
            usage(args[i - 1] + " needs a value");
        }
        return args[i];
    }

    private static void usage(String problem) {
        System.err.println("kafka-streams-bench: " + problem);
        System.err.println("usage: JOB BOOTSTRAP INPUT OUTPUT APPLICATION_ID RECORDS GUARANTEE"
                + " [--http HOST:PORT] [--state-dir DIR] [--threads N] [--commit-interval-ms MS]");
        System.exit(2);
    }
}
