// A CPU emulation of the CUDA execution model, enough to run gpu/kernels/*.cu unchanged in tests.
//
// The threads of a block are cooperative fibers on one OS thread (an x86-64 stack switch: no
// system call per switch, unlike swapcontext). __syncthreads waits for every live thread of the
// block, a warp primitive for every live lane of the warp; when no fiber can run and no barrier can
// open, the launch fails with "deadlock" (a divergent barrier or shuffle: a bug on a GPU too).
// Block sizes must be multiples of 32, as the kernels assume.
//
// What the emulation does to expose bugs a GPU would show (tests/gpu/cuda_emulator.py sets it up):
//  - order: with a nonzero seed the blocks of a grid run in a shuffled order, and the fibers of a
//    block are resumed in a shuffled order, so a result that depends on block order, or a read of
//    another thread's shared memory without a barrier, changes with the seed;
//  - shared memory: each block gets fresh allocations, exactly as large as declared (static
//    __shared__, rewritten by cuda_emulator.py into emu::shared) or requested (dynamic), filled with
//    a nonzero byte that varies per block; under AddressSanitizer an access past the end is an
//    error, and a static array is aligned only as declared (UBSan then flags wider vector loads);
//  - limits: an H100's 48 KB of shared memory per block without the opt-in attribute (gpu.runtime
//    sets none), and 16-byte alignment of vector loads from global memory.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif
#if !defined(__x86_64__)
#error "the CUDA emulator's fiber switch is x86-64 assembly"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

// CUDA's vector types carry their size as alignment.
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(8) int2 {
  int x, y;
};
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
using std::max;
using std::min;

// ------------------------------------------------------------------ fp16 (cuda_fp16.h subset)
typedef _Float16 __half;
struct alignas(4) __half2 {
  _Float16 x, y;
};
inline float __half2float(__half h) { return (float)h; }
inline __half __float2half(float f) { return (__half)f; }
inline float2 __half22float2(__half2 h) { return {(float)h.x, (float)h.y}; }
inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
using std::fmaf;
using std::log1pf;

// ------------------------------------------------------------------ fibers
// emu_switch(save, load): pushes the callee-saved registers, stores the stack pointer to *save,
// and continues on the stack `load` (one that emu_switch saved, or one set up by Fiber::start).
extern "C" __attribute__((visibility("hidden"))) void emu_switch(void **save, void *load);
asm(R"(
  .text
  .globl emu_switch
  .hidden emu_switch
  .type emu_switch, @function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch, .-emu_switch
)");

namespace emu {
// AddressSanitizer must be told about every stack switch, and that a reused stack holds no frames
// (the redzones of frames that never returned stay poisoned), or it reports false errors.
#if defined(__SANITIZE_ADDRESS__)
inline void asan_start(void **fake, const void *bottom, size_t size) { __sanitizer_start_switch_fiber(fake, bottom, size); }
inline void asan_finish(void *fake, const void **bottom, size_t *size) { __sanitizer_finish_switch_fiber(fake, bottom, size); }
inline void asan_clear(void *p, size_t size) { __asan_unpoison_memory_region(p, size); }
#else
inline void asan_start(void **, const void *, size_t) {}
inline void asan_finish(void *, const void **, size_t *) {}
inline void asan_clear(void *, size_t) {}
#endif

enum { RUN, WAIT_BLOCK, WAIT_WARP, DONE };
constexpr size_t STACK = 1 << 16;
[[noreturn]] void fiber_main();

struct Fiber {
  std::vector<char> stack = std::vector<char>(STACK);
  void *sp = nullptr;
  void *fake = nullptr;  // AddressSanitizer's fake stack while switched out
  dim3 tid;
  int state = DONE;
  int parity = 0;  // which set of warp exchange slots the last warp operation used

