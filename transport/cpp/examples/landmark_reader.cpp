// landmark_reader [--graph NAME] [TOPIC] [COUNT]: per hand-landmark message, the hand count and each wrist's
// position (default topic hands/landmarks; COUNT messages, or until SIGINT/SIGTERM).
#include <csignal>
#include <cstdio>

#include "shmlaunch/messages.hpp"
#include "shmlaunch/pool.hpp"

static volatile std::sig_atomic_t stop = 0;

int main(int argc, char** argv) {
  std::string dir = shmlaunch::runtime_dir();
  if (argc > 2 && std::string(argv[1]) == "--graph") {  // attach to a running graph by its name
    dir = shmlaunch::graph_runtime_dir(argv[2]);
    argv += 2;
    argc -= 2;
  }
  const char* topic = argc > 1 ? argv[1] : "hands/landmarks";
  long count = argc > 2 ? std::atol(argv[2]) : -1;
  std::signal(SIGINT, [](int) { stop = 1; });
  std::signal(SIGTERM, [](int) { stop = 1; });
  try {
    shmlaunch::Reader reader(topic, dir, {sizeof(shmlaunch::HandLandmarks), 0, ""});
    for (long n = 0; !stop && (count < 0 || n < count);) {
      auto s = reader.receive(200);
      if (!s) continue;
      const auto* m = s->as<shmlaunch::HandLandmarks>();
      if (s->size() < sizeof(*m) || m->version != shmlaunch::kLandmarksVersion) {
        std::fprintf(stderr, "landmark_reader: message %llu is not a version-1 landmark message\n", (unsigned long long)s->seq());
        continue;
      }
      std::printf("frame %llu: %u hand(s)", (unsigned long long)m->frame_seq, m->hand_count);
      for (uint32_t h = 0; h < m->hand_count && h < shmlaunch::kMaxHands; ++h)
        std::printf(" | %s wrist (%.3f, %.3f)", m->hands[h].handedness ? "right" : "left", m->hands[h].landmarks[0][0],
                    m->hands[h].landmarks[0][1]);
      std::printf("\n");
      std::fflush(stdout);
      ++n;
    }
  } catch (const shmlaunch::Error& e) {
    std::fprintf(stderr, "landmark_reader: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
