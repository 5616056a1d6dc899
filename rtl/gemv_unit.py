"""int8 GEMV unit: y = W x with W (N, K) int8 read from memory at run time, x int8, y exact int32.

The reference is qsim.fixed.ops.linear without group scales: sum_k W[n, k] * x[k]
summed exactly (|y| <= 128 * 128 * K < 2**31 for K < 131072, so max_k must be
below that). Per command ({base, n, k}, run-time values, 1 <= n <= max_n and
1 <= k <= max_k) the unit

  1. takes k int8 values on `x` (one per beat, from the cycle after the command)
     into an on-chip buffer of `lanes`-wide words (max_k values; the last word's
     unused lanes are zeroed, and words past ceil(k / lanes) are masked to 0, so
     the pad bytes of a weight row never count);
  2. reads W from memory (`mem`, rtl.dram.read_port): rows are `stride` =
     ceil(k / bus_bytes) * bus_bytes bytes apart from `base`, each starting bus
     aligned. Output rows go in groups of `rows` (the last group has the rest);
     beats are read chunk by chunk: for each group, for each chunk c (bus_bytes
     columns), the beat of chunk c of each row of the group. With rows > 1 each
     beat is its own one-beat request (the rows of a group are not contiguous);
     with rows == 1 each row is one burst. Requests are issued one per cycle
     from the cycle after the command, as fast as the memory takes them;
  3. collects a chunk's beats (one per row of the group) and hands them to a
     rows x lanes multiplier array in the cycle its last beat arrives; the array
     runs P = bus_bytes / lanes passes over them (lanes columns of every row per
     pass, x broadcast to all rows) while the next chunk's beats are collected.
     Each row accumulates its products (adder tree, then an accumulator);
  4. after a group's last chunk, its accumulators go to an output FIFO and leave
     on `o` one int32 per cycle, in row order.

Cycle behaviour (qsim.hw.units.gemv_unit_cycles is the contract): with the
memory of rtl.dram (latency L) and no stall on x or o, the first beat is taken
in cycle 1 + max(L, k) after the command (beats wait until x is loaded), and a
chunk whose group has r rows takes max(r, P) cycles: the last beat of a chunk is
taken only when the array is on the last pass of the previous chunk. So with
rows * lanes >= bus_bytes (rows >= P) the unit takes one beat per cycle and
the memory is the bottleneck. A group's first result is on `o`
qsim.hw.units.gemv_pipeline_latency(lanes) + P cycles after its last beat
(issue, x read, x registered, operands again, half sums of the products' rows, products, adder tree,
accumulator, FIFO, output register; the `latency` property). The unit takes the next command once
the last output of the current one has transferred.

Back-pressure: `x` and `mem.data` stall the unit harmlessly; `o` is decoupled
by the output FIFO, and a group's last chunk is handed to the array only when
the FIFO is sure to have room for its results (credits), so back-pressure never
reaches the pipeline registers.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.data import StructLayout
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from rtl.dram import read_port
from rtl.pipeline import Pipeline

ACC_BITS = 32


def command_layout(addr_width: int, max_n: int, max_k: int) -> StructLayout:
    return StructLayout({"base": unsigned(addr_width), "n": unsigned(max_n.bit_length()),
                         "k": unsigned(max_k.bit_length())})


def _log2(v: int) -> int:
    return v.bit_length() - 1


class GemvUnit(wiring.Component):
    def __init__(self, rows: int, lanes: int, bus_bytes: int, max_k: int, max_n: int, addr_width: int = 32):
        for name, v in (("lanes", lanes), ("bus_bytes", bus_bytes)):
            if v < 1 or v & (v - 1):
                raise ValueError(f"GEMV unit: {name} {v} must be a power of two")
        if lanes > bus_bytes:
            raise ValueError(f"GEMV unit: lanes {lanes} must be at most bus_bytes {bus_bytes}")
        if rows < 1 or max_n < 1 or not 1 <= max_k < 1 << 17:
            raise ValueError("GEMV unit: rows, max_n >= 1 and 1 <= max_k < 131072 (exact int32 sums)")
        self.rows, self.lanes, self.bus_bytes, self.max_k, self.max_n = rows, lanes, bus_bytes, max_k, max_n
        self.addr_width = addr_width
        self.passes = bus_bytes // lanes
        self.max_chunks = -(-max_k // bus_bytes)
        self.len_width = max(self.max_chunks if rows == 1 else 1, 1).bit_length()
        super().__init__({
            "cmd": In(stream.Signature(command_layout(addr_width, max_n, max_k))),
            "x": In(stream.Signature(signed(8))),
            "mem": Out(read_port(bus_bytes, addr_width, self.len_width)),
            "o": Out(stream.Signature(signed(ACC_BITS))),
        })

    # ---- cycle contract (qsim.hw.units)
    @property
    def tree_levels(self) -> int:
        n, levels = self.lanes, 0
        while n > 1:
            n, levels = -(-n // 4), levels + 1
        return levels

    @property
    def acc_stage(self) -> int:
        return 5 + self.tree_levels  # issue, x read, x registered, operands again, half products, products, tree

    @property
    def latency(self) -> int:
        """Last beat of a group to its first result on `o`, less the passes: GEMV_PIPELINE_LATENCY."""
        return self.acc_stage + 4  # accumulator, FIFO written, FIFO readable (buffered), output register

    @property
    def fifo_depth(self) -> int:
        """Enough groups in flight that credits never stall the array without back-pressure on `o`: a group
        hands over at most once per cycle and its results leave the FIFO latency + passes cycles later."""
        return self.latency + self.passes + 4

    def elaborate(self, platform):
        m = Module()
        pl = Pipeline(m)
        R, L, B, P = self.rows, self.lanes, self.bus_bytes, self.passes
        lb, ll, lp = _log2(B), _log2(L), _log2(P)
        CM = self.max_chunks
        words = CM * P  # x buffer words of L values

        # ---- command: latched at accept; the unit is busy until its last output has transferred
        active = Signal()
        n = Signal(range(self.max_n + 1))
        k2 = Signal(range(self.max_k + 1))  # k - 2 (wraps for k = 1, which xi < max_k never meets): x_last's next value
        chunks = Signal(range(CM + 1))  # ceil(k / B)
        chunks1 = Signal(range(CM))  # chunks - 1: "the last chunk" is an equality of two registers, no subtractor
        kw = Signal(range(words + 1))  # x words holding data: ceil(k / L)
        stride = Signal(range(CM * B + 1))
        base = Signal(self.addr_width)
        accept = Signal()
        cmd = self.cmd.payload
        c_chunks = (cmd.k + B - 1) >> lb
        m.d.comb += [self.cmd.ready.eq(~active), accept.eq(self.cmd.valid & ~active)]
        with m.If(accept):
            m.d.sync += [active.eq(1), n.eq(cmd.n), k2.eq(cmd.k - 2), chunks.eq(c_chunks), chunks1.eq(c_chunks - 1),
                         kw.eq((cmd.k + L - 1) >> ll), stride.eq(c_chunks << lb), base.eq(cmd.base)]

        # ---- x: k values into L-wide words; the last word's unused lanes stay 0
        m.submodules.xbuf = xbuf = Memory(shape=unsigned(8 * L), depth=words, init=[])
        xw, xr = xbuf.write_port(), xbuf.read_port()
        loading, x_done = Signal(), Signal()
        xi = Signal(range(self.max_k + 1))
        xa = Signal(range(words))
        xl = Signal(range(L))
        word = Signal(8 * L)
        # each value registered as it arrives (x_take, xin) and stored a cycle later: the sender's valid reaches one
        # flip-flop here, not the enables of `word` and the counters across the unit. ready drops in the cycle the
        # last value is stored (x_take & x_last), so a value offered then is not taken
        x_take, xin = Signal(), Signal(8)
        x_last = Signal()  # == (xi == k - 1), a register: ready is then three flip-flops
        m.d.comb += self.x.ready.eq(loading & ~(x_take & x_last))
        m.d.sync += [x_take.eq(self.x.valid & self.x.ready), xin.eq(self.x.payload)]
        new_word = Cat(*[Mux(xl == j, xin, word[8 * j:8 * j + 8]) for j in range(L)])
        m.d.comb += [xw.addr.eq(xa), xw.data.eq(new_word), xw.en.eq(x_take & ((xl == L - 1) | x_last))]
        with m.If(accept):
            m.d.sync += [loading.eq(1), x_done.eq(0), xi.eq(0), xa.eq(0), xl.eq(0), word.eq(0),
                         x_last.eq(cmd.k == 1)]
        with m.Elif(x_take):
            m.d.sync += [xi.eq(xi + 1), xl.eq(xl + 1), word.eq(new_word), x_last.eq(xi == k2)]
            with m.If((xl == L - 1) | x_last):
                m.d.sync += [xa.eq(xa + 1), xl.eq(0), word.eq(0)]
            with m.If(x_last):
                m.d.sync += [loading.eq(0), x_done.eq(1)]

        def rows_of(left):
            return Mux(left < R, left, R)

        def rows1_of(left):  # rows_of(left) - 1, for left >= 1
            return Mux(left < R, left - 1, R - 1)

        # ---- requests, in beat order: group, chunk, row of the group
        req = self.mem.req
        q_on = Signal()
        q_left = Signal(range(self.max_n + 1))  # rows from this group on
        q_rows1 = Signal(range(R))  # the group's rows - 1
        q_j, q_c = Signal(range(R)), Signal(range(CM))
        grp_addr, row_addr = Signal(self.addr_width), Signal(self.addr_width)
        q_off = Signal(range(CM * B + 1))
        m.d.comb += [req.valid.eq(q_on), req.payload.addr.eq(row_addr + q_off),
                     req.payload.beats.eq(chunks if R == 1 else 1)]
        with m.If(accept):
            m.d.sync += [q_on.eq(1), q_left.eq(cmd.n), q_rows1.eq(rows1_of(cmd.n)), q_j.eq(0), q_c.eq(0),
                         grp_addr.eq(cmd.base), row_addr.eq(cmd.base), q_off.eq(0)]
        with m.Elif(req.valid & req.ready):
            if R == 1:  # a row per request
                m.d.sync += row_addr.eq(row_addr + stride)
                with m.If(q_left == 1):
                    m.d.sync += q_on.eq(0)
                m.d.sync += q_left.eq(q_left - 1)
            else:
                with m.If(q_j != q_rows1):
                    m.d.sync += [q_j.eq(q_j + 1), row_addr.eq(row_addr + stride)]
                with m.Elif(q_c != chunks1):
                    m.d.sync += [q_j.eq(0), q_c.eq(q_c + 1), row_addr.eq(grp_addr), q_off.eq(q_off + B)]
                with m.Else():
                    nxt = grp_addr + stride * R
                    m.d.sync += [q_j.eq(0), q_c.eq(0), q_off.eq(0), grp_addr.eq(nxt), row_addr.eq(nxt),
                                 q_left.eq(q_left - R), q_rows1.eq(rows1_of(q_left - R))]
                    with m.If(q_left <= R):
                        m.d.sync += q_on.eq(0)

        # ---- collector: a chunk's beats, one per row; the last one goes straight to the array with the others
        dat = self.mem.data
        c_on = Signal()
        c_left = Signal(range(self.max_n + 1))
        c_rows1 = Signal(range(R))  # the group's rows - 1
        c_j, c_c = Signal(range(R)), Signal(range(CM))
        col = [Signal(8 * B, name=f"col{j}") for j in range(R - 1)]
        work = [Signal(8 * B, name=f"work{j}") for j in range(R)]
        busy, p = Signal(), Signal(range(P))
        w_c, w_first, w_last = Signal(range(CM)), Signal(), Signal()  # the array's chunk, group begins/ends
        pending = Signal(range(self.fifo_depth + 1))  # groups handed over whose results are not out of the FIFO
        credit = pending < self.fifo_depth
        last_beat, last_chunk = c_j == c_rows1, c_c == chunks1
        free = ~busy | (p == P - 1)
        take = Signal()
        m.d.comb += [dat.ready.eq(c_on & x_done & (~last_beat | (free & (~last_chunk | credit)))),
                     take.eq(dat.valid & dat.ready)]
        handover = take & last_beat
        with m.If(accept):
            m.d.sync += [c_on.eq(1), c_left.eq(cmd.n), c_rows1.eq(rows1_of(cmd.n)), c_j.eq(0), c_c.eq(0)]
        with m.Elif(take):
            for j in range(R - 1):
                with m.If(c_j == j):
                    m.d.sync += col[j].eq(dat.payload)
            with m.If(~last_beat):
                m.d.sync += c_j.eq(c_j + 1)
            with m.Elif(~last_chunk):
                m.d.sync += [c_j.eq(0), c_c.eq(c_c + 1)]
            with m.Else():
                m.d.sync += [c_j.eq(0), c_c.eq(0), c_left.eq(c_left - R), c_rows1.eq(rows1_of(c_left - R))]
                with m.If(c_left <= R):
                    m.d.sync += c_on.eq(0)
        with m.If(handover):
            m.d.sync += [w.eq(Mux(c_j == j, dat.payload, col[j]) if j < R - 1 else dat.payload)
                         for j, w in enumerate(work)]
            m.d.sync += [busy.eq(1), p.eq(0), w_c.eq(c_c), w_first.eq(c_c == 0), w_last.eq(last_chunk)]
        with m.Elif(busy):
            m.d.sync += p.eq(p + 1)
            with m.If(p == P - 1):
                m.d.sync += [busy.eq(0), p.eq(0)]

        # ---- the array: stage 0 issues pass p of chunk w_c (x word w_c * P + p)
        xaddr = (w_c << lp) | p if P > 1 else w_c
        m.d.comb += xr.addr.eq(xaddr)
        v = pl.reg(busy, 1, "v")
        first = pl.reg(w_first & (p == 0), 1, "first")
        last = pl.reg(w_last & (p == P - 1), 1, "last")
        xmask = pl.reg(xaddr < kw, 1, "xmask")

        def lane(word_, i):
            return word_[8 * i:8 * i + 8].as_signed()

        slices = [pl.reg(Array(w[8 * L * q:8 * L * (q + 1)] for q in range(P))[p] if P > 1 else w, 1, f"w{j}",
                         unsigned(8 * L)) for j, w in enumerate(work)]
        xs = [pl.reg(Mux(xmask, lane(xr.data, i), 0), 2, f"x{i}", signed(8)) for i in range(L)]
        acc = [Signal(signed(ACC_BITS), name=f"acc{j}") for j in range(R)]
        s = 5
        sums = []
        # int8 x int8 in LUTs (Pipeline.mul_fabric: two halves of the rows at stage 4, their sum at 5): DSP tiles
        # sit in fixed rows, and the hops to one and back were the engine's routed critical path
        xs3 = [pl.at(x, 3) for x in xs]
        for j in range(R):
            wj = pl.at(slices[j], 3)
            terms = [pl.mul_fabric(lane(wj, i), xs3[i], 3, f"prod{j}_{i}") for i in range(L)]
            s = 5
            while len(terms) > 1:
                terms = [pl.reg(sum(terms[i:i + 4]), s + 1, f"sum{j}_{s}_{i}") for i in range(0, len(terms), 4)]
                s += 1
            sums.append(terms[0])
        assert s == self.acc_stage
        v_acc, first_acc = pl.at(v, s), pl.at(first, s)
        with m.If(v_acc):
            m.d.sync += [a.eq(Mux(first_acc, 0, a) + t) for a, t in zip(acc, sums)]
        done = pl.at(pl.reg(v_acc & pl.at(last, s), s + 1, "done"), s + 1)

        # ---- results: the group's accumulators into the FIFO, then out one by one
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=ACC_BITS * R, depth=self.fifo_depth)
        m.d.comb += [fifo.w_en.eq(done), fifo.w_data.eq(Cat(*acc))]
        rows_pipe = Signal(range(R + 1))  # rows of the group whose results are next out of the FIFO
        o_left = Signal(range(self.max_n + 1))  # outputs of the command still to go
        ob = [Signal(signed(ACC_BITS), name=f"ob{j}") for j in range(R)]
        ocnt = Signal(range(R + 1))
        o_take = self.o.valid & self.o.ready
        load = fifo.r_rdy & ((ocnt == 0) | ((ocnt == 1) & self.o.ready))
        m.d.comb += [self.o.valid.eq(ocnt != 0), self.o.payload.eq(ob[0]), fifo.r_en.eq(load)]
        # when an entry loads, only its predecessor's last output can be transferring: its rows are
        # rows_of(o_left - o_take), kept in registers for both cases (the output handshake only selects)
        o_rows, o_rows_m = Signal(range(R + 1)), Signal(range(R + 1))  # rows_of(o_left), rows_of(o_left - 1)
        m.d.comb += rows_pipe.eq(Mux(o_take, o_rows_m, o_rows))
        with m.If(load):
            m.d.sync += [o.eq(fifo.r_data[ACC_BITS * j:ACC_BITS * (j + 1)].as_signed()) for j, o in enumerate(ob)]
            m.d.sync += ocnt.eq(rows_pipe)
        with m.Elif(o_take):
            m.d.sync += [ocnt.eq(ocnt - 1)] + [ob[j].eq(ob[j + 1]) for j in range(R - 1)]
        m.d.sync += pending.eq(pending + (handover & last_chunk) - load)
        with m.If(accept):
            m.d.sync += [o_left.eq(cmd.n), o_rows.eq(rows_of(cmd.n)), o_rows_m.eq(rows_of(cmd.n - 1))]
        with m.Elif(o_take):
            m.d.sync += [o_left.eq(o_left - 1), o_rows.eq(o_rows_m), o_rows_m.eq(rows_of(o_left - 2))]
            with m.If(o_left == 1):
                m.d.sync += active.eq(0)
        return m
