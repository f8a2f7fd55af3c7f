// shmlaunch pool topics for C++17: header-only, Linux, no dependencies beyond the C++ library.
//
// Follows transport/LAYOUT.md (segment layout version 1) exactly as the Python side does:
//   - a topic is opened through the graph's registry file and its header is checked against
//     it (and against what the caller declares), with the same one-line errors as Python;
//   - Reader::read(timeout) returns the newest message not seen yet, sleeping on the futex
//     word while nothing is new; the message's slot is held (a shared OFD byte-range lock)
//     until the Sample is destroyed, so the writer never overwrites it, and a half-written
//     message is never returned;
//   - Writer publishes into the oldest slot no reader holds, or drops (never waits).
// Topics are created by the launcher (from the launch file) or by a Python Writer; C++ opens
// existing topics.
//
//   shmlaunch::Reader r("camera/image");             // runtime dir: $SHMLAUNCH_RUNTIME_DIR
//   if (auto s = r.receive(1000)) { use(s->data(), s->size(), s->seq(), s->source_ns()); }
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace shmlaunch {

constexpr uint32_t kLayoutVersion = 1;
constexpr uint64_t kHeaderSize = 512;
constexpr uint64_t kSlotHeaderSize = 64;
constexpr uint64_t kWakeOffset = 256;
constexpr uint64_t kLatestSeqOffset = 264;
constexpr uint64_t kWriterOffset = 272;
constexpr off_t kLockWriter = 0;
constexpr off_t kLockPresence = 1;
constexpr off_t kLockSlot0 = 64;
constexpr uint64_t kSlotsOffset = 21504;            // slot 0 of layout version 1 (after the reader and group tables)
constexpr uint64_t kAlign = 64;
constexpr uint32_t kMaxPool = 256;
constexpr uint64_t kMaxCapacity = uint64_t(1) << 40;  // bounds every size computed from a header (no overflow)
constexpr size_t kMaxRegistryBytes = size_t(16) << 20;

// Base of every error; the subclasses say whose fault it is, as in Python.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct TopicNotFound : Error {
  using Error::Error;
};
struct TopicMismatch : Error {
  using Error::Error;
};
struct WriterBusy : Error {
  using Error::Error;
};
struct SegmentCorrupt : Error {
  using Error::Error;
};

inline int64_t realtime_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

inline int64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Where runtime directories go, as Python's SHM_ROOT: /dev/shm (RAM), or /tmp where there is none.
inline std::string shm_root() {
  struct stat st {};
  return (::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode)) ? "/dev/shm" : "/tmp";
}

// The runtime directory of the graph called `graph`: <shm_root>/shmlaunch-<euid>-<graph>, as
// Python's graph_runtime_dir (a program attaching to a running graph by name).
inline std::string graph_runtime_dir(const std::string& graph) {
  return shm_root() + "/shmlaunch-" + std::to_string(geteuid()) + "-" + graph;
}

// The graph's runtime directory when none is named: $SHMLAUNCH_RUNTIME_DIR (the launcher sets it
// for every node), else graph_runtime_dir(graph), the same rule as Python's default_runtime_dir.
inline std::string runtime_dir(const std::string& graph = "default") {
  if (const char* env = std::getenv("SHMLAUNCH_RUNTIME_DIR"); env && *env) return env;
  return graph_runtime_dir(graph);
}

