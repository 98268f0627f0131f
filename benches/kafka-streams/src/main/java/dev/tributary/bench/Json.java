package dev.tributary.bench;

import com.fasterxml.jackson.annotation.JsonProperty;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.ObjectReader;
import com.fasterxml.jackson.databind.ObjectWriter;
import java.io.IOException;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/**
 * The records of the bench's jobs and their JSON serdes (Jackson, as a Kafka Streams user
 * would write them; values in the state stores are JSON too, as in Tributary's stores).
 */
final class Json {
    private Json() {}

    private static final ObjectMapper MAPPER =
            new ObjectMapper().disable(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES);

    /** An input record, as `tributary generate` writes it: `{"user","amount","ts"}`. */
    record Click(String user, long amount, long ts) {}

    /** Count and sum of amount (the value of the count-sum store and windows). */
    record Totals(long count, long total) {
        static Totals zero() {
            return new Totals(0, 0);
        }

        Totals add(long amount) {
            return new Totals(count + 1, total + amount);
        }
    }

    /** The stateless job's output: `{"user": user, "amount": amount * 2}`. */
    record Doubled(String user, long amount) {}

    /** The window job's output, shaped as Tributary's windowed aggregate output. */
    record WindowTotals(
            long count,
            long total,
            @JsonProperty("window_start") long windowStart,
            @JsonProperty("window_end") long windowEnd) {}

    /** A JSON serde for `type`. */
    static <T> Serde<T> serde(Class<T> type) {
        ObjectReader reader = MAPPER.readerFor(type);
        ObjectWriter writer = MAPPER.writerFor(type);
        Serializer<T> ser =
                (topic, value) -> {
                    if (value == null) {
                        return null;
                    }
                    try {
                        return writer.writeValueAsBytes(value);
                    } catch (IOException e) {
                        throw new SerializationException("JSON encoding of " + type.getSimpleName(), e);
                    }
                };
        Deserializer<T> de =
                (topic, bytes) -> {
                    if (bytes == null) {
                        return null;
                    }
                    try {
                        return reader.readValue(bytes);
                    } catch (IOException e) {
                        throw new SerializationException(
                                "JSON decoding of " + type.getSimpleName() + " from " + topic, e);
                    }
                };
        return Serdes.serdeFrom(ser, de);
    }

    /** `value` as JSON text (for the HTTP answers). */
    static String text(Object value) {
        try {
            return MAPPER.writeValueAsString(value);
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }
}
