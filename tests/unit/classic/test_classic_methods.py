"""Every classic method on a small CNN trained on scikit-learn's digits: each writes an artifact
that loads back in a fresh runner and is measured on the held-out split."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from llmquant.classic.export import example_inputs, load_program, program_weights_bytes, save_program
from llmquant.classic.methods import METHODS, get_method
from llmquant.classic.mixed import layer_sensitivity, output_error
from llmquant.classic.models import SourceModel
from llmquant.classic.ptq import ClassicContext, recurrent_note, static_convert
from llmquant.classic.recipe import (
    CastVariant,
    DynamicVariant,
    MixedVariant,
    OnnxDynamicVariant,
    OnnxFp32Variant,
    OnnxStaticVariant,
    QATVariant,
    StaticVariant,
)
from llmquant.classic.runners import Artifact, open_runner
from llmquant.classic.validate import accuracy_pct, measure, predict


def source_of(net) -> SourceModel:
    return SourceModel("factory", "digits_cnn", net, None, None, None, "h")


def quantize(method: str, variant, net, splits, tmp_path) -> tuple[Artifact, dict]:
    out = tmp_path / variant.name
    out.mkdir()
    summary = get_method(method)(source_of(net), variant, splits, out, ClassicContext(tmp_path / "work"))
    return Artifact(out / summary["artifact"], summary["format"]), summary


def accuracy(artifact: Artifact, data, compile: bool = False) -> float:
    runner = open_runner(artifact, compile, 1, len(data.inputs))
    return accuracy_pct(predict(runner, data, 64), data.labels.numpy())


def float_accuracy(net, data) -> float:
    with torch.no_grad():
        return accuracy_pct(net(*data.inputs).numpy(), data.labels.numpy())


def with_outlier_channels(net, alpha: float = 1000.0, seed: int = 1):
    """The same function with fc1's units rescaled by factors spread over [1, alpha] (fc2 undoes
    it; ReLU commutes with positive scales). Float outputs are unchanged, but one per-tensor INT8
    grid for fc2's input can no longer fit both the large and the small units: the activation
    outliers that make static quantization lose accuracy."""
    m = copy.deepcopy(net)
    n = m.fc1.out_features
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.linspace(0, math.log(alpha), n))[torch.randperm(n, generator=g)]
    with torch.no_grad():
        m.fc1.weight.mul_(scale[:, None])
        m.fc1.bias.mul_(scale)
        m.fc2.weight.div_(scale[None, :])
    return m.eval()


def test_method_table_matches_recipe_names():
    from llmquant.classic.recipe import METHOD_NAMES

    assert set(METHOD_NAMES) == set(METHODS)


def test_baseline_program_round_trip(digits_model, digits_splits, tmp_path):
    net, _ = digits_model
    path = save_program(net, example_inputs(digits_splits.calibration.inputs), tmp_path / "b.pt2")
    loaded = load_program(path)
    x = digits_splits.validation.inputs[0][:7]
    torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    n_params = sum(p.numel() for p in net.parameters())
    assert program_weights_bytes(path) == 4 * n_params
    # the file is the weights plus the graph: no dataset storage dragged in by example-input views
    assert path.stat().st_size < 4 * n_params + 150_000


def test_static_dynamic_cast_keep_accuracy_and_store_int8(digits_model, digits_splits, tmp_path):
    net, _ = digits_model
    val = digits_splits.validation
    base = float_accuracy(net, val)
    assert base > 93
    base_bytes = 4 * sum(p.numel() for p in net.parameters())
    static, s_sum = quantize("static", StaticVariant(name="s", method="static"), net, digits_splits, tmp_path)
    dyn, d_sum = quantize("dynamic", DynamicVariant(name="d", method="dynamic"), net, digits_splits, tmp_path)
    half, _ = quantize("cast", CastVariant(name="h", method="cast", dtype="float16"), net, digits_splits, tmp_path)
    bf, _ = quantize("cast", CastVariant(name="bf", method="cast", dtype="bfloat16"), net, digits_splits, tmp_path)
    for art in (static, dyn, half):
        assert abs(accuracy(art, val) - base) <= 1.5
    assert abs(accuracy(bf, val) - base) <= 3  # bf16 has 8 mantissa bits
    # static: all four conv/linear weights INT8; dynamic: only the two Linear layers
    assert s_sum["int8_weight_tensors"] == 4 and s_sum["quantized"] == ["conv1", "conv2", "fc1", "fc2"]
    assert d_sum["quantized"] == ["fc1", "fc2"]
    assert program_weights_bytes(static.path) < 0.35 * base_bytes
    fc_bytes = 4 * sum(p.numel() for n, p in net.named_parameters() if n.startswith("fc") and n.endswith("weight"))
    assert program_weights_bytes(dyn.path) <= base_bytes - 0.7 * fc_bytes
    assert program_weights_bytes(half.path) == base_bytes // 2


def test_static_skip_keeps_layers_in_float(digits_model, digits_splits, tmp_path):
    net, _ = digits_model
    _, summary = quantize("static", StaticVariant(name="s", method="static", skip=[r"^fc2$", "conv1"]), net,
                          digits_splits, tmp_path)
    assert summary["float"] == ["conv1", "fc2"] and summary["int8_weight_tensors"] == 2


def test_qat_recovers_what_static_lost(digits_model, digits_splits, tmp_path):
    net, _ = digits_model
    val = digits_splits.validation
    outlier = with_outlier_channels(net)
    base = float_accuracy(net, val)
    assert float_accuracy(outlier, val) == pytest.approx(base, abs=0.3)  # same function in float
    static, _ = quantize("static", StaticVariant(name="s", method="static"), outlier, digits_splits, tmp_path)
    static_acc = accuracy(static, val)
    lost = base - static_acc
    assert lost >= 3, f"the outlier model should make static INT8 lose accuracy (lost {lost:.2f})"
    qat, q_sum = quantize("qat", QATVariant(name="q", method="qat", epochs=2, lr=1e-3), outlier, digits_splits, tmp_path)
    qat_acc = accuracy(qat, val)
    assert q_sum["int8_weight_tensors"] == 4 and len(q_sum["train_loss"]) == 2
    assert qat_acc - static_acc >= max(1.0, 0.25 * lost), (base, static_acc, qat_acc)


def test_sensitivity_finds_the_outlier_layer_and_mixed_recovers(digits_model, digits_splits, tmp_path):
    net, _ = digits_model
    outlier = with_outlier_channels(net)
    calib = digits_splits.calibration
    ranking = layer_sensitivity(outlier, calib, "static", "output_error")
    assert [r["layer"] for r in ranking][0] == "fc2"  # its input holds the outliers
    assert ranking[0]["score"] > 10 * ranking[1]["score"]
    # the score is the output error of quantizing that layer alone, recomputed here independently
    q = static_convert(outlier, calib, only=["fc2"])
    with torch.no_grad():
        assert ranking[0]["score"] == pytest.approx(output_error(q(*calib.inputs), outlier(*calib.inputs)), rel=1e-6)
    acc_rank = layer_sensitivity(outlier, calib, "static", "accuracy")
    assert acc_rank[0]["layer"] == "fc2" and acc_rank[0]["score"] > 1
    mixed, m_sum = quantize("mixed", MixedVariant(name="m", method="mixed", keep_most_sensitive=1), outlier,
                            digits_splits, tmp_path)
    assert m_sum["float"] == ["fc2"] and m_sum["int8_weight_tensors"] == 3
    assert accuracy(mixed, digits_splits.validation) >= float_accuracy(net, digits_splits.validation) - 1.5


def test_output_error_is_relative_squared_error():
    ref = torch.tensor([[3.0, 4.0]])
    assert output_error(ref, ref) == 0
    assert output_error(torch.tensor([[3.0, 2.0]]), ref) == pytest.approx(4 / 25)


def test_onnx_export_dynamic_and_static(digits_model, digits_splits, tmp_path):
    net, _ = digits_model
    val = digits_splits.validation
    base = float_accuracy(net, val)
    fp32, _ = quantize("onnx_fp32", OnnxFp32Variant(name="f", method="onnx_fp32"), net, digits_splits, tmp_path)
    runner = open_runner(fp32, False, 1, 1)
    x = val.inputs[0][:16]
    np.testing.assert_allclose(runner.logits(runner(runner.prepare((x,)))), net(x).detach().numpy(), atol=1e-4)
    st, st_sum = quantize("onnx_static", OnnxStaticVariant(name="s", method="onnx_static"), net, digits_splits, tmp_path)
    dy, _ = quantize("onnx_dynamic", OnnxDynamicVariant(name="d", method="onnx_dynamic"), net, digits_splits, tmp_path)
    assert abs(accuracy(st, val) - base) <= 1.5 and abs(accuracy(dy, val) - base) <= 1.5
    import onnx

    ops = {n.op_type for n in onnx.load(str(st.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    assert st.path.stat().st_size < 0.5 * fp32.path.stat().st_size


def test_compiled_static_matches_eager(digits_model, digits_splits, tmp_path):
    """torch.compile with freezing lowers pt2e's q/dq pairs to INT8 kernels: same predictions."""
    net, _ = digits_model
    static, _ = quantize("static", StaticVariant(name="s", method="static"), net, digits_splits, tmp_path)
    val = digits_splits.validation
    eager = predict(open_runner(static, False, 1, 1), val, 64)
    compiled = predict(open_runner(static, True, 1, 1), val, 64)
    assert (eager.argmax(1) == compiled.argmax(1)).mean() > 0.98
    assert np.abs(eager - compiled).mean() < 0.05 * np.abs(eager).mean()