// Names of the graphs that have a runtime directory of this user (Python's graphs_present):
// what a "topic not found" error suggests.
inline std::vector<std::string> graphs_present() {
  std::vector<std::string> out;
  const std::string prefix = "shmlaunch-" + std::to_string(geteuid()) + "-";
  if (DIR* d = ::opendir(shm_root().c_str())) {
    while (const dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name.compare(0, prefix.size(), prefix) == 0) out.push_back(name.substr(prefix.size()));
    }
    ::closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

inline std::string graphs_hint() {
  auto graphs = graphs_present();
  if (graphs.empty()) return " (no graph has a runtime directory: is it running?)";
  std::string names;
  for (const auto& g : graphs) names += (names.empty() ? "" : ", ") + g;
  return " (graphs with a runtime directory: " + names + "; open one by name: shmlaunch::graph_runtime_dir(NAME), --graph NAME, or SHMLAUNCH_RUNTIME_DIR)";
}

// An open, checked runtime directory: a real directory (never a symlink), owned by this user,
// closed to others. Every file in it is opened relative to this descriptor with O_NOFOLLOW.
class RuntimeDir {
 public:
  RuntimeDir(const std::string& path, const std::string& action) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd_ < 0) {
      int err = errno;
      if (err == ENOENT) throw TopicNotFound(action + ": there is no runtime directory " + path + graphs_hint());
      if (err == ELOOP || err == ENOTDIR)
        throw Error(action + ": runtime directory " + path + " is a symlink or not a directory; shmlaunch never follows one");
      throw Error(action + ": cannot open runtime directory " + path + ": " + std::strerror(err));
    }
    struct stat st {};
    fstat(fd_, &st);
    std::string why;
    if (st.st_uid != geteuid())
      why = "belongs to uid " + std::to_string(st.st_uid) + ", not to this user (" + std::to_string(geteuid()) + ")";
    else if (st.st_mode & 077)
      why = "is open to other users (mode " + std::to_string((st.st_mode >> 6) & 7) + std::to_string((st.st_mode >> 3) & 7) +
            std::to_string(st.st_mode & 7) + "; it must be 700)";
    if (!why.empty()) {
      ::close(fd_);
      throw Error(action + ": runtime directory " + path + " " + why + "; refusing it");
    }
  }
  ~RuntimeDir() { ::close(fd_); }
  RuntimeDir(const RuntimeDir&) = delete;
  RuntimeDir& operator=(const RuntimeDir&) = delete;
  int open_file(const std::string& name, int flags) const { return ::openat(fd_, name.c_str(), flags | O_NOFOLLOW | O_CLOEXEC); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

// A registry's segment name must be a plain file name in the runtime directory: NAME.pool of
// letters, digits, '_', '-' and '.', not starting with '.', so never a path ('/', '..').
inline bool plain_segment_name(const std::string& name) {
  const std::string suffix = ".pool";
  if (name.size() <= suffix.size() || name.size() > 205 || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return false;
  if (!(std::isalnum(static_cast<unsigned char>(name[0])) || name[0] == '_')) return false;
  for (char ch : name)
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-' || ch == '.')) return false;
  return true;
}

// ---------------------------------------------------------------- registry
// registry.yaml keeps each topic on one line: `  "<topic>": {<flat JSON object>}` (LAYOUT.md).
struct TopicConfig {
  uint64_t capacity = 0;
  uint32_t pool = 0;
  std::string typestr;           // numpy type string, "" for raw bytes
  std::vector<uint64_t> shape;   // empty when the topic has no fixed shape
  std::string segment;
};

namespace detail {

struct JsonCursor {
  const std::string& s;
  size_t i = 0;
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  }
  bool eat(char c) {
    ws();
    if (i < s.size() && s[i] == c) {
      ++i;
      return true;
    }
    return false;
  }
  std::string string() {
    ws();
    if (i >= s.size() || s[i] != '"') throw std::runtime_error("expected a string");
    std::string out;
    for (++i; i < s.size() && s[i] != '"'; ++i) {
      if (s[i] == '\\' && i + 1 < s.size()) ++i;  // names are plain ASCII; keep escaped chars
      out += s[i];
    }
    ++i;
    return out;
  }
  std::string number() {
    ws();
    size_t start = i;
    while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '-')) ++i;
    if (start == i) throw std::runtime_error("expected a number");
    return s.substr(start, i - start);
  }
  // Skips any value; returns the numbers of a flat list of numbers, when it is one.
  void skip_value() {
    ws();
    if (i >= s.size()) throw std::runtime_error("unexpected end");
    if (s[i] == '"') {
      string();
    } else if (s[i] == '[' || s[i] == '{') {
      char open = s[i], close = open == '[' ? ']' : '}';
      int depth = 0;
      for (; i < s.size(); ++i) {
        if (s[i] == '"') {
          string();
          --i;
        } else if (s[i] == open) {
          ++depth;
        } else if (s[i] == close && --depth == 0) {
          ++i;
          return;
        }
      }
    } else {
      while (i < s.size() && s[i] != ',' && s[i] != '}' && s[i] != ']') ++i;
    }
  }
};

