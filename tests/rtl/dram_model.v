// DRAM model of the engine's cocotb bench: the cycle behaviour of rtl/dram.py (class Dram, queue unbounded) in
// Verilog, so a simulation of a whole decode step (hundreds of thousands of cycles) runs without a Python call per
// cycle. The rules, with cycle c counted in rising edges since time 0:
//   * req_ready is always high; a request sampled at edge c is queued behind earlier ones, first beat allowed at
//     c + LATENCY (more than QDEPTH requests outstanding stop the simulation: the model would no longer be unbounded);
//   * the queue's head presents beats (data_valid) from its allowed cycle on, one per cycle while data_ready is high,
//     payload held under back-pressure; a burst's last beat pops it and the next burst may start the cycle after;
//   * data_valid, data_payload and req_ready depend on the model's state only.
// The image comes from the file named by the plusarg +image=PATH ($readmemh: one BUS_BYTES-wide word a line, byte i
// of the word at bits [8i, 8i + 8), i.e. the image's bytes little-endian). A misaligned, empty or out-of-image
// request stops the simulation with a message.
module qsim_dram #(
  parameter integer BUS_BYTES = 16,
  parameter integer ADDR_W = 32,
  parameter integer LEN_W = 16,
  parameter integer LATENCY = 8,
  parameter integer WORDS = 1,
  parameter integer QDEPTH = 4096
) (
  input clk,
  input req_valid,
  output req_ready,
  input [ADDR_W-1:0] req_addr,
  input [LEN_W-1:0] req_beats,
  output data_valid,
  input data_ready,
  output [8*BUS_BYTES-1:0] data_payload
);
  localparam integer QB = $clog2(QDEPTH);
  reg [8*BUS_BYTES-1:0] mem [0:WORDS-1];
  reg [63:0] cycle;
  reg [63:0] q_first [0:QDEPTH-1];
  reg [ADDR_W-1:0] q_addr [0:QDEPTH-1];
  reg [LEN_W-1:0] q_beats [0:QDEPTH-1];
  reg [QB:0] count;
  reg [QB-1:0] head, tail;
  reg [8*1024-1:0] path;
  integer i;

  initial begin
    if (!$value$plusargs("image=%s", path)) begin
      $display("qsim_dram: no +image=PATH plusarg");
      $fatal(1);
    end
    $readmemh(path, mem);
    cycle = 0;
    count = 0;
    head = 0;
    tail = 0;
    for (i = 0; i < QDEPTH; i = i + 1) begin
      q_first[i] = 0;
      q_addr[i] = 0;
      q_beats[i] = 0;
    end
  end

  wire take = data_valid && data_ready;
  wire last = take && q_beats[head] == 1;
  assign req_ready = 1'b1;
  assign data_valid = count != 0 && cycle >= q_first[head];
  assign data_payload = mem[q_addr[head] / BUS_BYTES];

  always @(posedge clk) begin
    cycle <= cycle + 1;
    if (take) begin
      if (last) head <= head + 1;
      else begin
        q_addr[head] <= q_addr[head] + BUS_BYTES;
        q_beats[head] <= q_beats[head] - 1;
      end
    end
    if (req_valid) begin
      if (req_addr % BUS_BYTES != 0 || req_beats == 0 || req_addr / BUS_BYTES + req_beats > WORDS
          || count - last == QDEPTH) begin
        $display("qsim_dram: bad request at cycle %0d: address %0h, %0d beats (image %0d words, %0d queued)",
                 cycle, req_addr, req_beats, WORDS, count);
        $fatal(1);
      end
      q_first[tail] <= cycle + LATENCY;
      q_addr[tail] <= req_addr;
      q_beats[tail] <= req_beats;
      tail <= tail + 1;
    end
    count <= count + req_valid - last;
  end
endmodule
