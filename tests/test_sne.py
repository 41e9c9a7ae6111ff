import pytest
import torch
from safetensors.torch import save

from model.checkpoint import load_checkpoint
from model.chunking import ChunkedLayer, Chunks, chunk_checkpoint
from model.config import CONFIGS, SNEConfig
from model.packing import pack
from model.sne import SNE
from tests.nets import BUILDERS, checkpoint_bytes

CFG = SNEConfig(
    name="test", chunk_size=16, hidden=16, encoding=24, heads=2, inducing=4, head_hidden=16, slice_tokens=512
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SNE(CFG).eval()


@pytest.fixture(scope="module")
def chunked():
    return {n: chunk_checkpoint(load_checkpoint(checkpoint_bytes(n, seed=i)), CFG.chunk_size) for i, n in enumerate(BUILDERS)}


@torch.no_grad()
def test_mixed_batch_equals_alone(model, chunked):
    names = list(chunked)
    alone = {n: model(pack([chunked[n]])) for n in names}
    order = names + names[::-1]
    both = model(pack([chunked[n] for n in order]))
    for i, n in enumerate(order):
        assert torch.allclose(both.embedding[i], alone[n].embedding[0], atol=1e-5), n
        assert torch.allclose(both.logit[i], alone[n].logit[0], atol=1e-5), n
    # per-layer embeddings come back in checkpoint order
    batch = pack([chunked[n] for n in order])
    for i, n in enumerate(order):
        s, k = int(batch.ckpt_start[i]), int(batch.ckpt_len[i])
        assert torch.allclose(both.layer_embeddings[s : s + k], alone[n].layer_embeddings, atol=1e-5)


@torch.no_grad()
def test_padding_never_changes_output(model, chunked):
    layers = chunked["arch2"]
    base = model(pack([layers])).embedding
    # same real values, padding filled with garbage: the masks must hide it
    noisy = []
    for layer in layers:
        parts = []
        for role, ch in layer.parts:
            v = ch.padded().clone()
            v[~ch.mask] = torch.randn(int((~ch.mask).sum())) * 100
            parts.append((role, Chunks(v, ch.lengths, ch.size, ch.stats, ch.total)))
        noisy.append(ChunkedLayer(layer.name, layer.kind, layer.level, parts))
    assert torch.allclose(model(pack([noisy])).embedding, base, atol=1e-5)
    # same network padded to a wider slice grouping (different slicing of the packed tensors)
    wide = SNE(CFG.model_copy(update={"slice_tokens": 100_000}))
    wide.load_state_dict(model.state_dict())
    assert torch.allclose(wide.eval()(pack([layers])).embedding, base, atol=1e-5)


@torch.no_grad()
def test_deterministic(chunked):
    outs = []
    for _ in range(2):
        torch.manual_seed(1)
        m = SNE(CFG).eval()
        outs.append(m(pack([chunked["resnet"], chunked["transformer"]])).embedding)
        outs.append(m(pack([chunked["resnet"], chunked["transformer"]])).embedding)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@torch.no_grad()
def test_one_layer_network(model):
    ck = load_checkpoint(save({"fc.weight": torch.randn(3, 2)}))
    out = model(pack([chunk_checkpoint(ck, CFG.chunk_size)]))
    assert out.embedding.shape == (1, CFG.encoding)
    assert 0 < float(out.accuracy) < 1 and torch.isfinite(out.embedding).all()


@torch.no_grad()
def test_different_networks_differ(model, chunked):
    out = model(pack([chunked["arch1"], chunked["mlp"]]))
    assert not torch.allclose(out.embedding[0], out.embedding[1], atol=1e-3)


def test_every_parameter_gets_gradient(chunked):
    torch.manual_seed(0)
    m = SNE(CFG)
    out = m(pack([chunked["arch1"], chunked["mlp"]]))
    (out.logit.sum() + out.gap.sum()).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_named_configs():
    assert CONFIGS["paper"].hidden == 512 and CONFIGS["paper"].encoding == 1024 and CONFIGS["paper"].chunk_size == 32
    assert CONFIGS["paper"].sab_blocks == 2 and CONFIGS["paper"].head_hidden == 1000
    assert CONFIGS["small"].hidden < CONFIGS["medium"].hidden < CONFIGS["paper"].hidden
    for size in ("small", "medium"):  # the ablation's one-path variants differ from their size in that path only
        both, stats, chunks = (CONFIGS[n] for n in (size, f"{size}-stats", f"{size}-chunks"))
        assert (stats.use_chunks, stats.use_stats, chunks.use_chunks, chunks.use_stats) == (False, True, True, False)
        assert stats.model_copy(update={"name": size, "use_chunks": True}) == both
    # the GPU build's three medium members fit the 20 MB a shipped predictor may take (float32 weights)
    assert 3 * 4 * sum(p.numel() for p in SNE(CONFIGS["medium"]).parameters()) < 18e6
    with pytest.raises(ValueError, match="divisible"):
        SNEConfig(hidden=30, heads=4)
    with pytest.raises(ValueError, match="at least one"):
        SNEConfig(use_chunks=False, use_stats=False)


def _with_values(layers, fn):
    """The same layers with every part's chunk values replaced by `fn(values)` (statistics kept)."""
    return [
        ChunkedLayer(l.name, l.kind, l.level, [(r, Chunks(fn(ch.values), ch.lengths, ch.size, ch.stats, ch.total)) for r, ch in l.parts])
        for l in layers
    ]


def _with_stats(layers, fn):
    return [
        ChunkedLayer(l.name, l.kind, l.level, [(r, Chunks(ch.values, ch.lengths, ch.size, fn(ch.stats), ch.total)) for r, ch in l.parts])
        for l in layers
    ]


@torch.no_grad()
def test_ablation_flags_switch_each_path_off(chunked):
    """chunks-only ignores the statistics, statistics-only never looks at the chunk values.

    (Untrained, the chunk path moves the embedding by ~1e-4 for new values: set pooling averages chunks; the
    threshold 1e-5 is still two orders above float32 rounding of these ~0.3-sized outputs.)"""
    layers = chunked["arch1"]
    torch.manual_seed(0)
    shuffled = _with_values(layers, lambda v: torch.randn_like(v))
    shifted = _with_stats(layers, lambda s: s + 1.0)
    for flags, same, differs in [
        ({"use_stats": False}, shifted, shuffled),
        ({"use_chunks": False}, shuffled, shifted),
    ]:
        m = SNE(CFG.model_copy(update=flags)).eval()
        base = m(pack([layers])).embedding
        assert torch.allclose(m(pack([same])).embedding, base, atol=1e-6), flags
        assert float((m(pack([differs])).embedding - base).abs().max()) > 1e-5, flags
    assert not hasattr(SNE(CFG.model_copy(update={"use_chunks": False})), "chunk_encoder")


def test_fit_stats_standardises_and_travels_with_the_weights(chunked):
    m = SNE(CFG)
    b = pack(list(chunked.values()))
    m.fit_stats(b.part_stats)
    z = (b.part_stats - m.stats_shift) / m.stats_scale
    assert torch.allclose(z.mean(0), torch.zeros(z.shape[1]), atol=1e-4)
    assert "stats_shift" in m.state_dict() and "stats_scale" in m.state_dict()
    fresh = SNE(CFG)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.stats_scale, m.stats_scale)


