package dev.tributary.bench;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import dev.tributary.bench.Json.Totals;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StoreQueryParameters;
import org.apache.kafka.streams.errors.InvalidStateStoreException;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.QueryableStoreTypes;
import org.apache.kafka.streams.state.ReadOnlyKeyValueStore;

/**
 * The bench's view of the app, on the loopback address it is given (JDK HTTP server, one
 * thread):
 *
 * <ul>
 *   <li>`GET /metrics`: `ks_records_consumed_total N` (input records processed so far),
 *       `ks_first_to_last_seconds S` once all expected records were seen, `ks_running 0|1`;
 *   <li>`GET /state/<key>`: the count-sum store's `{"count","total"}` for a key (interactive
 *       query; 404 when absent, 503 while the store is not queryable);
 *   <li>`GET /state`: `{"keys","count","total"}` summed over the whole store;
 *   <li>`GET /shutdown`: closes Kafka Streams (a last commit) and exits 0.
 * </ul>
 */
final class Http {
    private final HttpServer server;

    Http(String listen, KafkaStreams streams, Progress progress, CountDownLatch shutdown)
            throws IOException {
        int colon = listen.lastIndexOf(':');
        InetSocketAddress addr =
                new InetSocketAddress(listen.substring(0, colon), Integer.parseInt(listen.substring(colon + 1)));
        server = HttpServer.create(addr, 16);
        server.createContext("/metrics", ex -> reply(ex, 200, metrics(streams, progress)));
        server.createContext("/state", ex -> state(ex, streams));
        server.createContext("/shutdown", ex -> {
            reply(ex, 200, "closing\n");
            shutdown.countDown();
        });
        server.start();
    }

    void stop() {
        server.stop(0);
    }

    private static String metrics(KafkaStreams streams, Progress progress) {
        boolean running = streams.state() == KafkaStreams.State.RUNNING;
        return "ks_records_consumed_total " + progress.records() + "\n"
                + "ks_first_to_last_seconds " + progress.firstToLastSeconds() + "\n"
                + "ks_running " + (running ? 1 : 0) + "\n";
    }

    private static void state(HttpExchange ex, KafkaStreams streams) throws IOException {
        ReadOnlyKeyValueStore<String, Totals> store;
        try {
            store = streams.store(StoreQueryParameters.fromNameAndType(
                    Jobs.TOTALS_STORE, QueryableStoreTypes.<String, Totals>keyValueStore()));
        } catch (InvalidStateStoreException e) {
            reply(ex, 503, "{\"error\": \"store not queryable: " + e.getMessage().replace('"', '\'') + "\"}\n");
            return;
        }
        String path = ex.getRequestURI().getPath();
        String prefix = "/state/";
        if (path.startsWith(prefix) && path.length() > prefix.length()) {
            Totals t = store.get(path.substring(prefix.length()));
            if (t == null) {
                reply(ex, 404, "{}\n");
            } else {
                reply(ex, 200, Json.text(t) + "\n");
            }
            return;
        }
        long keys = 0;
        long count = 0;
        long total = 0;
        try (KeyValueIterator<String, Totals> all = store.all()) {
            while (all.hasNext()) {
                KeyValue<String, Totals> kv = all.next();
                keys++;
                count += kv.value.count();
                total += kv.value.total();
            }
        }
        reply(ex, 200, Json.text(Map.of("keys", keys, "count", count, "total", total)) + "\n");
    }

    private static void reply(HttpExchange ex, int code, String body) throws IOException {
        byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
        ex.sendResponseHeaders(code, bytes.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(bytes);
        }
    }
}