def test_measure_reports_nan_outputs(digits_splits):
    class Broken:
        def prepare(self, inputs):
            return inputs

        def __call__(self, x):
            out = torch.zeros(x[0].shape[0], 10)
            out[::2] = float("nan")
            return out

        def logits(self, out):
            return out.numpy()

    m = measure(Broken(), digits_splits.validation, 32, warmup=0, repeats=5)
    assert m.nonfinite == 10 * ((len(digits_splits.validation) + 1) // 2)
    assert m.latency_ms_median is not None and m.throughput > 0


def test_recurrent_layers_are_reported():
    lstm = torch.nn.Sequential()
    lstm.add_module("rnn", torch.nn.LSTM(4, 4))
    lstm.add_module("head", torch.nn.Linear(4, 2))
    assert "left in float" in recurrent_note(lstm)[0] and recurrent_note(torch.nn.Linear(2, 2)) == []


def test_unexportable_model_is_a_user_error(digits_splits):
    from llmquant.classic.export import export
    from llmquant.errors import UserError

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # control flow on values: torch.export cannot capture it
                return x.flatten(1)[:, :10]
            return -x.flatten(1)[:, :10]

    with pytest.raises(UserError, match="torch.export cannot capture DataDependent"):
        export(DataDependent(), example_inputs(digits_splits.calibration.inputs))