def test_relative_stats_view_is_what_the_model_standardises_and_reads(chunked):
    """With `stats_view="relative"` the shape-free statistics are fitted and read: a part's recorded size
    (`log_numel`) no longer reaches the model, while the raw model reads it."""
    from dataclasses import replace

    from model.stats import STAT_NAMES, relative_view

    torch.manual_seed(0)
    rel = SNE(CFG.model_copy(update={"stats_view": "relative", "use_chunks": False})).eval()
    raw = SNE(CFG.model_copy(update={"use_chunks": False})).eval()
    raw.load_state_dict(rel.state_dict())
    b = pack(list(chunked.values()))
    rel.fit_stats(b.part_stats)
    raw.fit_stats(b.part_stats)
    assert torch.allclose(rel.stats_shift, relative_view(b.part_stats).mean(0))
    moved = b.part_stats.clone()
    moved[:, STAT_NAMES.index("log_numel")] += 2.0  # recorded sizes e^2 times larger
    with torch.no_grad():
        assert torch.equal(rel.encode_parts(b), rel.encode_parts(replace(b, part_stats=moved)))
        assert (raw.encode_parts(b) - raw.encode_parts(replace(b, part_stats=moved))).abs().max() > 0.05


def test_ple_stats_encoding_codes_each_statistic_by_its_training_quantiles(chunked):
    """`stats_encoding="ple"`: edges are the fitted quantiles (monotone, saved with the weights); each
    statistic becomes `stats_bins` codes in [0, 1] whose sum locates it among the training parts, so a value
    above every training value saturates at all-ones instead of extrapolating."""
    ple_cfg = CFG.model_copy(update={"stats_encoding": "ple", "stats_bins": 8})
    torch.manual_seed(0)
    m = SNE(ple_cfg)
    b = pack(list(chunked.values()))
    m.fit_stats(b.part_stats)
    assert (m.stats_edges[:, 1:] >= m.stats_edges[:, :-1]).all()
    assert torch.allclose(m.stats_edges[:, 0], m.view_stats(b.part_stats).min(0).values)
    codes = m.stats_features(b.part_stats)
    n_parts, n_stats = b.part_stats.shape
    assert codes.shape == (n_parts, n_stats * 8) and codes.min() >= 0 and codes.max() <= 1
    per_stat = codes.view(n_parts, n_stats, 8).sum(-1)  # ~ bins below the value: its rank among training parts
    spread = m.stats_edges[:, -1] > m.stats_edges[:, 0]
    x = m.view_stats(b.part_stats)
    for j in spread.nonzero().flatten().tolist():  # order-preserving, all bins filled at the maximum
        assert (per_stat[x[:, j].argsort(), j].diff() >= -1e-5).all()
        assert per_stat[:, j].max() > 8 - 1e-5 and per_stat[:, j].min() < 8 - 1
    assert m.stats_features(b.part_stats - 1e6).abs().max() == 0  # below every training value: no bin filled
    huge = m.stats_features(b.part_stats + 1e6).view(n_parts, n_stats, 8)
    assert torch.equal(huge[:, spread], torch.ones_like(huge[:, spread]))
    fresh = SNE(ple_cfg)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.stats_edges, m.stats_edges)
    out = m(b)
    out.logit.sum().backward()
    assert m.stats_proj[0].weight.grad is not None and m.stats_proj[0].weight.grad.abs().sum() > 0


