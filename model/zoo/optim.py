"""Hand-written optimizers applied per model from stacked state (SGD with momentum 0.9, Adam, RMSprop).

``torch.optim`` steps one parameter set; a zoo group holds ``M`` models stacked along dim 0, each with its
own optimizer, learning rate and L2, so one vectorised update serves all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.zoo.space import OPTIMIZERS


@dataclass
class OptState:
    """Stacked per-model optimizer state; SGD momentum buffer and Adam's first moment share m."""

    lr: Tensor  # (M,)
    l2: Tensor
    kind: Tensor  # (M,) 0 sgd, 1 adam, 2 rmsprop
    m: dict[str, Tensor]
    v: dict[str, Tensor]
    step: int = 0

    @classmethod
    def create(cls, params: dict[str, Tensor], lr: list[float], l2: list[float], optimizers: list[str]) -> OptState:
        """Fresh state (zero moments) for stacked ``params``; ``optimizers`` names one of OPTIMIZERS per model."""
        return cls(
            lr=torch.tensor(lr, dtype=torch.float32),
            l2=torch.tensor(l2, dtype=torch.float32),
            kind=torch.tensor([OPTIMIZERS.index(o) for o in optimizers]),
            m={k: torch.zeros_like(v) for k, v in params.items()},
            v={k: torch.zeros_like(v) for k, v in params.items()},
        )

    def select(self, keep: Tensor) -> OptState:
        """The state of the models at positions ``keep`` (models leaving a group drop out)."""
        return OptState(
            self.lr[keep], self.l2[keep], self.kind[keep],
            {k: t[keep] for k, t in self.m.items()}, {k: t[keep] for k, t in self.v.items()}, self.step,
        )


_MOMENTUM, _BETA1, _BETA2, _RMS_ALPHA, _EPS = 0.9, 0.9, 0.999, 0.99, 1e-8


@torch.no_grad()
def opt_step(params: dict[str, Tensor], grads: dict[str, Tensor], st: OptState) -> None:
    """One in-place update of every model with its own optimizer, lr and L2 (weights only)."""
    st.step += 1
    t = st.step
    is_sgd = st.kind == 0
    is_adam = st.kind == 1
    m_count = st.lr.shape[0]
    bias1 = 1.0 - _BETA1**t
    bias2 = 1.0 - _BETA2**t
    beta2 = torch.where(is_adam, torch.tensor(_BETA2), torch.tensor(_RMS_ALPHA))
    for k, p in params.items():
        shape = (m_count,) + (1,) * (p.dim() - 1)
        g = grads[k]
        if k.endswith("weight"):
            g = g + st.l2.view(shape) * p
        sgd_b, adam_b = is_sgd.view(shape), is_adam.view(shape)
        m_new = torch.where(sgd_b, _MOMENTUM * st.m[k] + g, _BETA1 * st.m[k] + (1 - _BETA1) * g)
        b2 = beta2.view(shape)
        v_new = b2 * st.v[k] + (1 - b2) * g * g
        st.m[k], st.v[k] = m_new, v_new
        adam_upd = (m_new / bias1) / ((v_new / bias2).sqrt() + _EPS)
        rms_upd = g / (v_new.sqrt() + _EPS)
        upd = torch.where(sgd_b, m_new, torch.where(adam_b, adam_upd, rms_upd))
        p.sub_(st.lr.view(shape) * upd)
