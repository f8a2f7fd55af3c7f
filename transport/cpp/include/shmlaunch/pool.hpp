// shmlaunch pool topics for C++17: header-only, Linux and Windows, no dependencies beyond the
// C++ library and the system's own API.
//
// Follows transport/LAYOUT.md (segment layout version 1) exactly as the Python side does:
//   - a topic is opened through the graph's registry file and its header is checked against
//     it (and against what the caller declares), with the same one-line errors as Python;
//   - Reader::receive(timeout) returns the newest message not seen yet, sleeping while nothing
//     is new (Linux: on the futex word; Windows: on its wait entry's named event); the
//     message's slot is held (a shared byte-range lock) until the Sample is destroyed, so the
//     writer never overwrites it, and a half-written message is never returned;
//   - Writer publishes into the oldest slot no reader holds, or drops (never waits).
// Everything that differs between the systems is in namespace `os` below (files, mappings,
// locks, wake-ups, clocks); the protocol above it is one.
// Topics are created by the launcher (from the launch file) or by a Python Writer; C++ opens
// existing topics. Windows: build with MSVC or mingw-w64 (link advapi32).
//
//   shmlaunch::Reader r("camera/image");             // runtime dir: $SHMLAUNCH_RUNTIME_DIR
//   if (auto s = r.receive(1000)) { use(s->data(), s->size(), s->seq(), s->source_ns()); }
#pragma once

#ifdef _WIN32
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>
#include <aclapi.h>
#include <sddl.h>
#ifdef _MSC_VER
#pragma comment(lib, "advapi32.lib")
#endif
#else
#include <dirent.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <memory>
#include <mutex>
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

#include "shmlaunch/layout.hpp"  // generated from transport/_layout.py

namespace shmlaunch {

constexpr size_t kMaxRegistryBytes = size_t(16) << 20;

// Base of every error; the subclasses say whose fault it is, as in Python. kind() is the
// class's name, the same in the three languages (Python adds "Error": SegmentCorruptError).
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
  virtual const char* kind() const noexcept { return "Error"; }
};
#define SHMLAUNCH_ERROR_KIND(Name, Base)                               \
  struct Name : Base {                                                 \
    using Base::Base;                                                  \
    const char* kind() const noexcept override { return #Name; }       \
  }
SHMLAUNCH_ERROR_KIND(TopicNotFound, Error);
SHMLAUNCH_ERROR_KIND(TopicMismatch, Error);
SHMLAUNCH_ERROR_KIND(WriterBusy, Error);
SHMLAUNCH_ERROR_KIND(SegmentCorrupt, Error);
// A segment of another layout version (written by another shmlaunch release): Python's LayoutVersionError.
SHMLAUNCH_ERROR_KIND(LayoutVersion, TopicMismatch);
#undef SHMLAUNCH_ERROR_KIND

// ---------------------------------------------------------------- the platform seam
namespace os {
#ifdef _WIN32
using File = HANDLE;
inline const File no_file = INVALID_HANDLE_VALUE;
constexpr char path_sep = '\\';

inline std::string last_error_text() {
  char buf[256] = {0};
  DWORD n = FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, nullptr, GetLastError(), 0, buf, sizeof buf, nullptr);
  std::string out(buf, n);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r' || out.back() == '.')) out.pop_back();
  return out;
}

inline int64_t realtime_ns() {
  FILETIME ft;
  GetSystemTimePreciseAsFileTime(&ft);
  uint64_t t = (uint64_t(ft.dwHighDateTime) << 32) | ft.dwLowDateTime;
  return int64_t(t - 116444736000000000ULL) * 100;  // 100 ns units since 1601 -> ns since 1970
}

inline int64_t monotonic_ns() {
  LARGE_INTEGER f, c;
  QueryPerformanceFrequency(&f);
  QueryPerformanceCounter(&c);
  return int64_t(double(c.QuadPart) * 1e9 / double(f.QuadPart));
}

inline std::string sid_text(PSID sid) {
  LPSTR text = nullptr;
  if (!ConvertSidToStringSidA(sid, &text)) return "?";
  std::string out = text;
  LocalFree(text);
  return out;
}

// This user, as runtime folder names carry it (Python's backend.USER_ID): the SID.
inline std::string user_id() {
  HANDLE token = nullptr;
  if (!OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &token)) return "?";
  DWORD size = 0;
  GetTokenInformation(token, TokenUser, nullptr, 0, &size);
  std::vector<char> buf(size);
  std::string out = GetTokenInformation(token, TokenUser, buf.data(), size, &size) ? sid_text(reinterpret_cast<TOKEN_USER*>(buf.data())->User.Sid) : "?";
  CloseHandle(token);
  return out;
}

inline std::string shm_root() {
  const char* local = std::getenv("LOCALAPPDATA");
  return std::string(local ? local : ".") + "\\shmlaunch";
}

inline std::vector<std::string> list_dir(const std::string& path) {
  std::vector<std::string> out;
  WIN32_FIND_DATAA d;
  HANDLE h = FindFirstFileA((path + "\\*").c_str(), &d);
  if (h == INVALID_HANDLE_VALUE) return out;
  do out.push_back(d.cFileName);
  while (FindNextFileA(h, &d));
  FindClose(h);
  return out;
}

// A handle never through a symlink or junction: opened as the reparse point itself, then refused.
inline File open_no_follow(const std::string& path, DWORD access, DWORD share, DWORD flags, bool* missing, std::string* why) {
  HANDLE h = CreateFileA(path.c_str(), access, share, nullptr, OPEN_EXISTING, flags | FILE_FLAG_OPEN_REPARSE_POINT, nullptr);
  if (h == INVALID_HANDLE_VALUE) {
    DWORD err = GetLastError();
    *missing = err == ERROR_FILE_NOT_FOUND || err == ERROR_PATH_NOT_FOUND;
    *why = last_error_text();
    return no_file;
  }
  BY_HANDLE_FILE_INFORMATION info;
  if (!GetFileInformationByHandle(h, &info) || (info.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT)) {
    CloseHandle(h);
    *missing = false;
    *why = "is a symlink or junction; shmlaunch never follows one";
    return no_file;
  }
  return h;
}

