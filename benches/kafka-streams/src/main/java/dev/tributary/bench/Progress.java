package dev.tributary.bench;

import java.util.concurrent.atomic.AtomicLong;

/**
 * Input records processed so far, over all stream threads: what the bench polls (as it polls
 * Tributary's `tributary_records_consumed_total`), plus the app's own clock of the first and
 * the `expected`-th record (a cross-check of the bench's timing, at record resolution).
 */
final class Progress {
    private final long expected;
    private final AtomicLong records = new AtomicLong();
    private volatile long firstNanos;
    private volatile long lastNanos;

    Progress(long expected) {
        this.expected = expected;
    }

    /** Called once per input record, on the stream thread that processes it. */
    void record() {
        long n = records.incrementAndGet();
        if (n == 1) {
            firstNanos = System.nanoTime();
        }
        if (n == expected) {
            lastNanos = System.nanoTime();
            System.out.printf(
                    "kafka-streams-bench: all %d records processed, first to last in %.3f s%n",
                    n, (lastNanos - firstNanos) / 1e9);
            System.out.flush();
        }
    }

    long records() {
        return records.get();
    }

    /** Seconds from the first record to the `expected`-th, once it was seen; otherwise -1. */
    double firstToLastSeconds() {
        long last = lastNanos;
        return last == 0 ? -1 : (last - firstNanos) / 1e9;
    }
}
