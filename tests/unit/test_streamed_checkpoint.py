"""Block-at-a-time quantization: the streamed safetensors writer against safetensors' own, and
checkpoints quantized from a lazy skeleton (weights read from the files one block at a time)
against the whole-model path and the whole-model writer: the same bytes."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmquant.errors import UserError
from llmquant.formats.checkpoint import write_safetensors
from llmquant.formats.stream import StreamedShards
from llmquant.quantize.awq.quantizer import AWQHandler, AWQQuantizer
from llmquant.quantize.awq import awq_arch
from llmquant.quantize.base import CalibrationSet, QuantizeContext
from llmquant.quantize.gptq.quantizer import GPTQHandler, GPTQQuantizer
from llmquant.quantize.lazy import EagerBlocks, LazyBlocks, lazy_model
from llmquant.quantize.rtn.quantizer import RTNQuantizer, quantize_linear
from llmquant.formats.write import write_quantized
from llmquant.quantize.sequential import SequentialOptions, run_sequential
from llmquant.quantize.targets import target_linears
from llmquant.quantize.awq.config import AWQVariant
from llmquant.quantize.gptq.config import GPTQVariant
from llmquant.quantize.rtn.config import RTNVariant
from tests.conftest import load_fp32

FILES = ("model.safetensors", "config.json", "generation_config.json")


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mixed_tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "b.qweight": torch.randint(-2 ** 31, 2 ** 31 - 1, (8, 24), dtype=torch.int32, generator=g),
        "a.scales": torch.randn(3, 24, generator=g).half(),
        "a.bias": torch.randn(5, generator=g).bfloat16(),
        "z.norm": torch.randn(7, generator=g),
        "c.idx": torch.arange(5, dtype=torch.int64),
        "m.u8": torch.arange(3, dtype=torch.uint8),
        "m.flag": torch.tensor([True, False]),
        "m.i8": torch.tensor([1, -2], dtype=torch.int8),
        "m.i16": torch.tensor([1, -2], dtype=torch.int16),
        "m.f64": torch.randn(3, dtype=torch.float64, generator=g),
        "e.empty": torch.zeros(0, 4),
    }


def test_one_streamed_shard_is_byte_identical_to_save_file(tmp_path):
    state = mixed_tensors()
    save_file(state, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    shards = StreamedShards(tmp_path / "out")
    for name in reversed(list(state)):  # arrival order does not matter
        shards.add(name, state[name])
    assert shards.finish() == ["model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.safetensors"]  # no body left
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_streamed_shards_split_like_the_whole_model_writer(tmp_path):
    state = {f"t{i}": torch.full((64,), float(i)) for i in range(10)}  # 256 bytes each
    (tmp_path / "ref").mkdir()
    names = write_safetensors(tmp_path / "ref", state, max_shard=700)
    shards = StreamedShards(tmp_path / "out", max_shard=700)
    for k, v in state.items():
        shards.add(k, v)
    assert shards.finish() == names == [f"model-{i:05d}-of-00005.safetensors" for i in range(1, 6)]
    for n in names:
        assert (tmp_path / "out" / n).read_bytes() == (tmp_path / "ref" / n).read_bytes()
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index == json.loads((tmp_path / "ref" / "model.safetensors.index.json").read_text())


def test_a_tensor_written_twice_is_refused_and_abort_leaves_nothing(tmp_path):
    shards = StreamedShards(tmp_path / "out", max_shard=100)
    shards.add("a", torch.zeros(40))
    shards.add("b", torch.zeros(40))  # closes the first shard
    with pytest.raises(ValueError, match="a written twice"):
        shards.add("a", torch.zeros(1))
    shards.abort()
    assert not (tmp_path / "out").exists()


# -- quantizing from the files, one block at a time ---------------------------------------------


def make_model(path, tie: bool, shard: str | None = None, layers: int = 3):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=128, tie_word_embeddings=tie)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)  # stored in bf16: computed in float32 either way
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("lazy")
    return {"tied": make_model(root / "tied", True), "untied": make_model(root / "untied", False),
            "sharded": make_model(root / "sharded", False, shard="40KB")}


CALIB = CalibrationSet(torch.randint(0, 128, (6, 32), generator=torch.Generator().manual_seed(1)), "test")


def variant_for(method: str, head: bool = False):
    if method == "rtn":
        return RTNVariant(name="r", method="rtn", bits=4, group_size=32, quantize_lm_head=head)
    if method == "gptq":
        return GPTQVariant(name="g", method="gptq", bits=4, group_size=32, quantize_lm_head=head)
    return AWQVariant(name="a", method="awq", bits=4, group_size=32, calib_dtype="float32", n_grid=4,
                      clip_n_grid=4)


def whole_model_reference(src, method: str, variant, out):
    """The quantizers' code path before streaming: everything in memory, then one writer call."""
    model = load_fp32(src)
    targets = target_linears(model, variant)
    settings = {n: s for n, (_, s) in targets.items()}
    if method == "rtn":
        layers = {n: quantize_linear(n, lin, s, "cpu")[0] for n, (lin, s) in targets.items()}
        write_quantized(model, layers, "gptq", variant, None, out)
    elif method == "gptq":
        handler = GPTQHandler(model, variant, settings, "k")
        head = "lm_head" in settings
        res = run_sequential(model, CALIB.input_ids, handler, SequentialOptions(batch_size=6, keep_final=head))
        if head:  # calibrated on the last block's outputs, as GPTQQuantizer does
            GPTQQuantizer()._quantize_head(model, handler, res.hidden, variant, QuantizeContext(), EagerBlocks())
        write_quantized(model, handler.layers, "gptq", variant, None, out, extra_config={
            "desc_act": variant.desc_act, "static_groups": variant.static_groups,
            "damp_percent": variant.damp_percent, "true_sequential": variant.true_sequential,
            "act_group_aware": variant.act_group_aware and not variant.desc_act})
    else:
        handler = AWQHandler(model, variant, settings, awq_arch.family_for("llama"), "k", torch.float32,
                             CALIB.input_ids.shape[0])
        run_sequential(model, CALIB.input_ids, handler, SequentialOptions(batch_size=6, staged=False))
        write_quantized(model, handler.layers, "awq", variant, None, out)


