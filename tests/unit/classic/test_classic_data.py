"""Classic datasets: idx/npz/jsonl readers, seeded splits with class coverage, state_dict loading."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from llmquant.classic.data import coverage_notes, load_dataset, make_splits, read_idx
from llmquant.classic.models import build_factory, load_weights, read_state_dict
from llmquant.classic.recipe import ClassicDataSpec
from llmquant.errors import UserError


def write_idx(path, array: np.ndarray, gz: bool = True):
    head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = head + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_idx_round_trip_and_mnist_pair(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    labels = np.arange(30, dtype=np.uint8) % 10
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, gz=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), images)
    ds = load_dataset(ClassicDataSpec(source="t10k-images-idx3-ubyte.gz", labels="t10k-labels-idx1-ubyte",
                                      mean=[0.5], std=[0.25]), tmp_path)
    assert ds.inputs[0].shape == (30, 1, 28, 28) and ds.num_classes == 10
    torch.testing.assert_close(ds.inputs[0][3, 0], (torch.from_numpy(images[3]).float() / 255 - 0.5) / 0.25)
    assert ds.labels.tolist() == labels.tolist()
    with pytest.raises(UserError, match="data.labels: required"):
        load_dataset(ClassicDataSpec(source="t10k-images-idx3-ubyte.gz"), tmp_path)


def test_idx_truncated_or_wrong(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(bytes([0, 0, 8, 2]) + struct.pack(">2I", 10, 10) + b"\0" * 50)
    with pytest.raises(UserError, match="holds 50 values"):
        read_idx(p)
    p.write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(UserError, match="not an unsigned-byte idx file"):
        read_idx(p)


def test_npz_layouts_and_string_labels(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(12, 6, 6, 3), dtype=np.uint8)  # NHWC
    y = np.array(["cat", "dog", "ant"] * 4)
    np.savez(tmp_path / "d.npz", images=x, target=y)
    ds = load_dataset(ClassicDataSpec(source="d.npz", x_key="images", y_key="target", limit=10), tmp_path)
    assert ds.inputs[0].shape == (10, 3, 6, 6)
    torch.testing.assert_close(ds.inputs[0][2, 1], torch.from_numpy(x[2, :, :, 1]).float() / 255)
    assert ds.class_names == ("ant", "cat", "dog") and ds.labels[:3].tolist() == [1, 2, 0]
    with pytest.raises(UserError, match="has no array 'x'"):
        load_dataset(ClassicDataSpec(source="d.npz"), tmp_path)


def test_jsonl_needs_fields(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"text": "a b", "label": 1}) + "\n" + json.dumps({"txt": "c"}) + "\n")

    class Tok:
        def __call__(self, texts, **kw):
            n = len(texts)
            return {"input_ids": torch.ones(n, kw["max_length"]), "attention_mask": torch.ones(n, kw["max_length"])}

    with pytest.raises(UserError, match="line 2: no field 'text'"):
        load_dataset(ClassicDataSpec(source="t.jsonl"), tmp_path, Tok())


def test_splits_are_seeded_disjoint_and_report_coverage():
    from pathlib import Path

    ds = load_dataset(ClassicDataSpec(source="builtin:digits"), Path("."))
    a = make_splits(ds, 0.25, 300, seed=3)
    b = make_splits(ds, 0.25, 300, seed=3)
    c = make_splits(ds, 0.25, 300, seed=4)
    assert a.key == b.key and a.key != c.key
    assert len(a.validation) == round(len(ds) * 0.25) and len(a.train) + len(a.validation) == len(ds)
    rows = lambda d: {tuple(r) for r in d.inputs[0].flatten(1).tolist()}  # noqa: E731
    train, val, cal = rows(a.train), rows(a.validation), rows(a.calibration)
    assert cal <= train and not (cal & (val - train))  # calibration comes from the training split only
    assert len(a.calibration) == 300
    cov = a.report["calibration_coverage"]
    assert cov["present"] == 10 and cov["missing"] == [] and cov["min_per_class"] > 10
    assert "covers 10/10 classes" in coverage_notes(a.report)[0]
    assert len(make_splits(ds, 100, 100, 0).validation) == 100  # a count, not a fraction


def test_splits_report_missing_classes_and_short_calibration():
    from llmquant.classic.data import Dataset

    x = torch.zeros(150, 2)
    y = torch.tensor([0] * 140 + [1] * 10)
    ds = Dataset((x,), ("x",), y, 3, "toy", "h")
    s = make_splits(ds, 0.2, 500, 0)
    notes = " ".join(coverage_notes(s.report))
    assert "only 120 training samples available" in notes and "classes [2] are absent" in notes


def test_state_dicts_only(tmp_path):
    net = build_factory("llmquant.classic.zoo:digits_cnn", {}, tmp_path)
    torch.save(net.state_dict(), tmp_path / "ok.pt")
    sd = read_state_dict(tmp_path / "ok.pt")
    fresh = build_factory("llmquant.classic.zoo:digits_cnn", {}, tmp_path)
    load_weights(fresh, sd, "w")
    torch.testing.assert_close(fresh.fc2.weight, net.fc2.weight)
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(tmp_path / "ok.safetensors"))
    assert set(read_state_dict(tmp_path / "ok.safetensors")) == set(sd)
    torch.save({"model": net.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match="refused: expected a state_dict"):
        read_state_dict(tmp_path / "ckpt.pt")
    torch.save(net, tmp_path / "module.pt")
    with pytest.raises(UserError, match="refused: only a plain state_dict loads with weights_only=True"):
        read_state_dict(tmp_path / "module.pt")
    with pytest.raises(UserError, match="does not fit the factory's model"):
        load_weights(build_factory("llmquant.classic.zoo:lenet", {}, tmp_path), sd, "w")
    with pytest.raises(UserError, match="cannot import 'no_such_mod'"):
        build_factory("no_such_mod:f", {}, tmp_path)
    with pytest.raises(UserError, match="refused"):
        build_factory("llmquant.classic.zoo:digits_cnn", {"colour": 1}, tmp_path)


def test_factory_from_the_recipe_directory(tmp_path):
    (tmp_path / "mynet.py").write_text("import torch\ndef make():\n    return torch.nn.Linear(4, 2)\n"
                                       "def notmodule():\n    return 3\n")
    assert isinstance(build_factory("mynet:make", {}, tmp_path), torch.nn.Linear)
    with pytest.raises(UserError, match="returned int, not a torch.nn.Module"):
        build_factory("mynet:notmodule", {}, tmp_path)
