// Typed views of the built-in nodes' messages (transport/LAYOUT.md, "Message layouts").
// Layout version 1; check `version` before trusting the rest.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shmlaunch {

constexpr uint32_t kMaxHands = 4;
constexpr uint32_t kLandmarksVersion = 1;
constexpr uint32_t kGestureVersion = 1;
constexpr uint32_t kFrameSourceVersion = 1;

#pragma pack(push, 1)
struct Hand {
  float landmarks[21][3];  // x, y normalised to the image; z relative to the wrist
  float world[21][3];      // metres
  float score;             // handedness confidence
  uint32_t handedness;     // 0 left, 1 right
};

struct HandLandmarks {
  uint32_t version;
  uint32_t hand_count;
  uint64_t frame_seq;
  int64_t capture_ns;
  int64_t received_ns;
  int64_t inference_ns;
  uint32_t image_width;
  uint32_t image_height;
  Hand hands[kMaxHands];
};

struct Gesture {
  uint32_t version;
  uint32_t hand_count;
  uint64_t frame_seq;
  int64_t capture_ns;
  uint8_t gesture[kMaxHands];     // 0 none, 1 fist, 2 open_palm, 3 call, 4 four, 5 rock, 6 point, 7 peace, 8 thumbs_up
  uint8_t fingers[kMaxHands];     // bit i: finger i extended (0 thumb ... 4 little)
  uint8_t handedness[kMaxHands];  // 0 left, 1 right
  uint8_t reserved[kMaxHands];
  float score[kMaxHands];
  uint8_t reserved2[8];
};

// Where a camera frame came from (camera/source), published beside each frame.
struct FrameSource {
  uint32_t version;
  uint32_t kind;        // 0 device, 1 video file, 2 stream, 3 image folder, 4 recording
  uint64_t frame_seq;   // the camera frame's sequence number
  int64_t capture_ns;   // its capture time, CLOCK_REALTIME ns
  int64_t index;        // frame index in the video or stream, or the image's index in the folder
  char name[200];       // UTF-8, NUL padded (not terminated when all 200 bytes are used)
};
#pragma pack(pop)

static_assert(sizeof(Hand) == 512, "Hand layout");
static_assert(sizeof(HandLandmarks) == 2096, "HandLandmarks layout");
static_assert(offsetof(HandLandmarks, hands) == 48, "HandLandmarks layout");
static_assert(sizeof(Gesture) == 64, "Gesture layout");
static_assert(offsetof(Gesture, score) == 40, "Gesture layout");
static_assert(sizeof(FrameSource) == 232, "FrameSource layout");
static_assert(offsetof(FrameSource, index) == 24 && offsetof(FrameSource, name) == 32, "FrameSource layout");

inline const char* gesture_name(uint8_t g) {
  static const char* names[] = {"none", "fist", "open_palm", "call", "four", "rock", "point", "peace", "thumbs_up"};
  return g < 9 ? names[g] : "?";
}

}  // namespace shmlaunch
