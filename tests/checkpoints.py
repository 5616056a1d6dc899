"""A small random Mamba checkpoint written by transformers, for the tests that need a real checkpoint folder."""

from __future__ import annotations

from qsim.config import MambaConfig

TINY = MambaConfig(d_model=64, n_layer=2, vocab_size=256)


def write_hf_checkpoint(folder, cfg: MambaConfig = TINY, seed: int = 0):
    """Save a randomly initialised transformers MambaForCausalLM; returns the torch model."""
    import torch
    from transformers import MambaConfig as HFConfig
    from transformers import MambaForCausalLM

    torch.manual_seed(seed)
    model = MambaForCausalLM(HFConfig(**{k: v for k, v in cfg.to_hf().items() if k != "architectures"})).eval()
    with torch.no_grad():  # make A_log, D and norms non-trivial so every path is exercised
        for layer in model.backbone.layers:
            layer.mixer.A_log.add_(torch.randn_like(layer.mixer.A_log) * 0.3)
            layer.mixer.D.mul_(torch.rand_like(layer.mixer.D) + 0.5)
            layer.norm.weight.mul_(torch.rand_like(layer.norm.weight) + 0.5)
    model.save_pretrained(folder)
    return model
