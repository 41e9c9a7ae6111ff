"""The layer-count input (`SNEConfig.layer_count`): the network pool is an attention-weighted mean, so without
it the embedding has no direct way to tell a 3-layer MLP from a 6-layer one; with it, log(layers) is added."""
import math

import torch
from safetensors.torch import save_file

from model.admission import Limits
from model.chunking import chunk_file
from model.config import SNEConfig
from model.packing import pack
from model.sne import SNE


def _cfg(on: bool) -> SNEConfig:
    return SNEConfig(name="t", chunk_size=16, hidden=16, encoding=16, heads=2, inducing=4, head_hidden=16, layer_count=on)


def _mlp(path, widths) -> list:
    g = torch.Generator().manual_seed(len(widths))
    state = {}
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        state[f"layers.{i}.weight"] = torch.randn(b, a, generator=g) / a**0.5
        state[f"layers.{i}.bias"] = torch.randn(b, generator=g) * 0.1
    save_file(state, path)
    return chunk_file(path, 16, Limits(), "seed").layers


@torch.no_grad()
def test_the_embedding_gains_a_term_in_log_layers_only_when_configured(tmp_path):
    nets = [_mlp(tmp_path / "a.safetensors", (32, 48, 32, 10)), _mlp(tmp_path / "b.safetensors", (32, 48, 32, 48, 32, 40, 10))]
    counts = [len(n) for n in nets]
    assert counts == [3, 6]
    torch.manual_seed(0)
    on = SNE(_cfg(True)).eval()
    off = SNE(_cfg(False)).eval()
    assert not any(k.startswith("count_proj") for k in off.state_dict())  # older predictors load unchanged
    off.load_state_dict({k: v for k, v in on.state_dict().items() if not k.startswith("count_proj")})
    batch = pack(nets)
    shift = on(batch).embedding - off(batch).embedding  # [2, encoding]
    w, b = on.count_proj.weight[:, 0], on.count_proj.bias
    for k, n in enumerate(counts):
        assert torch.allclose(shift[k], w * math.log(n) + b, atol=1e-5)
    assert float((shift[1] - shift[0]).norm()) > 0.1  # the two depths are told apart by more than rounding
    assert not torch.equal(on(batch).logit, off(batch).logit)