// An open, checked runtime folder: a real directory owned by this user, held open (it cannot be
// renamed or removed meanwhile); files in it are opened without following links.
class Dir {
 public:
  // "" when it opened; else why not ("missing" when there is no such folder).
  std::string open(const std::string& path) {
    bool missing = false;
    std::string why;
    h_ = open_no_follow(path, FILE_LIST_DIRECTORY | FILE_READ_ATTRIBUTES | READ_CONTROL, FILE_SHARE_READ | FILE_SHARE_WRITE,
                        FILE_FLAG_BACKUP_SEMANTICS, &missing, &why);
    if (h_ == no_file) return missing ? "missing" : why;
    PSID owner = nullptr;
    PSECURITY_DESCRIPTOR sd = nullptr;
    if (GetSecurityInfo(h_, SE_FILE_OBJECT, OWNER_SECURITY_INFORMATION, &owner, nullptr, nullptr, nullptr, &sd) != ERROR_SUCCESS)
      return "cannot read its owner";
    std::string who = sid_text(owner);
    LocalFree(sd);
    if (who != user_id()) return "belongs to " + who + ", not to this user (" + user_id() + "); refusing it";
    return "";
  }
  ~Dir() {
    if (h_ != no_file) CloseHandle(h_);
  }
  File open_file(const std::string& dir, const std::string& name, bool write) const {
    bool missing = false;
    std::string why;
    return open_no_follow(dir + "\\" + name, GENERIC_READ | (write ? GENERIC_WRITE : 0), FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                          FILE_ATTRIBUTE_NORMAL, &missing, &why);
  }

 private:
  HANDLE h_ = INVALID_HANDLE_VALUE;
};

inline void close_file(File f) { CloseHandle(f); }
inline long read_file(File f, char* buf, size_t n) {
  DWORD got = 0;
  return ReadFile(f, buf, DWORD(n), &got, nullptr) ? long(got) : -1;
}
// Size of a regular file; false for anything else.
inline bool regular_size(File f, uint64_t* size) {
  BY_HANDLE_FILE_INFORMATION info;
  if (!GetFileInformationByHandle(f, &info) || (info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY)) return false;
  *size = (uint64_t(info.nFileSizeHigh) << 32) | info.nFileSizeLow;
  return true;
}
inline uint8_t* map(File f, uint64_t size, std::string* why) {
  HANDLE m = CreateFileMappingA(f, nullptr, PAGE_READWRITE, DWORD(size >> 32), DWORD(size), nullptr);
  if (!m) {
    *why = last_error_text();
    return nullptr;
  }
  void* p = MapViewOfFile(m, FILE_MAP_ALL_ACCESS, 0, 0, SIZE_T(size));
  CloseHandle(m);  // the view keeps the mapping
  if (!p) *why = last_error_text();
  return static_cast<uint8_t*>(p);
}
inline void unmap(uint8_t* base, uint64_t) { UnmapViewOfFile(base); }

// Non-blocking one-byte LockFileEx locks; false when another handle conflicts.
inline bool lock(File f, uint64_t byte, bool exclusive) {
  OVERLAPPED ov{};
  ov.Offset = DWORD(byte);
  ov.OffsetHigh = DWORD(byte >> 32);
  if (LockFileEx(f, LOCKFILE_FAIL_IMMEDIATELY | (exclusive ? LOCKFILE_EXCLUSIVE_LOCK : 0), 0, 1, 0, &ov)) return true;
  DWORD err = GetLastError();
  if (err == ERROR_LOCK_VIOLATION || err == ERROR_IO_PENDING) return false;
  throw Error("LockFileEx failed: " + last_error_text());
}
inline void unlock(File f, uint64_t byte) {
  OVERLAPPED ov{};
  ov.Offset = DWORD(byte);
  ov.OffsetHigh = DWORD(byte >> 32);
  UnlockFileEx(f, 0, 1, 0, &ov);
}
// Windows has no lock query: take the lock for an instant and give it back.
inline bool held_by_others(File f, uint64_t byte) {
  if (!lock(f, byte, true)) return true;
  unlock(f, byte);
  return false;
}
inline uint64_t pid() { return GetCurrentProcessId(); }

inline std::string event_name(const uint8_t* base, uint32_t index) {
  uint64_t id;
  std::memcpy(&id, base + layout::HEADER_WAKE_ID_OFFSET, layout::HEADER_WAKE_ID_SIZE);
  char name[64];
  std::snprintf(name, sizeof name, "Local\\shmlaunch-%016llx-%u", (unsigned long long)id, index);
  return name;
}

// Sets or clears bit `index` of `waiters` under its lock byte (held for microseconds).
inline void set_waiter_bit(File f, uint8_t* base, uint32_t index, bool on) {
  for (int i = 0; !lock(f, layout::LOCK_WAITERS, true); ++i) {
    if (i > 5000) throw Error("the topic's waiters lock is held for more than 5 s: a process holding it is stopped or hung");
    Sleep(1);
  }
  auto* mask = reinterpret_cast<std::atomic<uint64_t>*>(base + layout::HEADER_WAITERS_OFFSET);
  if (on) mask->fetch_or(uint64_t(1) << index);
  else mask->fetch_and(~(uint64_t(1) << index));
  unlock(f, layout::LOCK_WAITERS);
}

