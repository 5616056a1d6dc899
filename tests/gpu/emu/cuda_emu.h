// A CPU emulation of the CUDA execution model, enough to run gpu/kernels/*.cu unchanged in tests.
//
// Blocks run one at a time; the threads of a block are cooperative fibers (ucontext) on one OS
// thread, so function-scope statics serve as the block's __shared__ memory and atomics are plain.
// __syncthreads waits for every live thread of the block, a warp primitive for every live lane of
// the warp; when no fiber can run and no barrier can open, the launch fails with "deadlock" (a
// divergent barrier or shuffle: a bug on a GPU too). Block sizes must be multiples of 32, as the
// kernels assume.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <ucontext.h>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct int4 {
  int x, y, z, w;
};
struct float4 {
  float x, y, z, w;
};
struct float2 {
  float x, y;
};
struct int2 {
  int x, y;
};
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
using std::max;
using std::min;

// ------------------------------------------------------------------ fp16 (cuda_fp16.h subset)
typedef _Float16 __half;
struct __half2 {
  _Float16 x, y;
};
inline float __half2float(__half h) { return (float)h; }
inline __half __float2half(float f) { return (__half)f; }
inline float2 __half22float2(__half2 h) { return {(float)h.x, (float)h.y}; }
inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
using std::fmaf;
using std::log1pf;

namespace emu {
enum { RUN, WAIT_BLOCK, WAIT_WARP, DONE };
struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  dim3 tid;
  int state = RUN;
};
inline ucontext_t sched;
inline std::vector<Fiber> fibers;
inline Fiber *cur = nullptr;
inline dim3 block_idx, block_dim, grid_dim;
inline std::function<void()> body;
inline std::vector<int64_t> lanes;  // one 8-byte exchange slot per thread

inline int linear(const dim3 &t) { return (int)(t.x + block_dim.x * (t.y + block_dim.y * t.z)); }
inline void wait(int how) {
  cur->state = how;
  swapcontext(&cur->ctx, &sched);
}
inline void tramp() {
  body();
  cur->state = DONE;
  swapcontext(&cur->ctx, &sched);
}

// Runs every thread of one block until all are done, opening barriers when all live members wait.
inline void run_block() {
  const int n = (int)fibers.size();
  for (;;) {
    bool ran = false;
    for (auto &f : fibers)
      if (f.state == RUN) {
        cur = &f;
        swapcontext(&sched, &f.ctx);
        ran = true;
      }
    if (ran) continue;
    bool opened = false, live = false, all_block = true;
    for (int w = 0; w < n; w += 32) {
      bool any = false, all = true, exited = false;
      for (int i = w; i < w + 32; ++i) {
        exited |= fibers[i].state == DONE;
        if (fibers[i].state == DONE) continue;
        any = true;
        all &= fibers[i].state == WAIT_WARP;
      }
      if (any && all) {
        if (exited) throw std::runtime_error("full-warp shuffle or reduction after some lanes exited");
        for (int i = w; i < w + 32; ++i)
          if (fibers[i].state == WAIT_WARP) fibers[i].state = RUN;
        opened = true;
      }
    }
    if (opened) continue;
    for (auto &f : fibers) {
      if (f.state == DONE) continue;
      live = true;
      all_block &= f.state == WAIT_BLOCK;
    }
    if (!live) return;
    if (!all_block) throw std::runtime_error("deadlock: threads wait at different barriers");
    for (auto &f : fibers) f.state = f.state == WAIT_BLOCK ? RUN : f.state;
  }
}

template <class... A, std::size_t... I>
std::tuple<A...> unpack(void **args, std::index_sequence<I...>) {
  return std::tuple<A...>{*reinterpret_cast<A *>(args[I])...};
}

// Launches fn over the grid; args[i] points to the bytes of parameter i, sizes[i] must be its size.
template <class... A>
void launch(void (*fn)(A...), dim3 g, dim3 b, void **args, const int *sizes, int nargs, const char *name) {
  const int expect[] = {(int)sizeof(A)..., 0};
  if (nargs != (int)sizeof...(A)) throw std::runtime_error(std::string(name) + ": wrong number of arguments");
  for (int i = 0; i < nargs; ++i)
    if (sizes[i] != expect[i])
      throw std::runtime_error(std::string(name) + ": argument " + std::to_string(i) + " has " +
                               std::to_string(sizes[i]) + " bytes, the kernel takes " + std::to_string(expect[i]));
  const int threads = (int)(b.x * b.y * b.z);
  if (threads % 32) throw std::runtime_error(std::string(name) + ": block size not a multiple of 32");
  auto t = unpack<A...>(args, std::index_sequence_for<A...>{});
  body = [&] { std::apply(fn, t); };
  block_dim = b;
  grid_dim = g;
  fibers.resize(threads);
  lanes.assign(threads, 0);
  for (unsigned z = 0; z < g.z; ++z)
    for (unsigned y = 0; y < g.y; ++y)
      for (unsigned x = 0; x < g.x; ++x) {
        block_idx = {x, y, z};
        for (int i = 0; i < threads; ++i) {
          Fiber &f = fibers[i];
          f.stack.resize(1 << 16);
          f.tid = {i % b.x, (i / b.x) % b.y, i / (b.x * b.y)};
          f.state = RUN;
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.data();
          f.ctx.uc_stack.ss_size = f.stack.size();
          f.ctx.uc_link = nullptr;
          makecontext(&f.ctx, tramp, 0);
        }
        run_block();
      }
}

template <class T> T exchange(T v, int partner) {
  const int me = linear(cur->tid);
  static_assert(sizeof(T) <= 8, "8-byte lanes");
  std::memcpy(&lanes[me], &v, sizeof(T));
  wait(WAIT_WARP);
  T r;
  std::memcpy(&r, &lanes[(me & ~31) | partner], sizeof(T));
  wait(WAIT_WARP);
  return r;
}
}  // namespace emu

#define threadIdx (emu::cur->tid)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::wait(emu::WAIT_BLOCK); }
inline void __check_mask(unsigned mask) {
  if (mask != 0xffffffffu) throw std::runtime_error("only full-warp masks are emulated");
}
template <class T> T __shfl_xor_sync(unsigned mask, T v, int o) {
  __check_mask(mask);
  return emu::exchange(v, (emu::linear(threadIdx) & 31) ^ o);
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) {
  __check_mask(mask);
  const int me = emu::linear(threadIdx);
  emu::lanes[me] = v;
  emu::wait(emu::WAIT_WARP);
  unsigned s = 0;
  for (int l = 0; l < 32; ++l) s += (unsigned)emu::lanes[(me & ~31) | l];
  emu::wait(emu::WAIT_WARP);
  return s;
}
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
  return c;
}
inline int __clzll(long long v) { return v == 0 ? 64 : __builtin_clzll((unsigned long long)v); }
template <class T> T __ldcs(const T *p) {  // global loads of 16-byte vectors must be 16-byte aligned
  if (reinterpret_cast<uintptr_t>(p) % sizeof(T)) throw std::runtime_error("misaligned vector load");
  return *p;
}
template <class T> T atomicAdd(T *p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