inline std::string topic_action(const std::string& verb, const std::string& topic, const std::string& how) {
  return "cannot " + verb + " topic '" + topic + "'" + how;
}

}  // namespace detail

inline TopicConfig read_registry_entry(const RuntimeDir& dir, const std::string& topic, const std::string& action) {
  const std::string where = dir.path() + "/registry.yaml";
  int fd = dir.open_file("registry.yaml", O_RDONLY | O_NONBLOCK);
  if (fd < 0) throw TopicNotFound(action + ": the registry in " + dir.path() + " does not list it" + graphs_hint());
  std::string text;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0 && text.size() <= kMaxRegistryBytes) text.append(buf, size_t(n));
  ::close(fd);
  if (text.size() > kMaxRegistryBytes) throw SegmentCorrupt("cannot read registry " + where + ": larger than 16 MiB");
  std::istringstream in(text);
  std::string line, prefix = "  \"" + topic + "\": ";
  while (std::getline(in, line)) {
    if (line.compare(0, prefix.size(), prefix) != 0) continue;
    TopicConfig cfg;
    detail::JsonCursor c{line, prefix.size()};
    try {
      if (!c.eat('{')) throw std::runtime_error("expected an object");
      while (!c.eat('}')) {
        std::string key = c.string();
        if (!c.eat(':')) throw std::runtime_error("expected ':'");
        if (key == "capacity") {
          cfg.capacity = std::stoull(c.number());
        } else if (key == "pool") {
          cfg.pool = uint32_t(std::min<unsigned long long>(std::stoull(c.number()), kMaxPool + 1));
        } else if (key == "segment") {
          cfg.segment = c.string();
        } else if (key == "typestr") {
          cfg.typestr = c.string();
        } else if (key == "shape") {
          if (!c.eat('[')) throw std::runtime_error("expected a list");
          while (!c.eat(']')) {
            if (cfg.shape.size() == 8) throw std::runtime_error("shape has more than 8 dimensions");
            cfg.shape.push_back(std::stoull(c.number()));
            c.eat(',');
          }
        } else {
          c.skip_value();
        }
        c.eat(',');
      }
      if (cfg.capacity < 1 || cfg.capacity > kMaxCapacity)
        throw std::runtime_error("capacity " + std::to_string(cfg.capacity) + " is outside 1.." + std::to_string(kMaxCapacity));
      if (cfg.pool < 1 || cfg.pool > kMaxPool) throw std::runtime_error("pool is outside 1..256");
      if (!plain_segment_name(cfg.segment))
        throw std::runtime_error("segment '" + cfg.segment + "' is not a plain segment file name (NAME.pool, no '/' or '..')");
    } catch (const std::exception& e) {
      throw SegmentCorrupt("cannot read registry " + where + ": topic '" + topic + "': " + e.what());
    }
    return cfg;
  }
  throw TopicNotFound(action + ": the registry in " + dir.path() + " does not list it" + graphs_hint());
}

// What a caller declares about a topic; unset fields (0 / empty) are not checked.
struct Expect {
  uint64_t capacity = 0;
  uint32_t pool = 0;
  std::string typestr;
};

namespace detail {

inline void check_field(const std::string& action, const char* field, uint64_t wanted, uint64_t have) {
  if (wanted && wanted != have)
    throw TopicMismatch(action + ": requested " + field + " is " + std::to_string(wanted) + ", the registry says " +
                        std::to_string(have));
}

inline std::string shape_str(const std::vector<uint64_t>& shape) {
  if (shape.empty()) return "None";
  std::string s = "[";
  for (size_t k = 0; k < shape.size(); ++k) s += (k ? ", " : "") + std::to_string(shape[k]);
  return s + "]";
}

}  // namespace detail

