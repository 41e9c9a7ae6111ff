"""Depth order, grouping and classification over the layouts people upload (names and shapes by hand)."""
import pytest

from model.layers import (
    LayerKind,
    connected_pairs,
    depth_order,
    group_layers,
    natural_key,
    part_chunks,
)


def _modules(keys: dict[str, tuple[int, ...]]) -> list[str]:
    layers, _ = group_layers((k, "F32", s) for k, s in keys.items())
    assert [layer.level for layer in layers] == list(range(len(layers)))
    return [layer.name for layer in layers]


def resnet18() -> dict[str, tuple[int, ...]]:
    k: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7), "bn1.weight": (64,), "bn1.bias": (64,),
                                     "bn1.running_mean": (64,), "bn1.running_var": (64,)}
    c_in = 64
    for stage, c in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{stage}.{b}"
            k[f"{p}.conv1.weight"] = (c, c_in if b == 0 else c, 3, 3)
            k[f"{p}.bn1.weight"], k[f"{p}.bn1.bias"] = (c,), (c,)
            k[f"{p}.conv2.weight"] = (c, c, 3, 3)
            k[f"{p}.bn2.weight"], k[f"{p}.bn2.bias"] = (c,), (c,)
            if b == 0 and stage > 1:
                k[f"{p}.downsample.0.weight"] = (c, c_in, 1, 1)
                k[f"{p}.downsample.1.weight"], k[f"{p}.downsample.1.bias"] = (c,), (c,)
        c_in = c
    k["fc.weight"], k["fc.bias"] = (1000, 512), (1000,)
    return k


def test_resnet18_stem_blocks_head():
    names = _modules(resnet18())
    assert names[:2] == ["conv1", "bn1"] and names[-1] == "fc"
    assert names[2:6] == ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", "layer1.0.bn2"]
    i = names.index("layer2.0.conv1")
    assert names[i : i + 6] == ["layer2.0.conv1", "layer2.0.bn1", "layer2.0.conv2", "layer2.0.bn2",
                                "layer2.0.downsample.0", "layer2.0.downsample.1"]
    assert names.index("layer2.1.conv1") == i + 6 and names.index("layer4.1.bn2") == len(names) - 2


def vit_b16() -> dict[str, tuple[int, ...]]:
    k: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, 768), "pos_embed": (1, 197, 768),
                                     "patch_embed.proj.weight": (768, 3, 16, 16), "patch_embed.proj.bias": (768,)}
    for b in range(12):
        p = f"blocks.{b}"
        k |= {f"{p}.norm1.weight": (768,), f"{p}.norm1.bias": (768,), f"{p}.attn.qkv.weight": (2304, 768),
              f"{p}.attn.qkv.bias": (2304,), f"{p}.attn.proj.weight": (768, 768), f"{p}.attn.proj.bias": (768,),
              f"{p}.norm2.weight": (768,), f"{p}.norm2.bias": (768,), f"{p}.mlp.fc1.weight": (3072, 768),
              f"{p}.mlp.fc1.bias": (3072,), f"{p}.mlp.fc2.weight": (768, 3072), f"{p}.mlp.fc2.bias": (768,)}
    return k | {"norm.weight": (768,), "norm.bias": (768,), "head.weight": (1000, 768), "head.bias": (1000,)}


