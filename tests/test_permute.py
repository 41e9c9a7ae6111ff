"""Hidden-unit permutations leave the network's function unchanged (model.zoo.permute)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.zoo.archs import ARCH_SPECS, build_arch, get_spec
from model.zoo.datasets import load_dataset
from model.zoo.engine import init_state
from model.zoo.permute import permute_hidden, random_permute
from model.zoo.space import HParams

pytestmark = pytest.mark.usefixtures("one_thread")


ARCH_INPUT = {"arch1": None, "arch2": 28}


def _inputs(arch: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ds = load_dataset("digits", ARCH_INPUT[arch])
    return ds.x_train, ds.y_train, ds.x_test[:200], ds.y_test[:200]


def _logits(arch: str, state: dict[str, torch.Tensor], x: torch.Tensor, activation: str = "relu") -> torch.Tensor:
    model = build_arch(arch, activation=activation)
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        return model(x)


def _random_state(arch: str, init: str, seed: int, activation: str = "relu") -> dict[str, torch.Tensor]:
    hp = HParams("adam", 1e-3, init, 1.0 if init != "normal" else 0.2, 0.0, 0.0, activation, 64, 1.0, 1)
    state = init_state(arch, hp, 1, 10, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    for layer in get_spec(arch).layers:  # non-zero biases so their permutation matters too
        state[layer.bias] = 0.1 * torch.randn(state[layer.bias].shape, generator=g)
    return state


def _trained_state(arch: str, activation: str, steps: int = 80) -> dict[str, torch.Tensor]:
    x, y, _, _ = _inputs(arch)
    torch.manual_seed(0)
    model = build_arch(arch, activation=activation, dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_function_different_weights(arch: str, state: dict, permuted: dict, activation: str = "relu") -> None:
    _, _, x, _ = _inputs(arch)
    assert permuted.keys() == state.keys()
    ref, out = _logits(arch, state, x, activation), _logits(arch, permuted, x, activation)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    changed = [k for k in state if not torch.equal(state[k], permuted[k])]
    spec = get_spec(arch)
    hidden_weights = {spec.layers[i].weight for i in range(spec.n_hidden)}
    assert hidden_weights <= set(changed), f"weights not permuted: {hidden_weights - set(changed)}"


@pytest.mark.parametrize("arch", ["arch1", "arch2"])
@pytest.mark.parametrize("init", ["he_normal", "orthogonal", "normal"])
def test_random_weights_function_unchanged(arch: str, init: str) -> None:
    state = _random_state(arch, init, seed=3)
    snapshot = {k: v.clone() for k, v in state.items()}
    permuted = random_permute(state, arch, torch.Generator().manual_seed(11))
    _assert_same_function_different_weights(arch, state, permuted)
    for k in state:  # pure: the input is untouched
        assert torch.equal(state[k], snapshot[k])


@pytest.mark.parametrize("arch,activation", [("arch1", "relu"), ("arch1", "tanh"), ("arch2", "relu"), ("arch2", "gelu")])
def test_trained_model_function_unchanged(arch: str, activation: str) -> None:
    state = _trained_state(arch, activation)
    _, _, x, y = _inputs(arch)
    acc = (_logits(arch, state, x, activation).argmax(1) == y).float().mean().item()
    assert acc > 0.5, "the briefly trained model should be better than chance"
    permuted = random_permute(state, arch, torch.Generator().manual_seed(5))
    _assert_same_function_different_weights(arch, state, permuted, activation)


@pytest.mark.parametrize("arch", ["arch1", "arch2"])
def test_each_hidden_layer_alone(arch: str) -> None:
    spec = get_spec(arch)
    state = _random_state(arch, "xavier_normal", seed=7)
    _, _, x, _ = _inputs(arch)
    ref = _logits(arch, state, x)
    for layer in range(spec.n_hidden):
        n = state[spec.layers[layer].weight].shape[0]
        perm = torch.roll(torch.arange(n), 1)  # no fixed point: every unit moves
        out = permute_hidden(state, arch, layer, perm)
        torch.testing.assert_close(_logits(arch, out, x), ref, atol=1e-5, rtol=0)
        cur, nxt = spec.layers[layer], spec.layers[layer + 1]
        assert torch.equal(out[cur.weight], state[cur.weight][perm])
        assert torch.equal(out[cur.bias], state[cur.bias][perm])
        assert not torch.equal(out[nxt.weight], state[nxt.weight])
        # the inverse permutation restores the original exactly
        back = permute_hidden(out, arch, layer, torch.argsort(perm))
        for k in state:
            assert torch.equal(back[k], state[k])


def test_arch2_flatten_boundary_moves_channel_blocks() -> None:
    spec = get_spec("arch2")
    assert spec.inputs_per_channel[2] == 9
    state = _random_state("arch2", "he_uniform", seed=1)
    perm = torch.tensor([2, 0, 3, 1])
    out = permute_hidden(state, "arch2", 2, perm)
    w_old, w_new = state["classifier.0.weight"], out["classifier.0.weight"]
    for new_c, old_c in enumerate(perm.tolist()):
        assert torch.equal(w_new[:, new_c * 9 : new_c * 9 + 9], w_old[:, old_c * 9 : old_c * 9 + 9])


@pytest.mark.parametrize("arch", sorted(ARCH_SPECS))
def test_output_layer_and_bad_perms_rejected(arch: str) -> None:
    spec = get_spec(arch)
    state = _random_state(arch, "he_normal", seed=0)
    out_layer = len(spec.layers) - 1
    with pytest.raises(ValueError, match="not a hidden layer"):
        permute_hidden(state, arch, out_layer, torch.randperm(10))
    with pytest.raises(ValueError):
        permute_hidden(state, arch, -1, torch.randperm(4))
    n0 = state[spec.layers[0].weight].shape[0]
    with pytest.raises(ValueError, match="not a permutation"):
        permute_hidden(state, arch, 0, torch.zeros(n0, dtype=torch.long))
    with pytest.raises(ValueError):
        permute_hidden(state, arch, 0, torch.randperm(n0 + 1))


def test_identity_permutation_is_identity() -> None:
    state = _random_state("arch1", "orthogonal", seed=2)
    out = permute_hidden(state, "arch1", 1, torch.arange(16))
    for k in state:
        assert torch.equal(out[k], state[k])