// ---------------------------------------------------------------- segment
// One mapping of a topic's segment file, with its lock bytes (OFD locks: per open(), dropped
// by the kernel when the process dies).
class Segment {
 public:
  Segment(const std::string& dir_path, const std::string& topic, const Expect& expect, const std::string& action)
      : topic_(topic) {
    RuntimeDir dir(dir_path, action);
    cfg_ = read_registry_entry(dir, topic, action);
    detail::check_field(action, "capacity", expect.capacity, cfg_.capacity);
    detail::check_field(action, "pool", expect.pool, cfg_.pool);
    if (!expect.typestr.empty() && expect.typestr != cfg_.typestr)
      throw TopicMismatch(action + ": requested dtype is " + expect.typestr + ", the registry says " +
                          (cfg_.typestr.empty() ? "None" : cfg_.typestr));
    std::string path = dir.path() + "/" + cfg_.segment;
    fd_ = dir.open_file(cfg_.segment, O_RDWR);
    if (fd_ < 0) throw TopicNotFound(action + ": its segment " + path + " is missing");
    struct stat st {};
    fstat(fd_, &st);
    size_ = size_t(st.st_size);
    if (!S_ISREG(st.st_mode) || size_ < kHeaderSize) {
      ::close(fd_);
      throw SegmentCorrupt(action + ": segment " + path + " is not a regular file of at least a header's size");
    }
    void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) {
      ::close(fd_);
      throw SegmentCorrupt(action + ": cannot map " + path + ": " + std::strerror(errno));
    }
    base_ = static_cast<uint8_t*>(p);
    try {
      check_header(action, path);
    } catch (...) {
      munmap(base_, size_);
      ::close(fd_);
      throw;
    }
  }
  ~Segment() {
    if (base_) munmap(base_, size_);
    if (fd_ >= 0) ::close(fd_);  // drops every lock this open file description holds
  }
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  const TopicConfig& config() const { return cfg_; }
  uint8_t* base() const { return base_; }
  uint64_t slot_offset(uint32_t slot) const { return slots_offset_ + uint64_t(slot) * stride_; }
  uint8_t* payload(uint32_t slot) const { return base_ + slot_offset(slot) + kSlotHeaderSize; }
  uint64_t* state(uint32_t slot) const { return reinterpret_cast<uint64_t*>(base_ + slot_offset(slot)); }
  uint32_t* wake() const { return reinterpret_cast<uint32_t*>(base_ + kWakeOffset); }

  // Non-blocking byte-range locks; false when another open file description conflicts.
  bool lock(off_t byte, short type) const {
    struct flock fl {};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    if (fcntl(fd_, F_OFD_SETLK, &fl) == 0) return true;
    if (errno == EAGAIN || errno == EACCES) return false;
    throw Error("lock on topic '" + topic_ + "' failed: " + std::strerror(errno));
  }
  void unlock(off_t byte) const { lock(byte, F_UNLCK); }
  bool held_by_others(off_t byte) const {
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = byte;
    fl.l_len = 1;
    fcntl(fd_, F_OFD_GETLK, &fl);
    return fl.l_type != F_UNLCK;
  }

 private:
  void check_header(const std::string& action, const std::string& path) {
    const uint8_t* b = base_;
    auto u32 = [b](size_t off) { uint32_t v; std::memcpy(&v, b + off, 4); return v; };
    auto u64 = [b](size_t off) { uint64_t v; std::memcpy(&v, b + off, 8); return v; };
    if (std::memcmp(b, "SHMLPOOL", 8) != 0) throw SegmentCorrupt(action + ": segment " + path + " has no SHMLPOOL magic");
    if (u32(8) != kLayoutVersion)
      throw SegmentCorrupt(action + ": segment layout_version is " + std::to_string(u32(8)) + ", this client uses " +
                           std::to_string(kLayoutVersion));
    uint32_t pool = u32(12);
    uint64_t capacity = u64(16);
    stride_ = u64(24);
    slots_offset_ = u64(32);
    std::string typestr(reinterpret_cast<const char*>(b + 56), strnlen(reinterpret_cast<const char*>(b + 56), 32));
    std::vector<uint64_t> shape;
    for (uint32_t k = 0; k < u32(48) && k < 8; ++k) shape.push_back(u64(88 + 8 * k));
    auto mismatch = [&](const char* field, const std::string& header, const std::string& registry) {
      throw TopicMismatch(action + ": the segment header " + field + " is " + header + ", the registry says " + registry);
    };
    if (capacity != cfg_.capacity) mismatch("capacity", std::to_string(capacity), std::to_string(cfg_.capacity));
    if (pool != cfg_.pool) mismatch("pool", std::to_string(pool), std::to_string(cfg_.pool));
    if (typestr != cfg_.typestr) mismatch("dtype", typestr.empty() ? "None" : typestr, cfg_.typestr.empty() ? "None" : cfg_.typestr);
    if (shape != cfg_.shape) mismatch("shape", detail::shape_str(shape), detail::shape_str(cfg_.shape));
    // Every field bounded before any product is formed: no overflow, whatever the file says.
    const uint64_t size = size_;
    auto min_stride = (kSlotHeaderSize + capacity + kAlign - 1) / kAlign * kAlign;
    if (pool == 0 || pool > kMaxPool || capacity == 0 || capacity > kMaxCapacity || slots_offset_ < kSlotsOffset ||
        slots_offset_ % kAlign || slots_offset_ > size || stride_ < min_stride || stride_ % kAlign ||
        stride_ > (size - slots_offset_) / pool)
      throw SegmentCorrupt(action + ": segment " + path + " is corrupt: its header (pool " + std::to_string(pool) + ", capacity " +
                           std::to_string(capacity) + ", slots_offset " + std::to_string(slots_offset_) + ", slot_stride " +
                           std::to_string(stride_) + ") does not fit the file size " + std::to_string(size));
  }

  std::string topic_;
  TopicConfig cfg_;
  int fd_ = -1;
  uint8_t* base_ = nullptr;
  size_t size_ = 0;
  uint64_t stride_ = 0;
  uint64_t slots_offset_ = 0;
};