def test_vit_b16():
    names = _modules(vit_b16())
    assert names[:3] == ["patch_embed.proj", "cls_token", "pos_embed"]
    assert names[3:9] == ["blocks.0.norm1", "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.norm2",
                          "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    assert names[9] == "blocks.1.norm1" and names.index("blocks.10.norm1") > names.index("blocks.9.mlp.fc2")
    assert names[-2:] == ["norm", "head"]


def gpt2(prefix: str = "") -> dict[str, tuple[int, ...]]:
    k: dict[str, tuple[int, ...]] = {f"{prefix}wte.weight": (50257, 768), f"{prefix}wpe.weight": (1024, 768)}
    for b in range(12):
        p = f"{prefix}h.{b}"
        k |= {f"{p}.ln_1.weight": (768,), f"{p}.ln_1.bias": (768,), f"{p}.attn.c_attn.weight": (768, 2304),
              f"{p}.attn.c_attn.bias": (2304,), f"{p}.attn.c_proj.weight": (768, 768), f"{p}.attn.c_proj.bias": (768,),
              f"{p}.ln_2.weight": (768,), f"{p}.ln_2.bias": (768,), f"{p}.mlp.c_fc.weight": (768, 3072),
              f"{p}.mlp.c_fc.bias": (3072,), f"{p}.mlp.c_proj.weight": (3072, 768), f"{p}.mlp.c_proj.bias": (768,)}
    return k | {f"{prefix}ln_f.weight": (768,), f"{prefix}ln_f.bias": (768,)}


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_gpt2(prefix):
    names = _modules(gpt2(prefix) | ({"lm_head.weight": (50257, 768)} if prefix else {}))
    p = prefix
    assert names[:2] == [f"{p}wte", f"{p}wpe"]
    assert names[2:8] == [f"{p}h.0.ln_1", f"{p}h.0.attn.c_attn", f"{p}h.0.attn.c_proj", f"{p}h.0.ln_2",
                          f"{p}h.0.mlp.c_fc", f"{p}h.0.mlp.c_proj"]
    assert names.index(f"{p}h.11.mlp.c_proj") > names.index(f"{p}h.2.ln_1")
    assert names[-2:] == ([f"{p}ln_f", "lm_head"] if prefix else [f"{p}h.11.mlp.c_proj", f"{p}ln_f"])


def bert_base() -> dict[str, tuple[int, ...]]:
    e = "bert.embeddings"
    k: dict[str, tuple[int, ...]] = {f"{e}.word_embeddings.weight": (30522, 768), f"{e}.position_embeddings.weight": (512, 768),
                                     f"{e}.token_type_embeddings.weight": (2, 768), f"{e}.LayerNorm.weight": (768,),
                                     f"{e}.LayerNorm.bias": (768,)}
    for b in range(12):
        p = f"bert.encoder.layer.{b}"
        for m in ("query", "key", "value"):
            k |= {f"{p}.attention.self.{m}.weight": (768, 768), f"{p}.attention.self.{m}.bias": (768,)}
        k |= {f"{p}.attention.output.dense.weight": (768, 768), f"{p}.attention.output.dense.bias": (768,),
              f"{p}.attention.output.LayerNorm.weight": (768,), f"{p}.attention.output.LayerNorm.bias": (768,),
              f"{p}.intermediate.dense.weight": (3072, 768), f"{p}.intermediate.dense.bias": (3072,),
              f"{p}.output.dense.weight": (768, 3072), f"{p}.output.dense.bias": (768,),
              f"{p}.output.LayerNorm.weight": (768,), f"{p}.output.LayerNorm.bias": (768,)}
    return k | {"bert.pooler.dense.weight": (768, 768), "bert.pooler.dense.bias": (768,),
                "classifier.weight": (2, 768), "classifier.bias": (2,)}


def test_bert_base():
    names = _modules(bert_base())
    e, p = "bert.embeddings", "bert.encoder.layer.0"
    assert names[:4] == [f"{e}.word_embeddings", f"{e}.position_embeddings", f"{e}.token_type_embeddings", f"{e}.LayerNorm"]
    assert names[4:12] == [f"{p}.attention.self.query", f"{p}.attention.self.key", f"{p}.attention.self.value",
                           f"{p}.attention.output.dense", f"{p}.attention.output.LayerNorm", f"{p}.intermediate.dense",
                           f"{p}.output.dense", f"{p}.output.LayerNorm"]
    assert names[-2:] == ["bert.pooler.dense", "classifier"]
    assert names.index("bert.encoder.layer.11.output.LayerNorm") == len(names) - 3


def llama(n: int = 2) -> dict[str, tuple[int, ...]]:
    k: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (32000, 2048), "lm_head.weight": (32000, 2048),
                                     "model.norm.weight": (2048,)}
    for b in range(n):
        p = f"model.layers.{b}"
        k |= {f"{p}.input_layernorm.weight": (2048,), f"{p}.self_attn.q_proj.weight": (2048, 2048),
              f"{p}.self_attn.k_proj.weight": (256, 2048), f"{p}.self_attn.v_proj.weight": (256, 2048),
              f"{p}.self_attn.o_proj.weight": (2048, 2048), f"{p}.post_attention_layernorm.weight": (2048,),
              f"{p}.mlp.gate_proj.weight": (5632, 2048), f"{p}.mlp.up_proj.weight": (5632, 2048),
              f"{p}.mlp.down_proj.weight": (2048, 5632)}
    return k