// A reader's sleep: its own wait entry and named auto-reset event (LAYOUT.md, Protocol).
class Waiter {
 public:
  void attach(File f, uint8_t* base) {
    f_ = f;
    base_ = base;
    for (index_ = 0; index_ < layout::MAX_WAITERS && !lock(f, layout::LOCK_WAITER0 + index_, true); ++index_) {
    }
    if (index_ == layout::MAX_WAITERS) throw Error("the topic has 64 waiting readers already (Windows' limit per topic)");
    event_ = CreateEventA(nullptr, FALSE, FALSE, event_name(base, index_).c_str());
    if (!event_) throw Error("CreateEvent failed: " + last_error_text());
    set_waiter_bit(f, base, index_, true);
    registered_ = monotonic_ns();
  }
  ~Waiter() {
    if (event_) {
      try {
        set_waiter_bit(f_, base_, index_, false);
      } catch (...) {
      }
      unlock(f_, layout::LOCK_WAITER0 + index_);
      CloseHandle(event_);
    }
  }
  // Sleep while the word is `expected`, at most timeout_ns (negative: no limit). For 50 ms after
  // registering, in 5 ms slices: a publish racing with the registration may not see the bit.
  void wait(const uint32_t*, uint32_t, int64_t timeout_ns) {
    int64_t cap = monotonic_ns() - registered_ < 50000000 ? 5000000 : -1;
    int64_t t = timeout_ns < 0 ? cap : (cap < 0 ? timeout_ns : std::min(timeout_ns, cap));
    WaitForSingleObject(event_, t < 0 ? INFINITE : DWORD(t / 1000000 + 1));
  }

 private:
  File f_ = no_file;
  uint8_t* base_ = nullptr;
  uint32_t index_ = 0;
  HANDLE event_ = nullptr;
  int64_t registered_ = 0;
};

// A writer's wake-up: the event of every bit set in `waiters`.
class Waker {
 public:
  void attach(File, uint8_t* base) { base_ = base; }
  ~Waker() {
    for (HANDLE h : events_)
      if (h) CloseHandle(h);
  }
  void wake(uint32_t*) {
    uint64_t mask = reinterpret_cast<std::atomic<uint64_t>*>(base_ + layout::HEADER_WAITERS_OFFSET)->load();
    for (uint32_t i = 0; mask; ++i, mask >>= 1) {
      if (!(mask & 1)) continue;
      if (!events_[i]) events_[i] = OpenEventA(EVENT_MODIFY_STATE, FALSE, event_name(base_, i).c_str());
      if (events_[i]) SetEvent(events_[i]);
    }
  }

 private:
  uint8_t* base_ = nullptr;
  HANDLE events_[layout::MAX_WAITERS] = {};
};
#else
using File = int;
constexpr File no_file = -1;
constexpr char path_sep = '/';

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

inline std::string user_id() { return std::to_string(geteuid()); }

// Where runtime directories go, as Python's SHM_ROOT: /dev/shm (RAM), or /tmp where there is none.
inline std::string shm_root() {
  struct stat st {};
  return (::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode)) ? "/dev/shm" : "/tmp";
}

inline std::vector<std::string> list_dir(const std::string& path) {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(path.c_str())) {
    while (const dirent* e = ::readdir(d)) out.push_back(e->d_name);
    ::closedir(d);
  }
  return out;
}

// An open, checked runtime directory: a real directory (never a symlink), owned by this user,
// closed to others. Every file in it is opened relative to this descriptor with O_NOFOLLOW.
class Dir {
 public:
  // "" when it opened; else why not ("missing" when there is no such directory).
  std::string open(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd_ < 0) {
      int err = errno;
      if (err == ENOENT) return "missing";
      if (err == ELOOP || err == ENOTDIR) return "is a symlink or not a directory; shmlaunch never follows one";
      return std::string("cannot be opened: ") + std::strerror(err);
    }
    struct stat st {};
    fstat(fd_, &st);
    if (st.st_uid != geteuid())
      return "belongs to uid " + std::to_string(st.st_uid) + ", not to this user (" + std::to_string(geteuid()) + "); refusing it";
    if (st.st_mode & 077)
      return "is open to other users (mode " + std::to_string((st.st_mode >> 6) & 7) + std::to_string((st.st_mode >> 3) & 7) +
             std::to_string(st.st_mode & 7) + "; it must be 700); refusing it";
    return "";
  }
  ~Dir() {
    if (fd_ >= 0) ::close(fd_);
  }
  File open_file(const std::string&, const std::string& name, bool write) const {
    return ::openat(fd_, name.c_str(), (write ? O_RDWR : O_RDONLY) | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
  }
  // A new file of this process's (0600; an existing name or a symlink there is an error, never a target).
  File create_file(const std::string& name) const {
    return ::openat(fd_, name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  }
  // Removes `name` while it is still the file `f` has open (never one that replaced it).
  void remove_if_same(const std::string& name, File f) const {
    struct stat a {}, b {};
    if (fstat(f, &a) == 0 && fstatat(fd_, name.c_str(), &b, AT_SYMLINK_NOFOLLOW) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev)
      unlinkat(fd_, name.c_str(), 0);
  }

 private:
  int fd_ = -1;
};

inline void close_file(File f) { ::close(f); }
inline long read_file(File f, char* buf, size_t n) { return long(::read(f, buf, n)); }
inline bool regular_size(File f, uint64_t* size) {
  struct stat st {};
  if (fstat(f, &st) != 0 || !S_ISREG(st.st_mode)) return false;
  *size = uint64_t(st.st_size);
  return true;
}
inline uint8_t* map(File f, uint64_t size, std::string* why) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
  if (p != MAP_FAILED) return static_cast<uint8_t*>(p);
  *why = std::strerror(errno);
  return nullptr;
}
inline void unmap(uint8_t* base, uint64_t size) { munmap(base, size); }

