"""`qsim bench`: the Numba fixed executor against transformers' fp32 forward, same weights, one run.

Mamba-1 against MambaForCausalLM, Mamba-2 against Mamba2ForCausalLM (its torch
path on a CPU: the chunked SSD for prefill, the recurrent step for decode).

Prefill of P tokens and D greedy decode steps; medians over repeats; the
ratio is fixed / transformers throughput (above 1: the bit-accurate integer
simulation is faster than the float reference).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import UTC, datetime

import numpy as np

from qsim.bits import preset
from qsim.errors import QsimError
from qsim.fileio import write_json_atomic
from qsim.weights import LoadedModel, resolve, to_hf_tensors

REPEATS = 3


def _median_time(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def transformers_model(lm: LoadedModel):
    """transformers' MambaForCausalLM (Mamba2ForCausalLM for Mamba-2) holding exactly lm's fp32 weights."""
    import torch
    import transformers

    kind = "Mamba2" if lm.config.family == "mamba2" else "Mamba"
    hf = {k: v for k, v in lm.config.to_hf().items() if k != "architectures"}
    model = getattr(transformers, f"{kind}ForCausalLM")(getattr(transformers, f"{kind}Config")(**hf)).eval()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in to_hf_tensors(lm.config, lm.weights).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise QsimError(f"transformers model does not take the weights: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model


def bench(model: str, prefill: int, decode: int, require_weights: bool, json_path: str | None) -> dict:
    import torch

    from qsim.run import RunOptions, fixed_executor, get_artifact, settings_for

    if prefill < 1 or decode < 1:
        raise QsimError(f"--prefill {prefill} / --decode {decode}: both must be >= 1")
    lm = resolve(model, require_weights)
    bits = preset("w8a8")
    opts = RunOptions(model=model)
    qm, _, _ = get_artifact(lm, bits, RunOptions(model=model, calib=settings_for(lm, bits, opts.calib)))
    ex = fixed_executor(qm, "numba")
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, min(lm.config.vocab_size, 256), prefill)

    ex.prefill(prompt[:2])  # Numba compilation is not timed
    t_fix_prefill = _median_time(lambda: ex.prefill(prompt))

    def fixed_decode():
        logits, state = ex.prefill(prompt)
        tok = int(np.argmax(logits[-1]))
        for _ in range(decode):
            lg, state = ex.step(tok, state)
            tok = int(np.argmax(lg))

    t_fix_decode = max(_median_time(fixed_decode) - t_fix_prefill, 1e-9)

    hf = transformers_model(lm)
    ids = torch.from_numpy(prompt)[None]
    with torch.no_grad():
        hf(ids)
        t_hf_prefill = _median_time(lambda: hf(ids))

        def hf_generate(n):
            return lambda: hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

        t_gen1 = _median_time(hf_generate(1))
        t_hf_decode = max(_median_time(hf_generate(decode + 1)) - t_gen1, 1e-9)

    r = {
        "model": lm.name, "weights": "synthetic" if lm.synthetic else "checkpoint",
        "prefill_tokens": prefill, "decode_tokens": decode, "repeats": REPEATS, "statistic": "median",
        "fixed_numba_w8a8": {"prefill_tok_s": prefill / t_fix_prefill, "decode_tok_s": decode / t_fix_decode},
        "transformers_fp32": {"prefill_tok_s": prefill / t_hf_prefill, "decode_tok_s": decode / t_hf_decode},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    r["ratio_prefill"] = r["fixed_numba_w8a8"]["prefill_tok_s"] / r["transformers_fp32"]["prefill_tok_s"]
    r["ratio_decode"] = r["fixed_numba_w8a8"]["decode_tok_s"] / r["transformers_fp32"]["decode_tok_s"]
    print(f"model {lm.name} ({r['weights']} weights), prefill {prefill} tokens, decode {decode} steps, "
          f"median of {REPEATS}")
    print(f"{'executor':<28} {'prefill tok/s':>14} {'decode tok/s':>13}")
    for k in ("fixed_numba_w8a8", "transformers_fp32"):
        print(f"{k:<28} {r[k]['prefill_tok_s']:>14.1f} {r[k]['decode_tok_s']:>13.1f}")
    print(f"{'ratio fixed / transformers':<28} {r['ratio_prefill']:>13.2f}x {r['ratio_decode']:>12.2f}x")
    if json_path:
        write_json_atomic(json_path, r)
    return r