inline void futex_wait(uint32_t* addr, uint32_t expected, int64_t timeout_ns) {
  timespec ts{time_t(timeout_ns / 1000000000), long(timeout_ns % 1000000000)};
  syscall(SYS_futex, addr, FUTEX_WAIT, expected, timeout_ns < 0 ? nullptr : &ts, nullptr, 0);
}

inline void futex_wake(uint32_t* addr) { syscall(SYS_futex, addr, FUTEX_WAKE, 0x7fffffff, nullptr, nullptr, 0); }

// ---------------------------------------------------------------- reader
class Reader;

// A received message: a view of its slot, held until the Sample is destroyed (move-only).
class Sample {
 public:
  Sample(Sample&& o) noexcept { *this = std::move(o); }
  Sample& operator=(Sample&& o) noexcept {
    std::swap(seg_, o.seg_);
    std::swap(holds_, o.holds_);
    slot_ = o.slot_;
    data_ = o.data_;
    size_ = o.size_;
    seq_ = o.seq_;
    source_ns_ = o.source_ns_;
    publish_ns_ = o.publish_ns_;
    source_seq_ = o.source_seq_;
    return *this;
  }
  ~Sample() { release(); }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  uint64_t seq() const { return seq_; }
  int64_t source_ns() const { return source_ns_; }    // e.g. capture time, CLOCK_REALTIME
  int64_t publish_ns() const { return publish_ns_; }  // when the writer published it
  uint64_t source_seq() const { return source_seq_; }  // the input message it was computed from (0: none)
  template <class T>
  const T* as() const { return reinterpret_cast<const T*>(data_); }
  void release() {
    if (seg_ && --(*holds_)[slot_] == 0) seg_->unlock(kLockSlot0 + slot_);
    seg_ = nullptr;
  }

 private:
  friend class Reader;
  Sample() = default;
  const Segment* seg_ = nullptr;
  std::vector<uint32_t>* holds_ = nullptr;
  uint32_t slot_ = 0;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  uint64_t seq_ = 0;
  int64_t source_ns_ = 0, publish_ns_ = 0;
  uint64_t source_seq_ = 0;
};

// Opens an existing topic for reading. Keep the Reader alive while Samples of it exist.
class Reader {
 public:
  explicit Reader(const std::string& topic, const std::string& dir = runtime_dir(), const Expect& expect = {})
      : seg_(dir, topic, expect, detail::topic_action("open", topic, " for reading")), holds_(seg_.config().pool, 0) {
    seg_.lock(kLockPresence, F_RDLCK);
  }