// Non-blocking open-file-description byte-range locks (per open(), dropped by the kernel when
// the process dies); false when another open file description conflicts.
inline bool set_lock(File f, uint64_t byte, short type) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = off_t(byte);
  fl.l_len = 1;
  if (fcntl(f, F_OFD_SETLK, &fl) == 0) return true;
  if (errno == EAGAIN || errno == EACCES) return false;
  throw Error(std::string("lock failed: ") + std::strerror(errno));
}
inline bool lock(File f, uint64_t byte, bool exclusive) { return set_lock(f, byte, exclusive ? F_WRLCK : F_RDLCK); }
inline void unlock(File f, uint64_t byte) { set_lock(f, byte, F_UNLCK); }
inline bool held_by_others(File f, uint64_t byte) {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = off_t(byte);
  fl.l_len = 1;
  fcntl(f, F_OFD_GETLK, &fl);
  return fl.l_type != F_UNLCK;
}
inline uint64_t pid() { return uint64_t(getpid()); }

// A reader's sleep: the futex word itself.
class Waiter {
 public:
  void attach(File, uint8_t*) {}
  void wait(uint32_t* word, uint32_t expected, int64_t timeout_ns) {
    timespec ts{time_t(timeout_ns / 1000000000), long(timeout_ns % 1000000000)};
    syscall(SYS_futex, word, FUTEX_WAIT, expected, timeout_ns < 0 ? nullptr : &ts, nullptr, 0);
  }
};

// A writer's wake-up: every sleeper on the futex word.
class Waker {
 public:
  void attach(File, uint8_t*) {}
  void wake(uint32_t* word) { syscall(SYS_futex, word, FUTEX_WAKE, 0x7fffffff, nullptr, nullptr, 0); }
};
#endif
}  // namespace os

inline int64_t realtime_ns() { return os::realtime_ns(); }
inline int64_t monotonic_ns() { return os::monotonic_ns(); }
inline std::string shm_root() { return os::shm_root(); }

// ---------------------------------------------------------------- trace points
// While `shmlaunch trace` holds the lock of trace.request in the runtime directory, this process
// records each receive, release and publish into its own ring, trace.<pid>.ring (LAYOUT.md, "Trace
// rings"), as the Python clients do. It looks for the request at most every 250 ms: after a
// receive that waited, and every 64th step otherwise; off, a step costs a counter and a test.
namespace trace {
constexpr int64_t kLookEveryNs = 250000000;

#ifndef _WIN32
class Agent {
 public:
  static Agent& instance() {
    static Agent agent;
    return agent;
  }
  // Record whenever a tracer attaches to runtime directory `dir` (the first one named).
  void watch(const std::string& dir) {
    std::lock_guard<std::mutex> g(mutex_);
    if (dir_.empty()) dir_ = dir;
  }
  void tick(bool waited) {
    if (!waited && (++steps_ & 63) != 0) return;
    int64_t now = monotonic_ns();
    if (now < next_look_.load(std::memory_order_relaxed)) return;
    next_look_.store(now + kLookEveryNs, std::memory_order_relaxed);
    look();
  }
  bool on() const { return ring_.load(std::memory_order_acquire) != nullptr; }
  void put(uint16_t kind, uint64_t topic, uint64_t seq, uint64_t source_seq, int64_t stamp, uint64_t generation, uint32_t overwritten) {
    while (busy_.test_and_set(std::memory_order_acquire)) {
    }
    if (uint8_t* base = ring_.load(std::memory_order_relaxed)) {
      auto* head_word = reinterpret_cast<std::atomic<uint64_t>*>(base + layout::TRACE_HEADER_HEAD_OFFSET);
      uint64_t head = head_word->load(std::memory_order_relaxed);
      uint8_t* r = base + layout::TRACE_HEADER_SIZE + (head & (layout::TRACE_CAPACITY - 1)) * layout::TRACE_RECORD_SIZE;
      int64_t now = monotonic_ns();
      uint16_t entry = layout::TRACE_NO_ENTRY;
      uint32_t generation32 = uint32_t(generation);
      uint32_t lost[3] = {overwritten, 0, 0};
      static_assert(sizeof lost == layout::TRACE_RECORD_LOST_SIZE, "lost is three u32 counts");
      std::memcpy(r + layout::TRACE_RECORD_NS_OFFSET, &now, layout::TRACE_RECORD_NS_SIZE);
      std::memcpy(r + layout::TRACE_RECORD_TOPIC_OFFSET, &topic, layout::TRACE_RECORD_TOPIC_SIZE);
      std::memcpy(r + layout::TRACE_RECORD_SEQ_OFFSET, &seq, layout::TRACE_RECORD_SEQ_SIZE);
      std::memcpy(r + layout::TRACE_RECORD_SOURCE_SEQ_OFFSET, &source_seq, layout::TRACE_RECORD_SOURCE_SEQ_SIZE);
      std::memcpy(r + layout::TRACE_RECORD_STAMP_NS_OFFSET, &stamp, layout::TRACE_RECORD_STAMP_NS_SIZE);
      std::memcpy(r + layout::TRACE_RECORD_KIND_OFFSET, &kind, layout::TRACE_RECORD_KIND_SIZE);
      std::memcpy(r + layout::TRACE_RECORD_ENTRY_OFFSET, &entry, layout::TRACE_RECORD_ENTRY_SIZE);
      std::memcpy(r + layout::TRACE_RECORD_GENERATION_OFFSET, &generation32, layout::TRACE_RECORD_GENERATION_SIZE);
      std::memcpy(r + layout::TRACE_RECORD_LOST_OFFSET, lost, layout::TRACE_RECORD_LOST_SIZE);
      std::memset(r + layout::TRACE_RECORD_RESERVED_60_OFFSET, 0, layout::TRACE_RECORD_RESERVED_60_SIZE);
      head_word->store(head + 1, std::memory_order_release);
    }
    busy_.clear(std::memory_order_release);
  }
  // At exit a ring stays while the tracer listens (it reads the last records, then removes it).
  ~Agent() {
    std::lock_guard<std::mutex> g(mutex_);
    stop(!requested());
  }

