// checked_io read TOPIC [IDLE_MS] [CAPACITY] | write TOPIC COUNT [RATE_HZ] | latency TOPIC [IDLE_MS]
// The cross-language test and benchmark peer. Every message: u64 seq, then bytes all equal
// to seq % 251. `read` checks each message and prints "received N torn T disorder D last L";
// `write` publishes COUNT such messages of the topic's capacity; `latency` prints the
// percentiles of source stamp (CLOCK_REALTIME, taken by the publisher) to holding the message.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "shmlaunch/pool.hpp"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: checked_io read TOPIC [IDLE_MS] [CAPACITY] | write TOPIC COUNT [RATE_HZ] | latency TOPIC [IDLE_MS]\n");
    return 2;
  }
  std::string mode = argv[1], topic = argv[2];
  try {
    if (mode == "read") {
      int64_t idle = argc > 3 ? std::atol(argv[3]) : 2000;
      shmlaunch::Expect expect;
      if (argc > 4) expect.capacity = std::stoull(argv[4]);
      shmlaunch::Reader r(topic, shmlaunch::runtime_dir(), expect);
      std::printf("ready\n");
      std::fflush(stdout);
      uint64_t received = 0, torn = 0, disorder = 0;
      int64_t last = -1;
      while (auto s = r.receive(idle)) {
        uint64_t seq;
        std::memcpy(&seq, s->data(), 8);
        uint8_t b = uint8_t(seq % 251);
        bool ok = s->size() >= 8;
        for (size_t i = 8; ok && i < s->size(); ++i) ok = s->data()[i] == b;
        if (!ok) ++torn;
        else if (int64_t(seq) <= last) ++disorder;
        else last = int64_t(seq);
        ++received;
      }
      std::printf("received %llu torn %llu disorder %llu last %lld\n", (unsigned long long)received, (unsigned long long)torn,
                  (unsigned long long)disorder, (long long)last);
    } else if (mode == "latency") {
      int64_t idle = argc > 3 ? std::atol(argv[3]) : 2000;
      shmlaunch::Reader r(topic);
      std::printf("ready\n");
      std::fflush(stdout);
      std::vector<double> us;
      while (auto s = r.receive(idle)) us.push_back((shmlaunch::realtime_ns() - s->source_ns()) / 1e3);
      std::sort(us.begin(), us.end());
      auto pct = [&](double q) { return us.empty() ? 0.0 : us[size_t(q * double(us.size() - 1))]; };
      std::printf("received %zu p50 %.1f p90 %.1f p99 %.1f\n", us.size(), pct(0.5), pct(0.9), pct(0.99));
    } else if (mode == "write" && argc > 3) {
      long count = std::atol(argv[3]);
      double rate = argc > 4 ? std::atof(argv[4]) : 0;
      shmlaunch::Writer w(topic);
      std::vector<uint8_t> msg(w.config().capacity);
      for (long i = 0; i < count; ++i) {
        uint64_t seq = uint64_t(i);
        std::memcpy(msg.data(), &seq, 8);
        std::memset(msg.data() + 8, int(seq % 251), msg.size() - 8);
        w.publish(msg.data(), msg.size(), -1, 1000 + seq);  // source_seq: a made-up input sequence, checked by the tests
        if (rate > 0) std::this_thread::sleep_for(std::chrono::microseconds(long(1e6 / rate)));
      }
      std::printf("wrote %ld\n", count);
    } else {
      std::fprintf(stderr, "checked_io: unknown mode %s\n", mode.c_str());
      return 2;
    }
  } catch (const shmlaunch::Error& e) {
    std::fprintf(stderr, "checked_io: error: %s: %s\n", e.kind(), e.what());
    return 2;
  }
  return 0;
}