  // The newest message not seen yet, waiting up to timeout_ms (negative: forever).
  std::optional<Sample> receive(int64_t timeout_ms) {
    int64_t deadline = timeout_ms < 0 ? -1 : monotonic_ns() + timeout_ms * 1000000;
    for (;;) {
      uint32_t w = __atomic_load_n(seg_.wake(), __ATOMIC_ACQUIRE);
      if (w != last_wake_) {
        if (auto s = take(w)) return s;
        continue;
      }
      int64_t left = deadline < 0 ? -1 : deadline - monotonic_ns();
      if (deadline >= 0 && left <= 0) return std::nullopt;
      futex_wait(seg_.wake(), w, left);
    }
  }
  // The newest message not seen yet, or nothing at once.
  std::optional<Sample> receive_nowait() {
    uint32_t w = __atomic_load_n(seg_.wake(), __ATOMIC_ACQUIRE);
    if (w == last_wake_) return std::nullopt;
    return take(w);
  }
  // The names of release 0.1, kept one release for existing code.
  [[deprecated("use receive()")]] std::optional<Sample> read(int64_t timeout_ms) { return receive(timeout_ms); }
  [[deprecated("use receive_nowait()")]] std::optional<Sample> read_nowait() { return receive_nowait(); }
  const TopicConfig& config() const { return seg_.config(); }
  bool writer_alive() const { return seg_.held_by_others(kLockWriter); }
  uint64_t missed() const { return missed_; }

 private:
  std::optional<Sample> take(uint32_t w) {
    last_wake_ = w;
    uint32_t slot = w & 0xff;
    if (slot >= holds_.size()) return std::nullopt;
    if (holds_[slot] == 0 && !seg_.lock(kLockSlot0 + slot, F_RDLCK)) return std::nullopt;  // being written
    const uint8_t* h = seg_.base() + seg_.slot_offset(slot);
    uint64_t state, length, source_seq;
    int64_t source_ns, publish_ns;
    std::memcpy(&state, h, 8);
    std::memcpy(&length, h + 8, 8);
    std::memcpy(&source_ns, h + 16, 8);
    std::memcpy(&publish_ns, h + 24, 8);
    std::memcpy(&source_seq, h + 40, 8);
    uint64_t seq = state >> 1;
    if ((state & 1) || seq <= last_seq_ || length > seg_.config().capacity) {
      if (holds_[slot] == 0) seg_.unlock(kLockSlot0 + slot);
      return std::nullopt;
    }
    ++holds_[slot];
    if (last_seq_ && seq > last_seq_ + 1) missed_ += seq - last_seq_ - 1;
    last_seq_ = seq;
    Sample s;
    s.seg_ = &seg_;
    s.holds_ = &holds_;
    s.slot_ = slot;
    s.data_ = seg_.payload(slot);
    s.size_ = size_t(length);
    s.seq_ = seq;
    s.source_ns_ = source_ns;
    s.publish_ns_ = publish_ns;
    s.source_seq_ = source_seq;
    return s;
  }

  Segment seg_;
  std::vector<uint32_t> holds_;
  uint32_t last_wake_ = 0;
  uint64_t last_seq_ = 0;
  uint64_t missed_ = 0;
};

// ---------------------------------------------------------------- writer
// The topic's single writer: a second live writer (any language) gets WriterBusy; a dead
// writer's successor continues the sequence.
class Writer {
 public:
  explicit Writer(const std::string& topic, const std::string& dir = runtime_dir(), const Expect& expect = {})
      : seg_(dir, topic, expect, detail::topic_action("open", topic, " for writing")) {
    if (!seg_.lock(kLockWriter, F_WRLCK)) {
      uint64_t pid;
      std::memcpy(&pid, seg_.base() + kWriterOffset, 8);
      throw WriterBusy("cannot open topic '" + topic + "' for writing: another writer (pid " + std::to_string(pid) +
                       ") is alive; a topic has exactly one writer");
    }
    uint32_t pool = seg_.config().pool;
    std::vector<std::pair<uint64_t, uint32_t>> ages;
    for (uint32_t i = 0; i < pool; ++i) {
      uint64_t st = *seg_.state(i);
      seq_ = std::max(seq_, (st + 1) >> 1);
      ages.push_back({(st & 1) ? 0 : st, i});  // half-written slots are reused first
    }
    std::sort(ages.begin(), ages.end());
    for (auto& a : ages) order_.push_back(a.second);
    uint64_t* gen = reinterpret_cast<uint64_t*>(seg_.base() + kWriterOffset + 8);
    generation_ = *gen + 1;
    uint64_t pid = uint64_t(getpid());
    int64_t now = realtime_ns();
    std::memcpy(seg_.base() + kWriterOffset, &pid, 8);
    std::memcpy(gen, &generation_, 8);
    std::memcpy(seg_.base() + kWriterOffset + 16, &now, 8);
  }

