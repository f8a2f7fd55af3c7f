// frame_stats [--graph NAME] TOPIC [SECONDS]: once a second, messages per second and latency (source stamp
// to now) of a topic, e.g. camera/image. Runs as a `cmd:` node; SIGINT/SIGTERM end it.
#include <csignal>
#include <cstdio>
#include <vector>
#include <algorithm>

#include "shmlaunch/pool.hpp"

static volatile std::sig_atomic_t stop = 0;

int main(int argc, char** argv) {
  std::string dir = shmlaunch::runtime_dir();
  if (argc > 2 && std::string(argv[1]) == "--graph") {  // attach to a running graph by its name
    dir = shmlaunch::graph_runtime_dir(argv[2]);
    argv += 2;
    argc -= 2;
  }
  if (argc < 2) {
    std::fprintf(stderr, "usage: frame_stats [--graph NAME] TOPIC [SECONDS]\n");
    return 2;
  }
  std::signal(SIGINT, [](int) { stop = 1; });
  std::signal(SIGTERM, [](int) { stop = 1; });
  double seconds = argc > 2 ? std::atof(argv[2]) : -1;
  try {
    shmlaunch::Reader reader(argv[1], dir);
    const auto& cfg = reader.config();
    std::printf("frame_stats: topic %s, capacity %llu, pool %u, dtype %s, shape %s\n", argv[1],
                (unsigned long long)cfg.capacity, cfg.pool, cfg.typestr.empty() ? "bytes" : cfg.typestr.c_str(),
                shmlaunch::detail::shape_str(cfg.shape).c_str());
    std::fflush(stdout);
    int64_t start = shmlaunch::monotonic_ns(), tick = start;
    std::vector<double> latency_ms;
    while (!stop && (seconds < 0 || shmlaunch::monotonic_ns() - start < int64_t(seconds * 1e9))) {
      if (auto s = reader.receive(200)) latency_ms.push_back((shmlaunch::realtime_ns() - s->source_ns()) / 1e6);
      int64_t now = shmlaunch::monotonic_ns();
      if (now - tick >= 1000000000) {
        std::sort(latency_ms.begin(), latency_ms.end());
        double p50 = latency_ms.empty() ? 0 : latency_ms[latency_ms.size() / 2];
        std::printf("%.1f msg/s, latency p50 %.3f ms, missed %llu, writer %s\n", latency_ms.size() * 1e9 / (now - tick), p50,
                    (unsigned long long)reader.missed(), reader.writer_alive() ? "alive" : "gone");
        std::fflush(stdout);
        latency_ms.clear();
        tick = now;
      }
    }
  } catch (const shmlaunch::Error& e) {
    std::fprintf(stderr, "frame_stats: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