def test_llama():
    names = _modules(llama())
    p = "model.layers.0"
    assert names[0] == "model.embed_tokens" and names[-2:] == ["model.norm", "lm_head"]
    assert names[1:10] == [f"{p}.input_layernorm", f"{p}.self_attn.q_proj", f"{p}.self_attn.k_proj",
                           f"{p}.self_attn.v_proj", f"{p}.self_attn.o_proj", f"{p}.post_attention_layernorm",
                           f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj", f"{p}.mlp.down_proj"]


def test_sequential_mlp_and_our_zoo_archs():
    assert _modules({"0.weight": (100, 64), "0.bias": (100,), "2.weight": (50, 100), "4.weight": (10, 50),
                     "10.weight": (10, 10)}) == ["0", "2", "4", "10"]
    arch2 = {"features.0.weight": (8, 1, 5, 5), "features.3.weight": (6, 8, 5, 5), "features.6.weight": (4, 6, 2, 2),
             "classifier.0.weight": (20, 36), "classifier.2.weight": (10, 20)}
    assert _modules(arch2) == ["features.0", "features.3", "features.6", "classifier.0", "classifier.2"]
    reverse = dict(reversed(list(arch2.items())))
    assert _modules(reverse) == _modules(arch2)


def test_torch_transformer_encoder_pre_norm_convention():
    p = "layers.0"
    keys = {f"{p}.self_attn.in_proj_weight": (96, 32), f"{p}.self_attn.out_proj.weight": (32, 32),
            f"{p}.linear1.weight": (64, 32), f"{p}.linear2.weight": (32, 64), f"{p}.norm1.weight": (32,),
            f"{p}.norm2.weight": (32,)}
    assert _modules(keys) == [f"{p}.norm1", f"{p}.self_attn.in_proj", f"{p}.self_attn.out_proj", f"{p}.norm2",
                              f"{p}.linear1", f"{p}.linear2"]


def test_torchvision_vit_names():
    e = "encoder.layers.encoder_layer_"
    keys = {"class_token": (1, 1, 8), "conv_proj.weight": (8, 3, 4, 4), "encoder.pos_embedding": (1, 5, 8),
            "encoder.ln.weight": (8,), "heads.head.weight": (10, 8)}
    for b in (0, 1, 10):
        keys |= {f"{e}{b}.ln_1.weight": (8,), f"{e}{b}.self_attention.in_proj_weight": (24, 8),
                 f"{e}{b}.self_attention.out_proj.weight": (8, 8), f"{e}{b}.ln_2.weight": (8,),
                 f"{e}{b}.mlp.0.weight": (32, 8), f"{e}{b}.mlp.3.weight": (8, 32)}
    names = _modules(keys)
    assert names[:3] == ["conv_proj", "class_token", "encoder.pos_embedding"]
    assert names[3:9] == [f"{e}0.ln_1", f"{e}0.self_attention.in_proj", f"{e}0.self_attention.out_proj",
                          f"{e}0.ln_2", f"{e}0.mlp.0", f"{e}0.mlp.3"]
    assert names.index(f"{e}10.ln_1") > names.index(f"{e}1.mlp.3")
    assert names[-2:] == ["encoder.ln", "heads.head"]


def test_lenet_style_top_level_numbering():
    keys = {"conv1.weight": (6, 1, 5, 5), "bn1.weight": (6,), "conv2.weight": (16, 6, 5, 5), "fc1.weight": (120, 256),
            "fc2.weight": (84, 120), "fc3.weight": (10, 84)}
    assert _modules(keys) == ["conv1", "bn1", "conv2", "fc1", "fc2", "fc3"]


def test_shapes_connect_in_depth_order():
    for keys, want in ((vit_b16(), (37, 49)), (bert_base(), (73, 73)), (gpt2(), (24, 47))):
        layers, _ = group_layers((k, "F32", s) for k, s in keys.items())
        assert connected_pairs(layers) == want  # ViT: qkv -> proj breaks (3 heads); GPT-2 stores [in, out]
    layers, _ = group_layers((k, "F32", s) for k, s in resnet18().items())
    # 21 convs/linears; every one feeds the next except the 3 downsample branches, which take the block's input
    assert connected_pairs(layers) == (17, 20)
    by_name = sorted(layers, key=lambda layer: natural_key(layer.name))
    assert connected_pairs(by_name)[0] < 17  # name order (fc before layer1, ...) connects fewer
    arch2 = {"features.0.weight": (8, 1, 5, 5), "features.3.weight": (6, 8, 5, 5), "features.6.weight": (4, 6, 2, 2),
             "classifier.0.weight": (20, 36), "classifier.2.weight": (10, 20)}
    assert connected_pairs(group_layers((k, "F32", s) for k, s in arch2.items())[0]) == (4, 4)
    shuffled = {"classifier.0.weight": (20, 36), "features.0.weight": (8, 1, 5, 5), "classifier.2.weight": (10, 20)}
    assert connected_pairs(group_layers((k, "F32", s) for k, s in shuffled.items())[0]) == (1, 2)


def test_grouping_roles_kinds_and_skips():
    keys = [("1.bn1.weight", "F32", (8,)), ("1.bn1.bias", "F32", (8,)), ("1.bn1.running_mean", "F32", (8,)),
            ("1.bn1.num_batches_tracked", "I64", ()), ("x.weight", "F16", (3, 2)), ("x_weight", "F32", (3,)),
            ("attn.in_proj_weight", "BF16", (6, 2)), ("attn.in_proj_bias", "BF16", (6,)), ("e", "F32", (0, 3)),
            ("tok_embed.weight", "F32", (50, 8)), ("cls_token", "F32", (1, 1, 8)), ("c.weight", "F32", (4, 2, 3, 3))]
    layers, skipped = group_layers(keys)
    by = {layer.name: layer for layer in layers}
    assert {s.name: s.reason.split()[0] for s in skipped} == {"1.bn1.running_mean": "normalization",
                                                              "1.bn1.num_batches_tracked": "integer", "e": "empty"}
    assert by["1.bn1"].kind == LayerKind.NORM and [p.role for p in by["1.bn1"].parts] == ["weight", "bias"]
    assert by["x"].kind == LayerKind.LINEAR and by["x_weight"].kind == LayerKind.OTHER
    assert by["attn.in_proj"].kind == LayerKind.LINEAR and by["attn.in_proj"].n_params == 18
    assert by["tok_embed"].kind == LayerKind.EMBEDDING and by["cls_token"].kind == LayerKind.OTHER
    assert by["c"].kind == LayerKind.CONV2D
    assert part_chunks(LayerKind.CONV2D, "weight", (4, 2, 3, 3), 16) == 8  # one chunk per 3x3 kernel
    assert part_chunks(LayerKind.CONV2D, "weight", (4, 2, 5, 5), 16) == 16  # 25 values: 2 chunks per kernel
    assert part_chunks(LayerKind.LINEAR, "weight", (5, 10), 16) == 4


def test_natural_key_and_order_is_a_permutation():
    assert sorted(["b.10.a", "b.2.a", "b.1.a"], key=natural_key) == ["b.1.a", "b.2.a", "b.10.a"]
    names = list(resnet18())
    assert sorted(depth_order(names)) == sorted(names)


@pytest.mark.parametrize("arch", ["arch1", "arch2"])
def test_our_zoo_archs_in_depth_order(arch):
    """The zoo's own networks: features in order, the classifier last (it used to sort to level 0)."""
    from model.zoo import archs

    state = archs.build_arch(arch).state_dict()
    names = _modules({k: tuple(v.shape) for k, v in state.items() if v.is_floating_point()})
    want = [spec.weight.rsplit(".", 1)[0] for spec in archs.get_spec(arch).layers]
    assert names == want and names[-1].startswith("classifier")
