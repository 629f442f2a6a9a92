"""Channel pruning end to end: coverage models shrink and run, targets are met, models save and load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from test_channel_nets import NETS, ResNet, build

import torchslim as ts
from torchslim.data import call
from torchslim.metrics import count_macs
from torchslim.prune.channel import prune_channels_

CNNS = ["lenet5", "mnist1d-cnn", "resnet-bottleneck", "densenet", "mobilenetv2", "unet"]
FAST = [*CNNS, "hf-llama", "torch-transformer"]


def output(y: Any) -> torch.Tensor:
    for attr in ("logits", "last_hidden_state"):
        if hasattr(y, attr):
            return getattr(y, attr)  # type: ignore[no-any-return]
    return y  # type: ignore[no-any-return]


def _prune_and_check(name: str) -> tuple[nn.Module, Any]:
    model, x = build(name)
    dense_out, dense_macs = output(call(model, x)), count_macs(model, x)
    dense_params = sum(p.numel() for p in model.parameters())
    report = ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=x)
    assert report.units_removed > 0
    assert output(call(model, x)).shape == dense_out.shape
    assert count_macs(model, x) < 0.8 * dense_macs
    assert sum(p.numel() for p in model.parameters()) < dense_params
    return model, x


@pytest.mark.parametrize("name", FAST)
def test_prune_at_half_ratio(name: str) -> None:
    _prune_and_check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NETS))
def test_pruned_model_exports_to_onnx(name: str, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, x = _prune_and_check(name)
    path = ts.export_onnx(model, x, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path))
    feeds = {i.name: v.numpy() for i, v in zip(session.get_inputs(), [x], strict=False)}
    got = torch.from_numpy(session.run(None, feeds)[0])
    assert torch.allclose(got, output(call(model, x)), atol=1e-4)


@pytest.mark.parametrize("name", ["lenet5", "resnet-bottleneck", "densenet", "mobilenetv2", "unet"])
def test_removing_zeroed_channels_is_exact(name: str) -> None:
    """Soft-zeroed channels contribute nothing, so cutting them must not change the output at all."""
    model, x = build(name)
    report = prune_channels_(model, ts.ChannelConfig(ratio=0.5, soft=True), x)
    assert report.soft is not None
    zeroed = model(x)
    report.soft.finalize(model)
    assert torch.allclose(model(x), zeroed, atol=1e-5)


def test_macs_target_and_round_to() -> None:
    model, x = build("resnet-bottleneck")
    dense = count_macs(model, x)
    ts.prune_(model, ts.ChannelConfig(macs_target=0.4, round_to=4), example_inputs=x)
    assert count_macs(model, x) <= 0.4 * dense
    assert count_macs(model, x) > 0.25 * dense  # the search stops near the target, not far below
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and name not in ("layers.3.body.2", "layers.3.short", "stem.0"):
            assert m.out_channels % 4 == 0, name


def test_global_scope_prunes_layers_unevenly() -> None:
    model, x = build("lenet5")
    with torch.no_grad():
        model.fc1.weight[:250] *= 0.01  # half of fc1 is nearly dead: a global ranking should take it
    report = ts.prune_(model, ts.ChannelConfig(ratio=0.4, scope="global"), example_inputs=x)
    assert model.fc1.out_features < 300 and model.fc1.out_features / 500 < model.conv2.out_channels / 50
    assert 0.35 < report.units_removed / report.units_total < 0.45


@pytest.mark.parametrize("criterion", ["l1", "l2", "magnitude", "taylor", "entropy", "bn_scale", "random"])
def test_every_criterion_prunes(criterion: str) -> None:
    model, x = build("resnet-bottleneck")
    data = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(2)]
    ts.prune_(model, ts.ChannelConfig(ratio=0.5, importance=criterion), example_inputs=x, data=data)
    assert model.layers[0].body[0][0].out_channels == 4


def test_bn_scale_removes_the_smallest_scales() -> None:
    model, x = build("resnet-bottleneck")
    bn = model.layers[0].body[0][1]
    with torch.no_grad():
        bn.weight.copy_(torch.arange(8.0))
    ts.prune_(model, ts.ChannelConfig(ratio=0.5, importance="bn_scale"), example_inputs=x)
    assert sorted(bn.weight.tolist()) == [4.0, 5.0, 6.0, 7.0]


def test_latency_target_shrinks_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search runs on measured latency; a deterministic stand-in (proportional to MACs) replaces the
    clock, so the outcome does not depend on how busy the machine is."""
    timed: list[nn.Module] = []

    def fake_latency(model: nn.Module, inputs: Any, repeats: int) -> float:
        timed.append(model)
        return float(count_macs(model, inputs))

    monkeypatch.setattr("torchslim.prune.channel.measure_latency", fake_latency)
    model, x = build("resnet-bottleneck")
    dense = count_macs(model, x)
    ts.prune_(model, ts.ChannelConfig(latency_target=0.7), example_inputs=x)
    assert len(timed) > 2  # the dense model and the search's trials
    assert count_macs(model, x) <= 0.7 * dense