QUANTIZERS = {"rtn": RTNQuantizer, "gptq": GPTQQuantizer, "awq": AWQQuantizer}


@pytest.mark.parametrize("method,kind,head", [
    ("rtn", "tied", True), ("rtn", "untied", True), ("gptq", "tied", False), ("gptq", "untied", True),
    ("awq", "tied", False), ("gptq", "sharded", False),
])
def test_lazy_and_eager_checkpoints_are_byte_identical_to_the_whole_model_writer(tmp_path, models, method, kind, head):
    src, variant = models[kind], variant_for(method, head)
    assert (src / "model.safetensors.index.json").exists() == (kind == "sharded")
    whole_model_reference(src, method, variant, tmp_path / "ref")
    QUANTIZERS[method]().quantize(load_fp32(src), variant, CALIB, tmp_path / "eager", QuantizeContext())
    skeleton, blocks = lazy_model(src)
    QUANTIZERS[method]().quantize(skeleton, variant, CALIB, tmp_path / "lazy", QuantizeContext(blocks=blocks))
    for f in FILES:
        assert sha(tmp_path / "eager" / f) == sha(tmp_path / "ref" / f), f
        assert sha(tmp_path / "lazy" / f) == sha(tmp_path / "ref" / f), f
    assert all(p.is_meta for p in skeleton.parameters())  # nothing stayed loaded


def test_only_one_block_is_resident_at_a_time(tmp_path, models, monkeypatch):
    loaded, most = set(), []
    real_load, real_unload = LazyBlocks.load, LazyBlocks.unload

    def load(self, name, module, device, dtype=None):
        real_load(self, name, module, device, dtype)
        loaded.add(name)
        most.append(len([n for n in loaded if ".layers." in n]))

    def unload(self, name, module):
        real_unload(self, name, module)
        loaded.discard(name)

    monkeypatch.setattr(LazyBlocks, "load", load)
    monkeypatch.setattr(LazyBlocks, "unload", unload)
    skeleton, blocks = lazy_model(models["untied"])
    GPTQQuantizer().quantize(skeleton, variant_for("gptq", head=True), CALIB, tmp_path / "out",
                             QuantizeContext(blocks=blocks))
    assert max(most) == 1 and not loaded  # blocks came and went one by one; nothing left loaded


def test_streamed_shards_of_a_quantized_model_hold_the_same_tensors(tmp_path, models):
    src, variant = models["untied"], variant_for("gptq")
    skeleton, blocks = lazy_model(src)
    GPTQQuantizer().quantize(skeleton, variant, CALIB, tmp_path / "one", QuantizeContext(blocks=blocks))
    skeleton, blocks = lazy_model(src)
    GPTQQuantizer().quantize(skeleton, variant, CALIB, tmp_path / "many",
                             QuantizeContext(blocks=blocks, max_shard_bytes=20_000))
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2
    many = {}
    for f in files:
        many.update(load_file(str(tmp_path / "many" / f)))
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    assert set(many) == set(one) == set(index["weight_map"])
    assert all(torch.equal(many[k], one[k]) for k in one)
    assert (tmp_path / "many" / "config.json").read_text() == (tmp_path / "one" / "config.json").read_text()


def test_a_missing_tensor_names_itself_and_the_directory(tmp_path, models):
    import shutil

    src = tmp_path / "broken"
    shutil.copytree(models["untied"], src)
    state = load_file(str(src / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    skeleton, blocks = lazy_model(src)
    with pytest.raises(UserError, match=r"broken: the checkpoint has no tensor model\.layers\.1\.mlp\.up_proj\.weight"):
        RTNQuantizer().quantize(skeleton, variant_for("rtn"), None, tmp_path / "out", QuantizeContext(blocks=blocks))
    assert not (tmp_path / "out").exists()  # the blocks already streamed were removed


def test_a_checkpoint_named_otherwise_is_loaded_whole_with_a_warning(tmp_path, caplog):
    from transformers import LlamaConfig, LlamaModel

    from llmquant.run_steps import load_for_quantizing

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=128)
    LlamaModel(cfg).save_pretrained(tmp_path / "base")  # names without the "model." prefix
    model, blocks = load_for_quantizing(variant_for("rtn"), tmp_path / "base", "cpu", False)
    assert blocks is None and not any(p.is_meta for p in model.parameters())
    assert "model.embed_tokens.weight is not in the files" in caplog.text
    model, blocks = load_for_quantizing(variant_for("rtn"), make_model(tmp_path / "ok", tie=True), "cpu", False)
    assert blocks is not None and all(p.is_meta for p in model.parameters())