 private:
  Agent() = default;
  void look() {
    std::lock_guard<std::mutex> g(mutex_);
    if (dir_.empty()) return;
    bool wanted = requested();
    if (wanted && !ring_.load()) {
      auto dir = std::make_unique<os::Dir>();
      if (dir->open(dir_).empty()) start(std::move(dir));
    } else if (!wanted && ring_.load()) {
      stop(true);
    }
  }
  // True while a tracer holds the lock of trace.request in the (checked) runtime directory.
  bool requested() const {
    os::Dir dir;
    if (dir_.empty() || !dir.open(dir_).empty()) return false;
    os::File request = dir.open_file(dir_, "trace.request", false);
    bool held = request >= 0 && os::held_by_others(request, 0);
    if (request >= 0) ::close(request);
    return held;
  }
  void start(std::unique_ptr<os::Dir> dir) {
    std::string name = "trace." + std::to_string(getpid()) + ".ring";
    os::File f = dir->create_file(name);
    if (f < 0) return;  // a dead process's ring with our pid: the tracer removes it, we try again later
    uint64_t size = layout::TRACE_HEADER_SIZE + uint64_t(layout::TRACE_CAPACITY) * layout::TRACE_RECORD_SIZE;
    std::string why;
    uint8_t* base = posix_fallocate(f, 0, off_t(size)) == 0 ? os::map(f, size, &why) : nullptr;
    if (!base) {
      dir->remove_if_same(name, f);
      ::close(f);
      return;
    }
    uint32_t version = layout::TRACE_VERSION, capacity = layout::TRACE_CAPACITY;
    uint64_t pid = os::pid();
    int64_t offset = realtime_ns() - monotonic_ns();
    std::string label;
    if (const char* node = std::getenv("SHMLAUNCH_NODE"); node && *node) label = node;
    else if (FILE* comm = std::fopen("/proc/self/comm", "r")) {
      char buf[64] = {0};
      if (std::fgets(buf, sizeof buf, comm)) label = std::string(buf, strcspn(buf, "\n"));
      std::fclose(comm);
    }
    std::memcpy(base + layout::TRACE_HEADER_MAGIC_OFFSET, layout::TRACE_MAGIC, layout::TRACE_HEADER_MAGIC_SIZE);
    std::memcpy(base + layout::TRACE_HEADER_VERSION_OFFSET, &version, layout::TRACE_HEADER_VERSION_SIZE);
    std::memcpy(base + layout::TRACE_HEADER_CAPACITY_OFFSET, &capacity, layout::TRACE_HEADER_CAPACITY_SIZE);
    std::memcpy(base + layout::TRACE_HEADER_PID_OFFSET, &pid, layout::TRACE_HEADER_PID_SIZE);
    std::memcpy(base + layout::TRACE_HEADER_CLOCK_OFFSET_OFFSET, &offset, layout::TRACE_HEADER_CLOCK_OFFSET_SIZE);
    std::memcpy(base + layout::TRACE_HEADER_NAME_OFFSET, label.data(), std::min<size_t>(label.size(), layout::TRACE_HEADER_NAME_SIZE));
    ring_dir_ = std::move(dir);
    ring_file_ = f;
    ring_name_ = name;
    ring_.store(base, std::memory_order_release);
  }
  void stop(bool remove) {
    uint8_t* base = ring_.load();
    if (!base) return;
    while (busy_.test_and_set(std::memory_order_acquire)) {
    }
    ring_.store(nullptr, std::memory_order_release);
    busy_.clear(std::memory_order_release);
    os::unmap(base, layout::TRACE_HEADER_SIZE + uint64_t(layout::TRACE_CAPACITY) * layout::TRACE_RECORD_SIZE);
    if (remove) ring_dir_->remove_if_same(ring_name_, ring_file_);
    ::close(ring_file_);
    ring_dir_.reset();
  }

  std::mutex mutex_;
  std::string dir_;
  std::atomic<uint8_t*> ring_{nullptr};
  std::atomic_flag busy_ = ATOMIC_FLAG_INIT;
  std::atomic<int64_t> next_look_{0};
  std::atomic<uint32_t> steps_{0};
  std::unique_ptr<os::Dir> ring_dir_;
  os::File ring_file_ = -1;
  std::string ring_name_;
};
#else
// Trace points are in the Linux clients only (as in Python): a Windows process never records.
class Agent {
 public:
  static Agent& instance() {
    static Agent agent;
    return agent;
  }
  void watch(const std::string&) {}
  void tick(bool) {}
  bool on() const { return false; }
  void put(uint16_t, uint64_t, uint64_t, uint64_t, int64_t, uint64_t, uint32_t) {}
};
#endif

inline uint64_t topic_id(const uint8_t* header) {
  uint64_t id;
  std::memcpy(&id, header + layout::HEADER_WAKE_ID_OFFSET, layout::HEADER_WAKE_ID_SIZE);
  return id;
}
}  // namespace trace