def test_save_and_load_in_a_fresh_process(tmp_path: Path) -> None:
    model, x = build("resnet-bottleneck")
    ts.prune_(model, ts.ChannelConfig(ratio=0.5, round_to=2), example_inputs=x)
    ts.save(model, tmp_path / "m", factory="test_channel_nets:ResNet")
    torch.save(model.eval()(x), tmp_path / "y.pt")
    torch.save(x, tmp_path / "x.pt")
    code = (
        f"import torch, torchslim as ts; m = ts.load(r'{tmp_path}/m', trust_code=True); "
        f"x = torch.load(r'{tmp_path}/x.pt'); "
        f"assert torch.allclose(m(x), torch.load(r'{tmp_path}/y.pt'), atol=1e-5); print('ok')"
    )
    paths = [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.strip().endswith("ok"), done.stderr[-2000:]
    assert isinstance(ResNet(), nn.Module)


def test_llama_grouped_query_heads_and_from_pretrained(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model, x = build("hf-llama")
    ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=x)
    att = model.model.layers[0].self_attn
    assert (att.q_proj.out_features, att.k_proj.out_features, att.v_proj.out_features) == (16, 8, 8)
    assert model.config.num_key_value_heads == 1 and model.config.num_attention_heads == 2
    model.save_pretrained(tmp_path)
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.allclose(again(x).logits, model(x).logits, atol=1e-5)


def test_bert_mlp_only_keeps_config_uniform(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model, x = build("hf-bert")
    ts.prune_(model, ts.ChannelConfig(ratio=0.5, exclude=("*.attention",)), example_inputs=x)
    assert model.config.intermediate_size == 32
    model.save_pretrained(tmp_path)
    again = transformers.BertModel.from_pretrained(tmp_path).eval()
    assert torch.allclose(again(x).last_hidden_state, model(x).last_hidden_state, atol=1e-5)


def test_bert_heads_prune_and_reload_through_ts(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    model, x = build("hf-bert")
    ts.prune_(model, ts.ChannelConfig(ratio=0.5), example_inputs=x)
    att = model.encoder.layer[0].attention.self
    assert att.num_attention_heads == 2 and att.query.out_features == 16
    assert model.config.num_attention_heads == 4  # fewer heads cannot be expressed in BertConfig
    ts.save(model, tmp_path / "m", factory="test_channel_nets:bert")
    again = ts.load(tmp_path / "m", trust_code=True)
    assert torch.allclose(again(x).last_hidden_state, model(x).last_hidden_state, atol=1e-5)


def test_recipe_stage_kind_channel(tiny_task: Any, tmp_path: Path) -> None:
    recipe = {
        "model": "tests-tiny",
        "task": "tiny-digits",
        "stages": [{"prune": {"kind": "channel", "ratio": 0.5, "round_to": 4}}, {"finetune": {"epochs": 1}}],
    }
    base = tiny_task.model()
    recipe["model"] = str(tmp_path / "base")
    ts.save(base, tmp_path / "base")
    report = ts.run_recipe(recipe, tmp_path / "out")
    first, last = report["stages"][0], report["stages"][-1]
    assert last["params"] < 0.6 * first["params"] and last["macs"] < 0.6 * first["macs"]
    assert ts.load(tmp_path / "out" / "model").fc1.out_features == 16


def test_recipe_rejects_bad_channel_block() -> None:
    with pytest.raises(ts.UserError, match="importance"):
        ts.run_recipe(
            {
                "model": "zoo:lenet5-digits",
                "stages": [{"prune": {"kind": "channel", "ratio": 0.5, "importance": "nope"}}],
            }
        )


def test_soft_filter_pruning_trains_then_cuts() -> None:
    from torchslim.distill.trainer import fit

    model, x = build("lenet5")
    data = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))) for _ in range(2)]
    report = prune_channels_(model, ts.ChannelConfig(ratio=0.5, soft=True), x)
    assert report.soft is not None and model.conv1.out_channels == 20
    assert int((model.conv1.weight.flatten(1).abs().sum(1) == 0).sum()) == 10
    fit(
        model,
        lambda e: data,
        lambda m, i, t: nn.functional.cross_entropy(m(i), t),
        epochs=1,
        lr=1e-2,
        callbacks=[report.soft],
    )
    report.soft.finalize(model)
    assert model.conv1.out_channels == 10 and model(x).shape == (2, 10)


