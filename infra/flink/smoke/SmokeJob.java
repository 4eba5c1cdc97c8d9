// Plain Flink jobs used by the slow tests to prove that a session cluster
// started by infra/flink_cluster.py runs work across its slots and recovers
// from a lost TaskManager through its checkpoints.
//
//   batch:     the sum of x*x for x in 1..n, grouped by x % 7.
//   streaming: x in 1..n from a rate-limited, checkpointed source, summed per
//              x % 4 in keyed state with checkpoints every 500 ms. Results
//              reach the client only once checkpointed, so after a restore
//              the last value per key is still exact.
//
// Both run with parallelism 2 and print SUM=<total> when the job finishes.
// Usage: SmokeJob batch|streaming HOST REST_PORT N JOB_JAR
import java.util.HashMap;
import java.util.Map;
import org.apache.flink.api.common.RuntimeExecutionMode;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.connector.source.util.ratelimit.RateLimiterStrategy;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.connector.datagen.source.DataGeneratorSource;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.util.CloseableIterator;

public final class SmokeJob {
  public static void main(String[] args) throws Exception {
    String mode = args[0];
    long n = Long.parseLong(args[3]);
    StreamExecutionEnvironment env =
        StreamExecutionEnvironment.createRemoteEnvironment(args[1], Integer.parseInt(args[2]), args[4]);
    env.setParallelism(2);
    long total = "batch".equals(mode) ? batch(env, n) : streaming(env, n);
    System.out.println("SUM=" + total);
  }

  private static long batch(StreamExecutionEnvironment env, long n) throws Exception {
    env.setRuntimeMode(RuntimeExecutionMode.BATCH);
    long total = 0;
    try (CloseableIterator<Long> sums =
        env.fromSequence(1, n)
            .map(x -> x * x)
            .returns(Types.LONG)
            .keyBy(x -> x % 7, Types.LONG)
            .reduce(Long::sum)
            .executeAndCollect("beamline-smoke-batch")) {
      while (sums.hasNext()) {
        total += sums.next();
      }
    }
    return total;
  }

  private static long streaming(StreamExecutionEnvironment env, long n) throws Exception {
    env.setRuntimeMode(RuntimeExecutionMode.STREAMING);
    env.enableCheckpointing(500);
    DataGeneratorSource<Long> source =
        new DataGeneratorSource<>(index -> index + 1, n, RateLimiterStrategy.perSecond(300), Types.LONG);
    Map<Long, Long> lastPerKey = new HashMap<>();
    try (CloseableIterator<Tuple2<Long, Long>> updates =
        env.fromSource(source, WatermarkStrategy.noWatermarks(), "numbers")
            .map(x -> Tuple2.of(x % 4, x))
            .returns(Types.TUPLE(Types.LONG, Types.LONG))
            .keyBy(pair -> pair.f0, Types.LONG)
            .sum(1)
            .executeAndCollect("beamline-smoke-streaming")) {
      while (updates.hasNext()) {
        Tuple2<Long, Long> update = updates.next();
        lastPerKey.put(update.f0, update.f1);
      }
    }
    return lastPerKey.values().stream().mapToLong(Long::longValue).sum();
  }
}