// The runtime directory of the graph called `graph`: <shm_root>/shmlaunch-<user>-<graph>, as
// Python's graph_runtime_dir (a program attaching to a running graph by name).
inline std::string graph_runtime_dir(const std::string& graph) {
  return shm_root() + os::path_sep + "shmlaunch-" + os::user_id() + "-" + graph;
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
  const std::string prefix = "shmlaunch-" + os::user_id() + "-";
  for (const auto& name : os::list_dir(shm_root()))
    if (name.compare(0, prefix.size(), prefix) == 0) out.push_back(name.substr(prefix.size()));
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

// An open, checked runtime directory (os::Dir says what "checked" means on each system).
class RuntimeDir {
 public:
  RuntimeDir(const std::string& path, const std::string& action) : path_(path) {
    std::string why = dir_.open(path);
    if (why == "missing") throw TopicNotFound(action + ": there is no runtime directory " + path + graphs_hint());
    if (!why.empty()) throw Error(action + ": runtime directory " + path + " " + why);
  }
  os::File open_file(const std::string& name, bool write) const { return dir_.open_file(path_, name, write); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  os::Dir dir_;
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
  os::File fd = dir.open_file("registry.yaml", false);
  if (fd == os::no_file) throw TopicNotFound(action + ": the registry in " + dir.path() + " does not list it" + graphs_hint());
  std::string text;
  std::vector<char> buf(65536);
  long n;
  while ((n = os::read_file(fd, buf.data(), buf.size())) > 0 && text.size() <= kMaxRegistryBytes) text.append(buf.data(), size_t(n));
  os::close_file(fd);
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
          cfg.pool = uint32_t(std::min<unsigned long long>(std::stoull(c.number()), layout::MAX_POOL + 1));
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
      if (cfg.capacity < 1 || cfg.capacity > layout::MAX_CAPACITY)
        throw std::runtime_error("capacity " + std::to_string(cfg.capacity) + " is outside 1.." + std::to_string(layout::MAX_CAPACITY));
      if (cfg.pool < 1 || cfg.pool > layout::MAX_POOL) throw std::runtime_error("pool is outside 1..256");
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
// One mapping of a topic's segment file, with its lock bytes (per open file, dropped by the
// system when the process dies: OFD locks on Linux, LockFileEx on Windows).
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
    std::string path = dir.path() + os::path_sep + cfg_.segment;
    fd_ = dir.open_file(cfg_.segment, true);
    if (fd_ == os::no_file) throw TopicNotFound(action + ": its segment " + path + " is missing");
    uint64_t size = 0;
    bool regular = os::regular_size(fd_, &size);
    if (!regular || size < layout::HEADER_SIZE) {
      os::close_file(fd_);
      throw SegmentCorrupt(action + ": segment " + path +
                           (regular ? " is " + std::to_string(size) + " bytes, shorter than a header" : " is not a regular file"));
    }
    size_ = size_t(size);
    std::string why;
    base_ = os::map(fd_, size_, &why);
    if (!base_) {
      os::close_file(fd_);
      throw SegmentCorrupt(action + ": cannot map " + path + ": " + why);
    }
    try {
      check_header(action, path);
    } catch (...) {
      os::unmap(base_, size_);
      os::close_file(fd_);
      throw;
    }
  }
  ~Segment() {
    if (base_) os::unmap(base_, size_);
    if (fd_ != os::no_file) os::close_file(fd_);  // drops every lock this open file holds
  }
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  const TopicConfig& config() const { return cfg_; }
  uint8_t* base() const { return base_; }
  uint64_t slot_offset(uint32_t slot) const { return slots_offset_ + uint64_t(slot) * stride_; }
  uint8_t* payload(uint32_t slot) const { return base_ + slot_offset(slot) + layout::SLOT_HEADER_SIZE; }
  uint64_t* state(uint32_t slot) const { return reinterpret_cast<uint64_t*>(base_ + slot_offset(slot) + layout::SLOT_STATE_OFFSET); }
  uint32_t* wake() const { return reinterpret_cast<uint32_t*>(base_ + layout::HEADER_WAKE_OFFSET); }
  os::File file() const { return fd_; }

  // Non-blocking one-byte locks; false when another open file conflicts.
  bool lock(uint64_t byte, bool exclusive) const { return os::lock(fd_, byte, exclusive); }
  void unlock(uint64_t byte) const { os::unlock(fd_, byte); }
  bool held_by_others(uint64_t byte) const { return os::held_by_others(fd_, byte); }

 private:
  // The same checks, in the same order and with the same words, as Python's header_problem and
  // check_header (the cross-language test feeds all three clients the same crafted segments).
  void check_header(const std::string& action, const std::string& path) {
    namespace L = layout;
    const uint8_t* b = base_;
    auto u32 = [b](size_t off) { uint32_t v; std::memcpy(&v, b + off, 4); return v; };
    auto u64 = [b](size_t off) { uint64_t v; std::memcpy(&v, b + off, 8); return v; };
    auto corrupt = [&](const std::string& problem) {
      throw SegmentCorrupt(action + ": segment " + path + " is corrupt: its header's " + problem);
    };
    const std::string at = " is outside 1..";
    if (std::memcmp(b + L::HEADER_MAGIC_OFFSET, L::MAGIC, L::HEADER_MAGIC_SIZE) != 0) {
      char hex[2 * L::HEADER_MAGIC_SIZE + 1];
      for (size_t i = 0; i < L::HEADER_MAGIC_SIZE; ++i) std::snprintf(hex + 2 * i, 3, "%02x", b[L::HEADER_MAGIC_OFFSET + i]);
      corrupt(std::string("magic is 0x") + hex + ", expected " + L::MAGIC);
    }
    uint32_t version = u32(L::HEADER_LAYOUT_VERSION_OFFSET);
    if (version != L::LAYOUT_VERSION)
      throw LayoutVersion(action + ": segment " + path + " has layout version " + std::to_string(version) + ", this shmlaunch uses " +
                          std::to_string(L::LAYOUT_VERSION));
    uint32_t pool = u32(L::HEADER_POOL_OFFSET);
    uint64_t capacity = u64(L::HEADER_CAPACITY_OFFSET);
    stride_ = u64(L::HEADER_SLOT_STRIDE_OFFSET);
    slots_offset_ = u64(L::HEADER_SLOTS_OFFSET_OFFSET);
    uint32_t ndim = u32(L::HEADER_NDIM_OFFSET);
    // Every field bounded before any product is formed: no overflow, whatever the file says.
    const uint64_t size = size_;
    if (pool == 0 || pool > L::MAX_POOL) corrupt("pool " + std::to_string(pool) + at + std::to_string(L::MAX_POOL));
    if (capacity == 0 || capacity > L::MAX_CAPACITY) corrupt("capacity " + std::to_string(capacity) + at + std::to_string(L::MAX_CAPACITY));
    if (slots_offset_ < L::SLOTS_OFFSET || slots_offset_ % L::ALIGN || slots_offset_ > size)
      corrupt("slots_offset " + std::to_string(slots_offset_) + " is not a multiple of " + std::to_string(L::ALIGN) + " from " +
              std::to_string(L::SLOTS_OFFSET) + " to the file size " + std::to_string(size));
    auto min_stride = (L::SLOT_HEADER_SIZE + capacity + L::ALIGN - 1) / L::ALIGN * L::ALIGN;
    if (stride_ < min_stride || stride_ % L::ALIGN || stride_ > (size - slots_offset_) / pool)
      corrupt("slot_stride " + std::to_string(stride_) + " does not fit: capacity " + std::to_string(capacity) + " needs at least " +
              std::to_string(min_stride) + ", and " + std::to_string(pool) + " slots from offset " + std::to_string(slots_offset_) +
              " must end within the file size " + std::to_string(size));
    if (ndim > L::MAX_NDIM) corrupt("ndim " + std::to_string(ndim) + " is above " + std::to_string(L::MAX_NDIM));
    const char* dtype = reinterpret_cast<const char*>(b + L::HEADER_DTYPE_OFFSET);
    std::string typestr(dtype, strnlen(dtype, L::HEADER_DTYPE_SIZE));
    bool padded = std::all_of(typestr.begin(), typestr.end(), [](char c) { return c >= 0x21 && c <= 0x7e; });
    for (size_t i = typestr.size(); i < L::HEADER_DTYPE_SIZE; ++i) padded = padded && dtype[i] == 0;
    if (!padded) corrupt("dtype is not an ASCII type string padded with NULs");
    std::vector<uint64_t> shape;
    for (uint32_t k = 0; k < ndim; ++k) shape.push_back(u64(L::HEADER_SHAPE_OFFSET + 8 * k));
    auto mismatch = [&](const char* field, const std::string& header, const std::string& registry) {
      throw TopicMismatch(action + ": the segment header " + field + " is " + header + ", the registry says " + registry);
    };
    if (capacity != cfg_.capacity) mismatch("capacity", std::to_string(capacity), std::to_string(cfg_.capacity));
    if (pool != cfg_.pool) mismatch("pool", std::to_string(pool), std::to_string(cfg_.pool));
    if (typestr != cfg_.typestr) mismatch("dtype", typestr.empty() ? "None" : typestr, cfg_.typestr.empty() ? "None" : cfg_.typestr);
    if (shape != cfg_.shape) mismatch("shape", detail::shape_str(shape), detail::shape_str(cfg_.shape));
  }

  std::string topic_;
  TopicConfig cfg_;
  os::File fd_ = os::no_file;
  uint8_t* base_ = nullptr;
  size_t size_ = 0;
  uint64_t stride_ = 0;
  uint64_t slots_offset_ = 0;
};

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
    generation_ = o.generation_;
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
    if (!seg_) return;
    if (trace::Agent::instance().on())
      trace::Agent::instance().put(layout::TRACE_RELEASE, trace::topic_id(seg_->base()), seq_, source_seq_, source_ns_, generation_, 0);
    if (--(*holds_)[slot_] == 0) seg_->unlock(layout::LOCK_SLOT0 + slot_);
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
  uint64_t source_seq_ = 0, generation_ = 0;
};

