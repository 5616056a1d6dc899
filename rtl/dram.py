"""A deterministic DRAM model for Amaranth simulation testbenches, and the read-port signature units use.

A unit that reads memory has a `ReadPort` member (``Out(read_port(...))``):

  req   unit -> memory stream of {addr, beats}: a read of `beats` beats from byte
        address `addr`; `addr` must be a multiple of bus_bytes (asserted).
  data  memory -> unit stream of bus_bytes-wide beats; byte i of a beat is
        payload bits [8i, 8i + 8), i.e. the memory bytes little-endian.

`Dram` serves a `bytes` image on such a port from an async testbench process
(`Dram.add(sim)` adds it as a background process). Its cycle behaviour is exact
and repeatable; cycle t is the clock period that ends with the t-th rising edge
(the edge that performs a transfer whose valid and ready were high in it),
counted from 0 at the start of the simulation:

  * req.ready is high whenever fewer than `queue_depth` requests are queued
    (always, with queue_depth None); a request accepted in cycle t is queued
    behind earlier ones, in order.
  * The queue's head burst presents its first beat (data.valid high) in cycle
    max(t + latency, u + 1), where t is the cycle its request was accepted and u
    the cycle the previous burst's last beat transferred; each further beat is
    presented in the cycle after the previous one transferred. So the latency is
    `latency` cycles from accept to first beat, and the bandwidth one beat,
    bus_bytes bytes, per cycle.
  * A beat stays presented (payload held) until data.ready is high: back-pressure
    only delays beats, it never drops or reorders them.
  * data.valid and the payload depend on the model's state only, never
    combinationally on the unit's signals in the same cycle (a Moore output);
    req.ready likewise.

`accepted` logs (cycle, addr, beats) per request and `served` (cycle, addr) per
beat, for checking latency and bandwidth.
"""

from __future__ import annotations

from collections import deque

from amaranth.hdl import unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out


def request_layout(addr_width: int, len_width: int) -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(addr_width), "beats": unsigned(len_width)})


def read_port(bus_bytes: int, addr_width: int, len_width: int) -> wiring.Signature:
    """The signature as the reading unit sees it (requests out, data in)."""
    return wiring.Signature({"req": Out(stream.Signature(request_layout(addr_width, len_width))),
                             "data": In(stream.Signature(unsigned(8 * bus_bytes)))})


class Dram:
    def __init__(self, port, image: bytes, *, bus_bytes: int, latency: int, queue_depth: int | None = None):
        if bus_bytes < 1 or bus_bytes & (bus_bytes - 1):
            raise ValueError(f"DRAM model: bus_bytes {bus_bytes} is not a power of two")
        if latency < 1:
            raise ValueError(f"DRAM model: latency {latency} must be at least one cycle")
        self.port, self.image, self.bus_bytes, self.latency = port, bytes(image), bus_bytes, latency
        self.queue_depth = queue_depth
        self.accepted: list[tuple[int, int, int]] = []
        self.served: list[tuple[int, int]] = []

    def add(self, sim) -> None:
        sim.add_testbench(self.process, background=True)

    async def process(self, ctx) -> None:
        req, dat, B = self.port.req, self.port.data, self.bus_bytes
        queue: deque[list[int]] = deque()  # [first cycle allowed, next beat address, beats left]
        cycle = 0
        ctx.set(dat.valid, 0)
        while True:
            ready = self.queue_depth is None or len(queue) < self.queue_depth
            head = queue[0] if queue else None
            valid = head is not None and head[0] <= cycle
            ctx.set(req.ready, ready)
            ctx.set(dat.valid, valid)
            if valid:
                ctx.set(dat.payload, int.from_bytes(self.image[head[1]:head[1] + B], "little"))
            *_, r_valid, r_payload, d_ready = await ctx.tick().sample(req.valid, req.payload, dat.ready)
            if valid and d_ready:
                self.served.append((cycle, head[1]))
                head[1] += B
                head[2] -= 1
                if head[2] == 0:
                    queue.popleft()
                    if queue:  # the next burst starts the cycle after at the earliest
                        queue[0][0] = max(queue[0][0], cycle + 1)
                else:
                    head[0] = cycle + 1
            if ready and r_valid:
                addr, beats = int(r_payload.addr), int(r_payload.beats)
                assert addr % B == 0, f"DRAM model: address {addr:#x} not aligned to {B} bytes"
                assert beats >= 1, "DRAM model: empty burst"
                assert addr + beats * B <= len(self.image), \
                    f"DRAM model: burst {addr:#x} + {beats} beats past the image ({len(self.image)} bytes)"
                self.accepted.append((cycle, addr, beats))
                queue.append([cycle + self.latency, addr, beats])
            cycle += 1
