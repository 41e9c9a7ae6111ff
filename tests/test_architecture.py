"""The unseen-architecture half of the OOD flag: what a checkpoint is (layer kinds, layer count), checked
against what the predictor was trained on."""
from __future__ import annotations

import torch

from model.architecture import batch_signatures, seen_architectures, signature, unseen
from model.checkpoint import load_checkpoint
from model.chunking import chunk_checkpoint
from model.packing import pack
from model.predictor import Predictor
from tests.nets import BUILDERS, checkpoint_bytes


def _layers(name: str, seed: int = 0):
    return chunk_checkpoint(load_checkpoint(checkpoint_bytes(name, seed)), 16)


def test_signature_is_kinds_and_layer_count():
    assert signature(_layers("arch1")) == (("conv2d", "linear"), 4)
    kinds, n = signature(_layers("mlp"))
    assert kinds == ("linear",) and n >= 2
    assert signature(_layers("transformer"))[0] == ("linear", "norm") and "norm" in signature(_layers("resnet"))[0]


def test_batch_signatures_match_each_checkpoint():
    chunked = [_layers(n, i) for i, n in enumerate(BUILDERS)]
    assert batch_signatures(pack(chunked)) == [signature(c) for c in chunked]


def test_seen_ranges_and_what_is_unseen():
    seen = seen_architectures([(("conv2d", "linear"), 4), (("conv2d", "linear"), 6), (("linear",), 3)])
    assert [(s.kinds, s.min_layers, s.max_layers) for s in seen] == [
        (["conv2d", "linear"], 4, 6), (["linear"], 3, 3),
    ]
    assert not unseen((("conv2d", "linear"), 5), seen)  # inside the range seen
    assert unseen((("conv2d", "linear"), 7), seen)  # deeper than anything seen
    assert unseen((("conv2d", "linear", "norm"), 5), seen)  # a kind never seen with these
    assert unseen((("linear",), 4), seen)


def test_a_predictor_flags_a_family_it_never_saw():
    torch.manual_seed(0)
    pred = Predictor.untrained("tiny")
    pred.card = pred.card.updated(ood={"architectures": seen_architectures([signature(_layers("arch1"))])})
    cnn, mlp = pred.predict([load_checkpoint(checkpoint_bytes("arch1", 3)), load_checkpoint(checkpoint_bytes("mlp", 3))])
    assert not cnn.unseen_architecture and not cnn.ood_flag  # no reference embeddings: only this check runs
    assert mlp.unseen_architecture and mlp.ood_flag
    old = Predictor.untrained("tiny")  # a card without the list (older cards): the check is off
    assert not old.predict([load_checkpoint(checkpoint_bytes("mlp", 3))])[0].unseen_architecture
