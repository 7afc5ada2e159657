// The byte formats the fuzz targets read, shared by both (and written by
// make_seeds.py for the seed corpus).
//
//   frames block := count:u8 (mod 9), then `count` frames,
//                   frame := len:u16le, then len bytes (cut short at the end)
//
// A reader that runs out of bytes returns what it has: every input is valid.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "protocol.hpp"

namespace zfarm::fuzz {

class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : p_(data), end_(data + size) {}

  bool empty() const { return p_ >= end_; }
  std::uint8_t u8() { return empty() ? 0 : *p_++; }
  std::uint16_t u16() {
    const std::uint16_t lo = u8();
    return static_cast<std::uint16_t>(lo | (u8() << 8));
  }
  std::string bytes(std::size_t n) {
    const std::size_t have = static_cast<std::size_t>(end_ - p_);
    if (n > have) n = have;
    std::string s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return s;
  }
  // A frames block (see above).  With `signed_first`, a valid signature
  // frame is put in front, so inputs spend their bytes on the header.
  void frames(std::vector<zmq::message_t>* out, bool signed_first) {
    if (signed_first) {
      char sig[proto::kSignatureSize] = {'Z', 'F', 'R', 'M', static_cast<char>(proto::kVersion)};
      out->emplace_back(sig, sizeof sig);
    }
    const int count = u8() % 9;
    for (int i = 0; i < count; ++i) {
      const std::string b = bytes(u16());
      out->emplace_back(b.data(), b.size());
    }
  }

 private:
  const std::uint8_t* p_;
  const std::uint8_t* end_;
};

}  // namespace zfarm::fuzz