@torch.no_grad()
def test_small_config_embeddings_tell_same_architecture_apart():
    """Same architecture, weights of different scale (as untrained vs trained nets differ): the small config's
    untrained embeddings must already differ across checkpoints, or training never leaves a constant output.
    Chunk values are standardised per part, so the scale reaches the encoder through the statistics."""
    from model.checkpoint import checkpoint_from_tensors
    from tests.nets import arch1, state

    layers = []
    for i, scale in enumerate([0.3, 0.6, 1.0, 1.5, 2.0, 3.0] * 2):
        torch.manual_seed(i)
        s = {k: v * scale for k, v in state(arch1()).items()}
        layers.append(chunk_checkpoint(checkpoint_from_tensors(s), CONFIGS["small"].chunk_size))
    torch.manual_seed(0)
    m = SNE(CONFIGS["small"]).eval()
    m.fit_stats(torch.stack([ch.stats for ls in layers for layer in ls for _, ch in layer.parts]))  # as training does
    emb = m(pack(layers)).embedding
    spread = (emb.std(0).mean() / emb.std(1).mean()).item()
    assert spread > 0.02, f"embeddings nearly identical across checkpoints (spread ratio {spread:.2e})"


@torch.no_grad()
def test_ensemble_averages_member_logits_and_concatenates_embeddings(chunked, tmp_path):
    from model.predictor import Predictor
    from model.sne import SNEEnsemble, build_encoder

    cfg = CFG.model_copy(update={"members": 2})
    torch.manual_seed(0)
    ens = build_encoder(cfg).eval()
    assert isinstance(ens, SNEEnsemble) and isinstance(build_encoder(CFG), SNE)
    b = pack(list(chunked.values()))
    out = ens(b)
    first, second = (m(b) for m in ens.sne_members())
    assert float((first.logit - second.logit).abs().max()) > 1e-3  # members differ: the mean is not a no-op
    assert torch.allclose(out.logit, (first.logit + second.logit) / 2, atol=1e-6)
    assert out.embedding.shape == (b.n_checkpoints, 2 * cfg.encoding)
    assert torch.equal(out.embedding[:, cfg.encoding :], second.embedding)
    assert out.layer_embeddings.shape[-1] == 2 * cfg.hidden
    # an ensemble predictor saves and loads as one model (its card config says how many members)
    pred = Predictor.untrained("tiny")
    pred = Predictor(ens, pred.card.updated(config=cfg))
    pred.save(tmp_path)
    again = Predictor.load(tmp_path)
    assert isinstance(again.model, SNEEnsemble)
    assert torch.equal(again.model(b).logit, out.logit)


def test_seeded_members_do_not_depend_on_the_ensemble_size():
    from model.sne import SNEEnsemble, build_encoder

    two = build_encoder(CFG.model_copy(update={"members": 2}), seed=5)
    one = build_encoder(CFG, seed=6)
    assert isinstance(two, SNEEnsemble)
    pairs = zip(two.sne_members()[1].state_dict().values(), one.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert not torch.equal(two.sne_members()[0].stats_proj[0].weight, one.stats_proj[0].weight)


def test_detached_gap_loss_trains_the_gap_head_only(chunked):
    from model.training.train import gap_loss

    for detach in (True, False):
        torch.manual_seed(0)
        m = SNE(CFG)
        out = m(pack([chunked["arch1"], chunked["mlp"]]))
        gap_loss(m, out, torch.tensor([0.3, -0.2]), detach).backward()
        encoder = [p.grad for n, p in m.named_parameters() if not n.startswith(("gap_head", "accuracy_head"))]
        head = [p.grad for p in m.gap_head.parameters()]
        assert all(g is not None and float(g.abs().sum()) > 1e-4 for g in head)
        reached = sum(float(g.abs().sum()) for g in encoder if g is not None)
        assert (reached == 0.0) if detach else (reached > 1e-3)