  // Copies `size` bytes into a free slot and publishes them; returns the sequence number,
  // or 0 when every slot is held by a reader (the message is dropped, never waits).
  // source_ns: e.g. the capture time (-1: now); source_seq: the input it was computed from.
  uint64_t publish(const void* data, size_t size, int64_t source_ns = -1, uint64_t source_seq = 0) {
    if (size > seg_.config().capacity)
      throw std::invalid_argument("cannot publish " + std::to_string(size) + " bytes: capacity is " +
                                  std::to_string(seg_.config().capacity) + " bytes");
    int slot = take_free_slot();
    if (slot < 0) return 0;
    begin(uint32_t(slot));
    std::memcpy(seg_.payload(uint32_t(slot)), data, size);
    return commit(uint32_t(slot), size, source_ns, source_seq);
  }

  // In-place publish: fill loan.data() (capacity bytes), then commit(size) or let it drop.
  class Loan {
   public:
    uint8_t* data() { return w_->seg_.payload(slot_); }
    uint64_t commit(size_t size, int64_t source_ns = -1, uint64_t source_seq = 0) {
      done_ = true;
      return w_->commit(slot_, size, source_ns, source_seq);
    }
    ~Loan() {
      if (!done_ && w_) w_->seg_.unlock(kLockSlot0 + slot_);  // cancelled: left odd, never delivered
    }
    Loan(Loan&& o) noexcept : w_(o.w_), slot_(o.slot_), done_(o.done_) { o.w_ = nullptr; }

   private:
    friend class Writer;
    Loan(Writer* w, uint32_t slot) : w_(w), slot_(slot) {}
    Writer* w_;
    uint32_t slot_;
    bool done_ = false;
  };
  std::optional<Loan> loan() {
    int slot = take_free_slot();
    if (slot < 0) return std::nullopt;
    begin(uint32_t(slot));
    return Loan(this, uint32_t(slot));
  }
  const TopicConfig& config() const { return seg_.config(); }
  uint64_t last_seq() const { return seq_; }

 private:
  int take_free_slot() {
    for (uint32_t slot : order_)
      if (seg_.lock(kLockSlot0 + slot, F_WRLCK)) return int(slot);
    return -1;
  }
  void begin(uint32_t slot) { __atomic_store_n(seg_.state(slot), 2 * seq_ + 1, __ATOMIC_RELEASE); }
  uint64_t commit(uint32_t slot, size_t size, int64_t source_ns, uint64_t source_seq) {
    uint64_t seq = ++seq_;
    uint8_t* h = seg_.base() + seg_.slot_offset(slot);
    int64_t now = realtime_ns();
    int64_t src = source_ns < 0 ? now : source_ns;
    uint64_t len = size;
    std::memcpy(h + 8, &len, 8);
    std::memcpy(h + 16, &src, 8);
    std::memcpy(h + 24, &now, 8);
    std::memcpy(h + 32, &generation_, 8);
    std::memcpy(h + 40, &source_seq, 8);
    __atomic_store_n(seg_.state(slot), 2 * seq, __ATOMIC_RELEASE);
    seg_.unlock(kLockSlot0 + slot);
    uint64_t latest = seq;
    std::memcpy(seg_.base() + kLatestSeqOffset, &latest, 8);
    __atomic_store_n(seg_.wake(), uint32_t(((seq & 0xffffff) << 8) | slot), __ATOMIC_RELEASE);
    futex_wake(seg_.wake());
    for (size_t k = 0; k < order_.size(); ++k)
      if (order_[k] == slot) {
        order_.erase(order_.begin() + long(k));
        break;
      }
    order_.push_back(slot);
    return seq;
  }

  Segment seg_;
  std::vector<uint32_t> order_;  // slots, oldest message first
  uint64_t seq_ = 0;
  uint64_t generation_ = 0;
};

}  // namespace shmlaunch