  // Ready to enter fiber_main on the next switch: six zeroed registers, then fiber_main as the return
  // address, at a 16-byte boundary so that fiber_main starts with the ABI's stack alignment.
  void start(dim3 t) {
    tid = t;
    state = RUN;
    parity = 0;
    asan_clear(stack.data(), stack.size());
    auto top = reinterpret_cast<uintptr_t>(stack.data() + stack.size()) & ~uintptr_t(15);
    void **frame = reinterpret_cast<void **>(top) - 8;
    std::fill(frame, frame + 8, nullptr);
    frame[6] = reinterpret_cast<void *>(&fiber_main);
    sp = frame;
  }
};

inline void *sched_sp = nullptr;
inline const void *sched_bottom = nullptr;
inline size_t sched_size = 0;
inline std::vector<Fiber> fibers;
inline Fiber *cur = nullptr;
inline std::exception_ptr fault;  // thrown inside a fiber, rethrown by the scheduler
inline dim3 block_idx, block_dim, grid_dim;
inline std::function<void()> body;
inline std::vector<int64_t> lanes;  // two 8-byte warp exchange slots per thread

inline int linear(const dim3 &t) { return (int)(t.x + block_dim.x * (t.y + block_dim.y * t.z)); }

inline void resume(Fiber &f) {
  cur = &f;
  void *fake = nullptr;
  asan_start(&fake, f.stack.data(), f.stack.size());
  emu_switch(&sched_sp, f.sp);
  asan_finish(fake, nullptr, nullptr);
  if (fault) std::rethrow_exception(std::exchange(fault, nullptr));
}

inline void wait(int how) {
  Fiber &f = *cur;
  f.state = how;
  asan_start(&f.fake, sched_bottom, sched_size);
  emu_switch(&f.sp, sched_sp);
  asan_finish(f.fake, &sched_bottom, &sched_size);
}

[[noreturn]] inline void fiber_main() {
  asan_finish(nullptr, &sched_bottom, &sched_size);
  try {
    body();
  } catch (...) {
    fault = std::current_exception();
  }
  cur->state = DONE;
  asan_start(nullptr, sched_bottom, sched_size);  // this stack is done with
  emu_switch(&cur->sp, sched_sp);
  __builtin_unreachable();
}

// ------------------------------------------------------------------ shared memory
inline size_t smem_limit = 0;  // bytes of static + dynamic shared memory a block may use
inline size_t smem_used = 0;
inline unsigned char poison = 0x5A;
inline char *dyn_smem = nullptr;

// One static __shared__ declaration: a fresh allocation in each block that reaches it.
struct Slot {
  char *base = nullptr, *p = nullptr;
};
inline std::vector<Slot *> live_slots;

inline char *allocate(size_t offset, size_t size) {
  if (smem_used + size > smem_limit)
    throw std::runtime_error("block uses " + std::to_string(smem_used + size) + " bytes of shared memory, more than " +
                             std::to_string(smem_limit));
  smem_used += size;
  char *base = static_cast<char *>(::operator new(offset + size, std::align_val_t(16)));
  std::memset(base + offset, poison, size);
  return base;
}

// The array of a static `__shared__ T name[...]` (T is the array type): aligned to Align (or its
// element's alignment) and no more, exactly sizeof(T) bytes. Site is the declaration's own lambda
// type, so each declaration has its slot.
template <class T, size_t Align, class Site> T &shared(Site) {
  constexpr size_t align = Align ? Align : alignof(std::remove_all_extents_t<T>);
  static_assert(align <= 16 && (align & (align - 1)) == 0, "shared arrays are aligned to at most 16 bytes");
  static Slot slot;
  if (!slot.p) {
    slot.base = allocate(align % 16, sizeof(T));  // 16-byte aligned plus `align`: aligned to align only
    slot.p = slot.base + align % 16;
    live_slots.push_back(&slot);
  }
  return *reinterpret_cast<T *>(slot.p);
}

// The shared memory of one block, freed when the block ends (or fails).
struct BlockMemory {
  explicit BlockMemory(size_t dynamic) { dyn_smem = allocate(0, dynamic); }
  ~BlockMemory() {
    ::operator delete(dyn_smem, std::align_val_t(16));
    for (Slot *s : live_slots) {
      ::operator delete(s->base, std::align_val_t(16));
      s->base = s->p = nullptr;
    }
    live_slots.clear();
    smem_used = 0;
  }
};

// ------------------------------------------------------------------ launch
// Runs every thread of one block (resumed in `order`) until all are done, opening barriers when all
// live members wait.
inline void run_block(const std::vector<int> &order) {
  const int n = (int)fibers.size();
  for (;;) {
    bool ran = false;
    for (int i : order)
      if (fibers[i].state == RUN) {
        resume(fibers[i]);
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

inline std::vector<int> iota(int n) {
  std::vector<int> v(n);
  for (int i = 0; i < n; ++i) v[i] = i;
  return v;
}

// Launches fn over the grid with `shared` bytes of dynamic shared memory; args[i] points to the bytes
// of parameter i, sizes[i] must be its size. seed 0: blocks in x-fastest order and threads in index
// order; otherwise both shuffled by a generator seeded with it.
template <class... A>
void launch(void (*fn)(A...), dim3 g, dim3 b, size_t shared, void **args, const int *sizes, int nargs,
            uint64_t seed, const char *name) {
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
  lanes.assign(2 * threads, 0);
  std::mt19937_64 rng(seed);
  std::vector<int> blocks = iota((int)(g.x * g.y * g.z)), order = iota(threads);
  if (seed) std::shuffle(blocks.begin(), blocks.end(), rng);
  for (int k : blocks) {
    block_idx = {k % g.x, (k / g.x) % g.y, k / (g.x * g.y)};
    poison = (unsigned char)(0x80 | (0x5A + 37 * k));  // nonzero, negative as a signed byte
    BlockMemory smem(shared);
    if (seed) std::shuffle(order.begin(), order.end(), rng);
    for (int i = 0; i < threads; ++i) fibers[i].start({i % b.x, (i / b.x) % b.y, i / (b.x * b.y)});
    try {
      run_block(order);
    } catch (const std::exception &e) {
      throw std::runtime_error(std::string(name) + ": " + e.what());
    }
  }
}

// Publishes v in this lane's slot and waits for the warp; returns the warp's slots. Consecutive warp
// operations alternate between two sets of slots: a lane that runs ahead cannot overwrite a value
// before every lane has read it, since that takes two more operations, hence a wait for all lanes.
inline const int64_t *publish(int64_t v) {
  Fiber &f = *cur;
  f.parity ^= 1;
  int64_t *slots = &lanes[f.parity * fibers.size()];
  const int me = linear(f.tid);
  slots[me] = v;
  wait(WAIT_WARP);
  return slots + (me & ~31);
}

template <class T> T exchange(T v, int partner) {
  static_assert(sizeof(T) <= 8, "8-byte lanes");
  int64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  T r;
  std::memcpy(&r, publish(bits) + partner, sizeof(T));
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
  const int64_t *warp = emu::publish(v);
  unsigned s = 0;
  for (int l = 0; l < 32; ++l) s += (unsigned)warp[l];
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
// Atomic without std::atomic_ref: fibers share one OS thread and switch only at barriers and warp
// primitives, so no other thread can run between the load and the store. The order of the adds
// follows the block and fiber order, which the seed shuffles (float sums then differ in rounding).
// The types are those CUDA's atomicAdd takes.
template <class T> T atomicAdd(T *p, T v) {
  static_assert(std::is_same_v<T, int> || std::is_same_v<T, unsigned> || std::is_same_v<T, unsigned long long> ||
                std::is_same_v<T, float> || std::is_same_v<T, double>);
  const T old = *p;
  *p = old + v;
  return old;
}