// Opens an existing topic for reading. Keep the Reader alive while Samples of it exist.
class Reader {
 public:
  explicit Reader(const std::string& topic, const std::string& dir = runtime_dir(), const Expect& expect = {})
      : seg_(dir, topic, expect, detail::topic_action("open", topic, " for reading")), holds_(seg_.config().pool, 0) {
    seg_.lock(layout::LOCK_PRESENCE, false);
    waiter_.attach(seg_.file(), seg_.base());
    trace::Agent::instance().watch(dir);
  }

  // The newest message not seen yet, waiting up to timeout_ms (negative: forever).
  std::optional<Sample> receive(int64_t timeout_ms) {
    int64_t deadline = timeout_ms < 0 ? -1 : monotonic_ns() + timeout_ms * 1000000;
    for (;;) {
      uint32_t w = load_wake();
      if (w != last_wake_) {
        if (auto s = take(w)) return s;
        continue;
      }
      int64_t left = deadline < 0 ? -1 : deadline - monotonic_ns();
      if (deadline >= 0 && left <= 0) return std::nullopt;
      waiter_.wait(seg_.wake(), w, left);
      trace::Agent::instance().tick(true);
    }
  }
  // The newest message not seen yet, or nothing at once.
  std::optional<Sample> receive_nowait() {
    uint32_t w = load_wake();
    if (w == last_wake_) return std::nullopt;
    return take(w);
  }
  // The names of release 0.1, kept one release for existing code.
  [[deprecated("use receive()")]] std::optional<Sample> read(int64_t timeout_ms) { return receive(timeout_ms); }
  [[deprecated("use receive_nowait()")]] std::optional<Sample> read_nowait() { return receive_nowait(); }
  const TopicConfig& config() const { return seg_.config(); }
  bool writer_alive() const { return seg_.held_by_others(layout::LOCK_WRITER); }
  uint64_t missed() const { return missed_; }

