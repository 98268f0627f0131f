package dev.tributary.bench;

import dev.tributary.bench.Json.Click;
import dev.tributary.bench.Json.Doubled;
import dev.tributary.bench.Json.Totals;
import dev.tributary.bench.Json.WindowTotals;
import java.time.Duration;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Suppressed;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.processor.TimestampExtractor;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.WindowStore;

/**
 * The topologies: each the same job as one of the bench's Tributary pipelines
 * (integration-tests/benches/throughput/). Every input record passes {@link Progress#record}
 * first, which is what the bench polls.
 */
final class Jobs {
    private Jobs() {}

    /** The count-sum store's name (queried over HTTP, like Tributary's `/state/totals/<key>`). */
    static final String TOTALS_STORE = "totals";

    /** The window job's window: 10 s tumbling, no grace (Tributary's default `grace`, 0 s). */
    static final TimeWindows WINDOW = TimeWindows.ofSizeWithNoGrace(Duration.ofSeconds(10));

    static final Serde<String> KEYS = Serdes.String();
    static final Serde<Click> CLICKS = Json.serde(Click.class);
    static final Serde<Totals> TOTALS = Json.serde(Totals.class);

    static Topology build(String job, String input, String output, Progress progress) {
        StreamsBuilder builder = new StreamsBuilder();
        switch (job) {
            case "count-sum" -> countSum(builder, input, progress);
            case "stateless" -> stateless(builder, input, output, progress);
            case "window" -> window(builder, input, output, progress);
            default -> throw new IllegalArgumentException(
                    "unknown job '" + job + "': expected count-sum, stateless or window");
        }
        return builder.build();
    }

    private static KStream<String, Click> source(
            StreamsBuilder builder, String input, Progress progress, Consumed<String, Click> consumed) {
        return builder.stream(input, consumed).peek((k, v) -> progress.record());
    }

    /**
     * Tributary: `aggregate = { fields = { count = "count()", total = "sum(amount)" } }`, no sink.
     * Here: a KTable per record key in the default store (RocksDB, with its changelog topic).
     */
    private static void countSum(StreamsBuilder builder, String input, Progress progress) {
        source(builder, input, progress, Consumed.with(KEYS, CLICKS))
                .groupByKey(Grouped.with(KEYS, CLICKS))
                .aggregate(
                        Totals::zero,
                        (key, click, totals) -> totals.add(click.amount()),
                        Materialized.<String, Totals, KeyValueStore<Bytes, byte[]>>as(TOTALS_STORE)
                                .withKeySerde(KEYS)
                                .withValueSerde(TOTALS));
    }

    /**
     * Tributary: `filter = "amount > 50"`, `map = "{'user': user, 'amount': amount * 2}"`, JSON
     * sink. The key stays the input key.
     */
    private static void stateless(
            StreamsBuilder builder, String input, String output, Progress progress) {
        source(builder, input, progress, Consumed.with(KEYS, CLICKS))
                .filter((key, click) -> click.amount() > 50)
                .mapValues(click -> new Doubled(click.user(), click.amount() * 2))
                .to(output, Produced.with(KEYS, Json.serde(Doubled.class)));
    }

    /**
     * Tributary: `window = { kind = "tumbling", size = "10s" }`, count and sum, `emit = "final"`,
     * JSON sink; event time is the record timestamp, which `tributary generate` sets to `ts`.
     * Here event time is read from `ts` by a TimestampExtractor, and `suppress(untilWindowCloses)`
     * emits each window once, when stream time passes its end (+ grace, 0).
     */
    private static void window(StreamsBuilder builder, String input, String output, Progress progress) {
        source(builder, input, progress, Consumed.with(KEYS, CLICKS).withTimestampExtractor(new TsExtractor()))
                .groupByKey(Grouped.with(KEYS, CLICKS))
                .windowedBy(WINDOW)
                .aggregate(
                        Totals::zero,
                        (key, click, totals) -> totals.add(click.amount()),
                        Materialized.<String, Totals, WindowStore<Bytes, byte[]>>with(KEYS, TOTALS))
                .suppress(Suppressed.untilWindowCloses(Suppressed.BufferConfig.unbounded()))
                .toStream()
                .map((windowed, t) -> KeyValue.pair(
                        windowed.key(),
                        new WindowTotals(
                                t.count(), t.total(), windowed.window().start(), windowed.window().end())))
                .to(output, Produced.with(KEYS, Json.serde(WindowTotals.class)));
    }

    /** Event time from the value's `ts` field (the record timestamp if the value has none). */
    static final class TsExtractor implements TimestampExtractor {
        @Override
        public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
            return record.value() instanceof Click click ? click.ts() : record.timestamp();
        }
    }
}
