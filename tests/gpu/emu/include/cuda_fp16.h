// cuda_fp16.h for the CPU emulator: the types live in cuda_emu.h (force-included).
#pragma once