 private:
  uint32_t load_wake() const { return reinterpret_cast<std::atomic<uint32_t>*>(seg_.wake())->load(std::memory_order_acquire); }
  std::optional<Sample> take(uint32_t w) {
    last_wake_ = w;
    uint32_t slot = w & layout::WAKE_SLOT_MASK;
    if (slot >= holds_.size()) return std::nullopt;
    if (holds_[slot] == 0 && !seg_.lock(layout::LOCK_SLOT0 + slot, false)) return std::nullopt;  // being written
    const uint8_t* h = seg_.base() + seg_.slot_offset(slot);
    uint64_t state, length, source_seq, generation;
    int64_t source_ns, publish_ns;
    std::memcpy(&state, h + layout::SLOT_STATE_OFFSET, layout::SLOT_STATE_SIZE);
    std::memcpy(&length, h + layout::SLOT_LENGTH_OFFSET, layout::SLOT_LENGTH_SIZE);
    std::memcpy(&source_ns, h + layout::SLOT_SOURCE_NS_OFFSET, layout::SLOT_SOURCE_NS_SIZE);
    std::memcpy(&publish_ns, h + layout::SLOT_PUBLISH_NS_OFFSET, layout::SLOT_PUBLISH_NS_SIZE);
    std::memcpy(&generation, h + layout::SLOT_GENERATION_OFFSET, layout::SLOT_GENERATION_SIZE);
    std::memcpy(&source_seq, h + layout::SLOT_SOURCE_SEQ_OFFSET, layout::SLOT_SOURCE_SEQ_SIZE);
    uint64_t seq = state >> 1;
    if ((state & 1) || seq <= last_seq_ || length > seg_.config().capacity) {
      if (holds_[slot] == 0) seg_.unlock(layout::LOCK_SLOT0 + slot);
      return std::nullopt;
    }
    ++holds_[slot];
    uint64_t overwritten = last_seq_ && seq > last_seq_ + 1 ? seq - last_seq_ - 1 : 0;
    missed_ += overwritten;
    last_seq_ = seq;
    trace::Agent& tracer = trace::Agent::instance();
    tracer.tick(false);
    if (tracer.on()) tracer.put(layout::TRACE_RECEIVE, trace::topic_id(seg_.base()), seq, source_seq, source_ns, generation, uint32_t(overwritten));
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
    s.generation_ = generation;
    return s;
  }

  Segment seg_;
  std::vector<uint32_t> holds_;
  os::Waiter waiter_;
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
    if (!seg_.lock(layout::LOCK_WRITER, true)) {
      uint64_t pid;
      std::memcpy(&pid, seg_.base() + layout::HEADER_WRITER_PID_OFFSET, layout::HEADER_WRITER_PID_SIZE);
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
    uint64_t* gen = reinterpret_cast<uint64_t*>(seg_.base() + layout::HEADER_WRITER_GENERATION_OFFSET);
    generation_ = *gen + 1;
    waker_.attach(seg_.file(), seg_.base());
    uint64_t pid = os::pid();
    int64_t now = realtime_ns();
    std::memcpy(seg_.base() + layout::HEADER_WRITER_PID_OFFSET, &pid, layout::HEADER_WRITER_PID_SIZE);
    std::memcpy(gen, &generation_, layout::HEADER_WRITER_GENERATION_SIZE);
    std::memcpy(seg_.base() + layout::HEADER_WRITER_ATTACH_NS_OFFSET, &now, layout::HEADER_WRITER_ATTACH_NS_SIZE);
    trace::Agent::instance().watch(dir);
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
      if (!done_ && w_) w_->seg_.unlock(layout::LOCK_SLOT0 + slot_);  // cancelled: left odd, never delivered
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
      if (seg_.lock(layout::LOCK_SLOT0 + slot, true)) return int(slot);
    if (trace::Agent::instance().on())
      trace::Agent::instance().put(layout::TRACE_DROP, trace::topic_id(seg_.base()), seq_ + 1, 0, 0, generation_, 0);
    return -1;
  }
  static void store(uint64_t* word, uint64_t v) { reinterpret_cast<std::atomic<uint64_t>*>(word)->store(v, std::memory_order_release); }
  void begin(uint32_t slot) { store(seg_.state(slot), 2 * seq_ + 1); }
  uint64_t commit(uint32_t slot, size_t size, int64_t source_ns, uint64_t source_seq) {
    uint64_t seq = ++seq_;
    uint8_t* h = seg_.base() + seg_.slot_offset(slot);
    int64_t now = realtime_ns();
    int64_t src = source_ns < 0 ? now : source_ns;
    uint64_t len = size;
    std::memcpy(h + layout::SLOT_LENGTH_OFFSET, &len, layout::SLOT_LENGTH_SIZE);
    std::memcpy(h + layout::SLOT_SOURCE_NS_OFFSET, &src, layout::SLOT_SOURCE_NS_SIZE);
    std::memcpy(h + layout::SLOT_PUBLISH_NS_OFFSET, &now, layout::SLOT_PUBLISH_NS_SIZE);
    std::memcpy(h + layout::SLOT_GENERATION_OFFSET, &generation_, layout::SLOT_GENERATION_SIZE);
    std::memcpy(h + layout::SLOT_SOURCE_SEQ_OFFSET, &source_seq, layout::SLOT_SOURCE_SEQ_SIZE);
    trace::Agent& tracer = trace::Agent::instance();
    tracer.tick(false);
    if (tracer.on()) tracer.put(layout::TRACE_PUBLISH, trace::topic_id(seg_.base()), seq, source_seq, src, generation_, 0);  // before readers can see it
    store(seg_.state(slot), 2 * seq);
    seg_.unlock(layout::LOCK_SLOT0 + slot);
    uint64_t latest = seq;
    std::memcpy(seg_.base() + layout::HEADER_LATEST_SEQ_OFFSET, &latest, layout::HEADER_LATEST_SEQ_SIZE);
    reinterpret_cast<std::atomic<uint32_t>*>(seg_.wake())->store(uint32_t(((seq & layout::WAKE_SEQ_MASK) << layout::WAKE_SEQ_SHIFT) | slot), std::memory_order_seq_cst);
    waker_.wake(seg_.wake());
    for (size_t k = 0; k < order_.size(); ++k)
      if (order_[k] == slot) {
        order_.erase(order_.begin() + long(k));
        break;
      }
    order_.push_back(slot);
    return seq;
  }

  Segment seg_;
  os::Waker waker_;
  std::vector<uint32_t> order_;  // slots, oldest message first
  uint64_t seq_ = 0;
  uint64_t generation_ = 0;
};

}  // namespace shmlaunch