def _small_resnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return ResNet((8, 16), bottleneck=False, blocks=1).eval(), torch.randn(2, 3, 16, 16)


def test_exclude_keeps_a_layers_outputs_while_its_inputs_shrink() -> None:
    model, x = _small_resnet()
    classes, features = model.fc.out_features, model.fc.in_features
    ts.prune_(model, ts.ChannelConfig(ratio=0.5, exclude=["fc"]), example_inputs=x)
    assert model.fc.out_features == classes and model.fc.in_features == features // 2
    assert call(model, x).shape == (2, classes)


def test_exclude_mode_coupled_also_keeps_the_channels_feeding_it() -> None:
    model, x = _small_resnet()
    features = model.fc.in_features
    ts.prune_(model, ts.ChannelConfig(ratio=0.5, exclude=["fc"], exclude_mode="coupled"), example_inputs=x)
    assert model.fc.in_features == features
    assert count_macs(model, x) > count_macs(_pruned_plain(), x)


def _pruned_plain() -> nn.Module:
    model, x = _small_resnet()
    ts.prune_(model, ts.ChannelConfig(ratio=0.5, exclude=["fc"]), example_inputs=x)
    return model


def test_an_excluded_hidden_layer_keeps_its_outputs_only() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    ts.prune_(model, ts.ChannelConfig(ratio=0.5, exclude=["2"]), example_inputs=torch.randn(2, 8))
    assert (model[0].out_features, model[2].in_features, model[2].out_features) == (8, 8, 16)


def test_convnext_channels_first_layernorm_lets_the_first_stage_stream_shrink() -> None:
    pytest.importorskip("transformers")
    model, x = build("hf-convnext")
    stem = model.convnext.embeddings.patch_embeddings.out_channels
    ts.prune_(model, ts.ChannelConfig(ratio=0.5, exclude=["classifier"]), example_inputs=x)
    assert model.convnext.embeddings.patch_embeddings.out_channels == stem // 2
    assert output(call(model, x)).shape[-1] == model.classifier.out_features == 10


def _mixed_widths() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 44, 3), nn.ReLU(), nn.Conv2d(44, 8, 1),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 44), nn.ReLU(), nn.Linear(44, 3),
    )  # fmt: skip


@pytest.mark.parametrize("round_to", [None, 1])
def test_round_to_by_default_keeps_wide_convolutions_in_multiples_of_4_and_leaves_the_rest(
    round_to: int | None,
) -> None:
    """onnxruntime's blocked convolutions take channel counts in multiples of 4 (37 ran 2.6x slower
    than 40); a 6-channel convolution and Linear layers are cut to the ratio as they are."""
    model, x = _mixed_widths(), torch.randn(2, 1, 8, 8)
    ts.prune_(model, ts.ChannelConfig(ratio=0.25, round_to=round_to), example_inputs=x)
    wide = 32 if round_to is None else 33  # 44 * 0.75 = 33
    assert [model[0].out_channels, model[2].out_channels, model[6].out_features] == [4, wide, 33]
