"""Will vLLM serve this checkpoint? Rules read from vLLM's source (cited per rule), applied to
a checkpoint's quantization_config and per-module shapes — a pre-flight before renting a GPU.

Pure functions of the facts: no vLLM import, no GPU. `sm` is the target GPU's compute
capability as an integer (75 T4, 80 A100, 86 A10/RTX 30xx, 89 L4/RTX 40xx, 90 H100); `tp`
the tensor-parallel size (vLLM checks the per-GPU shard of each layer).

Sources (vllm-project/vllm, model_executor/layers/quantization/):
  gptq_marlin.py   GPTQMarlinConfig.TYPE_MAP {(4, sym), (8, sym)}, is_gptq_marlin_compatible,
                   get_min_capability 75, act dtypes fp16/bf16; `dynamic` overrides are applied
                   inside the method chosen for the base config (utils/gptq_utils.py).
  gptq.py          GPTQConfig: 2/3/4/8 bits, act dtypes [float16] only; create_weights needs
                   input_size_per_partition % group_size == 0 and output % pack-factor numerator == 0.
                   checkpoint_format gptq_v2 is honoured by gptq_gemm only since PR #26092 (Oct 2025).
  utils/marlin_utils.py  MARLIN_SUPPORTED_GROUP_SIZES [-1, 32, 64, 128]; GPTQ_MARLIN_MIN_THREAD_N 64,
                   GPTQ_MARLIN_MIN_THREAD_K 128 (verify_marlin_supports_shape, per partition);
                   with zero points only uint4 (query_marlin_supported_quant_types); AWQ interleave.
  kernels/mixed_precision/  choose_mp_linear_kernel order: Machete (sm90 only), ..., Marlin, ...,
                   Exllama (float16 activations only, uint4b8/uint8b128, group divides input).
  awq_marlin.py    TYPE_MAP {4, 8}, is_awq_marlin_compatible (needs zero_point and a marlin type),
                   get_min_capability 80; layers marlin cannot shape fall back to the awq kernel.
  awq.py           AWQConfig: 4 bits only, act dtypes [float16] only, GEMM-shaped parameters
                   (qweight [in, out/8]); there is no GEMV reader.
  compressed_tensors/schemes/compressed_tensors_wNa16.py  pack-quantized 4/8 bits, sym ->
                   uint4b8/uint8b128, asym -> uint4/uint8, through the mixed-precision kernels.
  utils/quant_utils.py is_layer_skipped: all shards of a fused layer (qkv_proj, gate_up_proj)
                   must have the same precision; compressed-tensors requires one scheme per fused layer.
  bitsandbytes.py  bnb_4bit_quant_storage must be uint8; act dtypes fp32/fp16/bf16; min capability 70.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from .modules import ModuleQuant

MARLIN_GROUPS = (-1, 32, 64, 128)
MARLIN_TYPES = ((4, True), (8, True))  # gptq_marlin TYPE_MAP: (bits, sym)
MARLIN_MIN_N = 64  # GPTQ_MARLIN_MIN_THREAD_N
MARLIN_MIN_K = 128  # GPTQ_MARLIN_MIN_THREAD_K
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
ROW_PARALLEL = ("o_proj", "down_proj", "dense", "fc2", "out_proj", "wo", "c_proj")


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str  # "blocker": vLLM refuses it or serves wrong output with default flags; "warning"
    reason: str
    modules: tuple[str, ...] = ()


@dataclass
class VllmVerdict:
    quantization: str  # the method vLLM picks ("gptq_marlin", "gptq", "awq_marlin", "awq", ...)
    kernel: str  # kernel family
    dtype: str  # activation dtypes the kernel takes
    findings: list[Finding] = field(default_factory=list)

    @property
    def servable(self) -> bool:
        return not any(f.severity == "blocker" for f in self.findings)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["servable"] = self.servable
        return d


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def shard(m: ModuleQuant, tp: int) -> tuple[int, int]:
    """(in, out) per GPU: row-parallel layers split the input, the others the output."""
    if tp <= 1:
        return m.in_features, m.out_features
    if _leaf(m.name) in ROW_PARALLEL:
        return m.in_features // tp, m.out_features
    return m.in_features, m.out_features // tp


def marlin_shape_problem(m: ModuleQuant, tp: int) -> str | None:
    """verify_marlin_supports_shape on the per-GPU shard, or None when marlin can run it."""
    k, n = shard(m, tp)
    gs = m.in_features if m.group_size in (-1, None) else m.group_size
    if n % MARLIN_MIN_N:
        return f"output {n} per GPU is not a multiple of marlin's min_thread_n {MARLIN_MIN_N}"
    if k % MARLIN_MIN_K:
        return f"input {k} per GPU is not a multiple of marlin's min_thread_k {MARLIN_MIN_K}"
    if gs < m.in_features and k % gs:
        return f"input {k} per GPU is not divisible by the group size {gs}"
    return None


def group_problem(m: ModuleQuant, tp: int) -> str | None:
    k, _ = shard(m, tp)
    if m.group_size not in (-1, None) and k % m.group_size:
        where = " per GPU" if tp > 1 and k != m.in_features else ""
        return f"group size {m.group_size} does not divide in_features {k}{where}"
    return None


def _names(mods) -> tuple[str, ...]:
    return tuple(m.name for m in mods)


def _compact(mods) -> str:
    """'model.layers.*.self_attn.q_proj (x30)' style summary of module names."""
    counts: dict[str, int] = {}
    for m in mods:
        key = re.sub(r"\.\d+\.", ".*.", m.name if isinstance(m, ModuleQuant) else m)
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} (x{v})" if v > 1 else k for k, v in counts.items())


def fused_findings(quantized: list[ModuleQuant], dense: list[ModuleQuant]) -> list[Finding]:
    """vLLM fuses q/k/v and gate/up into one layer: their shards must share one scheme."""
    by_name = {m.name: m for m in quantized + dense}
    out = []
    partial, mixed = [], []
    for fused, members in FUSED.items():
        prefixes = {m.rsplit(".", 1)[0] for m in by_name if _leaf(m) in members}
        for p in sorted(prefixes):
            shards = [by_name.get(f"{p}.{leaf}") for leaf in members]
            shards = [s for s in shards if s is not None]
            kinds = {(s.bits, s.group_size, s.sym) for s in shards}
            if len({s.quantized for s in shards}) > 1:
                partial.append(f"{p}.{fused}")
            elif len(kinds) > 1:
                mixed.append(f"{p}.{fused}")
    if partial:
        out.append(Finding("fused-partially-quantized", "blocker",
                           "vLLM fuses q/k/v into qkv_proj and gate/up into gate_up_proj, and refuses a fused "
                           "layer whose shards are partly quantized ('All shards of fused layers to have the "
                           f"same precision', quant_utils.is_layer_skipped): {_compact(partial)}", tuple(partial)))
    if mixed:
        out.append(Finding("fused-mixed-schemes", "blocker",
                           "shards of a fused layer (qkv_proj / gate_up_proj) use different bits, group sizes "
                           f"or symmetry; vLLM loads one scheme per fused layer: {_compact(mixed)}", tuple(mixed)))
    return out


def _dtype_findings(model_dtype: str | None, kernel: str, where: str) -> list[Finding]:
    if model_dtype == "bfloat16":
        return [Finding("bf16-model-fp16-kernel", "blocker",
                        f"the checkpoint's dtype is bfloat16 but {kernel} takes float16 activations only "
                        f"({where}); vLLM refuses bfloat16 for it, and `--dtype half` on a model trained in "
                        "bf16 risks fp16 overflow")]
    if model_dtype == "float32":
        return [Finding("fp32-model-fp16-kernel", "warning",
                        f"{kernel} takes float16 activations only ({where}): serve with `--dtype half`")]
    return []


def gptq_verdict(qc: dict, fmt: str, quantized: list[ModuleQuant], model_dtype: str | None,
                 tp: int, sm: int) -> VllmVerdict:
    bits, gs, sym = qc.get("bits"), qc.get("group_size"), qc.get("sym", True)
    findings: list[Finding] = []
    if bits not in (2, 3, 4, 8):
        return VllmVerdict("gptq", "none", "-", [Finding("gptq-bits", "blocker",
                           f"{bits}-bit GPTQ: vLLM's GPTQConfig takes 2/3/4/8 bits only")])
    marlin = (bits, bool(sym)) in MARLIN_TYPES and gs in MARLIN_GROUPS and sm >= 75
    v2 = fmt == "gptq-v2"
    if marlin:
        verdict = VllmVerdict("gptq_marlin", "machete (sm90) / marlin" if sm >= 90 else "marlin",
                              "float16 or bfloat16")
        odd = [m for m in quantized if (m.bits, m.sym) not in MARLIN_TYPES
               or (m.group_size not in MARLIN_GROUPS and m.group_size != m.in_features)]
        if odd:
            findings.append(Finding("dynamic-not-marlin", "blocker",
                                    "the base config selects gptq_marlin, and vLLM applies `dynamic` overrides "
                                    "inside it, but gptq_marlin takes only 4/8-bit symmetric layers with group "
                                    f"size in {list(MARLIN_GROUPS)}: {_compact(odd)}", _names(odd)))
        fallback = [(m, p) for m in quantized if (p := marlin_shape_problem(m, tp))]
        if fallback:
            findings.append(Finding("marlin-shape-fallback", "warning",
                                    "marlin cannot run some layers (" + fallback[0][1] + f"; {len(fallback)} layers: "
                                    f"{_compact([m for m, _ in fallback])}); vLLM falls back to the exllama kernel, "
                                    "float16 activations only", _names(m for m, _ in fallback)))
            findings += _dtype_findings(model_dtype, "the exllama fallback", "kernels/mixed_precision/exllama.py")
        if v2:
            findings.append(Finding("gptq-v2-zeros", "warning",
                                    "checkpoint_format gptq_v2 (true zero points): harmless on marlin, whose "
                                    "symmetric types carry their own zero, but vLLM's gptq kernel reads v2 only "
                                    "since PR #26092 (Oct 2025)"))
    else:
        verdict = VllmVerdict("gptq", "exllama / gptq_gemm", "float16 only")
        why = []
        if bits in (2, 3):
            findings.append(Finding(f"gptq-{bits}bit-no-marlin", "warning",
                                    f"{bits}-bit GPTQ has no marlin kernel (gptq_marlin TYPE_MAP holds 4/8-bit "
                                    "symmetric only): vLLM serves it with the slower gptq_gemm kernel, float16 only"))
        elif not sym:
            findings.append(Finding("gptq-asym-no-marlin", "warning",
                                    "asymmetric GPTQ (sym: false) has no marlin kernel (gptq_marlin TYPE_MAP holds "
                                    "symmetric types only): vLLM serves it with the gptq kernel, float16 only"))
        elif gs not in MARLIN_GROUPS:
            why.append(f"group size {gs} is not one of marlin's {list(MARLIN_GROUPS)}")
        elif sm < 75:
            why.append(f"marlin needs compute capability 7.5+, target is {sm / 10:.1f}")
        if why:
            findings.append(Finding("gptq-no-marlin", "warning", f"{why[0]}: vLLM uses the gptq kernel, float16 only"))
        findings += _dtype_findings(model_dtype, "vLLM's gptq kernel", "gptq.py get_supported_act_dtypes")
        if v2:
            findings.append(Finding("gptq-v2-zeros", "blocker",
                                    "checkpoint_format gptq_v2 stores true zero points, and this configuration "
                                    "runs on vLLM's gptq kernel, which honours v2 only since PR #26092 (merged "
                                    "Oct 2025): older vLLM reads them as v1 (zero - 1) and serves garbage. Use a "
                                    "recent vLLM or convert the qzeros to v1 (zero - 1, needs every zero >= 1)"))
        pack = 32 if bits == 3 else 32 // bits
        bad_out = [m for m in quantized if shard(m, tp)[1] % pack]
        if bad_out:
            findings.append(Finding("gptq-output-shape", "blocker",
                                    f"output features per GPU must be a multiple of {pack} for {bits}-bit "
                                    f"(gptq.py create_weights): {_compact(bad_out)}", _names(bad_out)))
    bad_group = [(m, p) for m in quantized if (p := group_problem(m, tp))]
    if bad_group:
        findings.append(Finding("group-size-shape", "blocker",
                                f"{bad_group[0][1]} ({_compact([m for m, _ in bad_group])}); vLLM's GPTQ "
                                "parameters need whole groups per GPU", _names(m for m, _ in bad_group)))
    verdict.findings = findings
    return verdict


def awq_verdict(qc: dict, fmt: str, quantized: list[ModuleQuant], model_dtype: str | None,
                tp: int, sm: int) -> VllmVerdict:
    from .awq_gemm import config_bits, config_group_size, config_version

    bits, gs, zp = config_bits(qc), config_group_size(qc), qc.get("zero_point", True)
    version = config_version(qc)
    if version != "gemm":
        return VllmVerdict("awq", "none", "-", [Finding(
            "awq-gemv", "blocker",
            f"AWQ version {version!r}: vLLM's awq and awq_marlin allocate GEMM-shaped tensors (qweight "
            "[in, out/8]) and have no GEMV reader, so loading fails on shapes; re-export with version 'gemm'")])
    findings: list[Finding] = []
    marlin = bits == 4 and bool(zp) and gs in MARLIN_GROUPS and sm >= 80
    if bits != 4:
        findings.append(Finding("awq-bits", "blocker",
                                f"{bits}-bit AWQ: the awq kernel takes 4 bits only (awq.py) and awq_marlin has no "
                                "8-bit type with zero points (marlin_utils: uint4 only)"))
    if not zp:
        findings.append(Finding("awq-no-zero-point", "blocker",
                                "zero_point: false: awq_marlin needs zero points for uint4 and the awq kernel "
                                "expects qzeros tensors this checkpoint does not have"))
    if marlin:
        verdict = VllmVerdict("awq_marlin", "marlin", "float16 or bfloat16")
        fallback = [(m, p) for m in quantized if (p := marlin_shape_problem(m, tp))]
        if fallback:
            findings.append(Finding("marlin-shape-fallback", "warning",
                                    "marlin cannot run some layers (" + fallback[0][1] + f"; {len(fallback)} layers: "
                                    f"{_compact([m for m, _ in fallback])}); vLLM falls back to the awq kernel for "
                                    "them, float16 activations only", _names(m for m, _ in fallback)))
            findings += _dtype_findings(model_dtype, "the fp16-only awq kernel", "awq.py get_supported_act_dtypes")
        elif model_dtype == "bfloat16":
            findings.append(Finding("awq-bf16-older-gpus", "warning",
                                    "bfloat16 checkpoint: fine on awq_marlin (compute capability 8.0+), but GPUs "
                                    "below 8.0 (T4) get the fp16-only awq kernel"))
    else:
        verdict = VllmVerdict("awq", "awq (GEMM)", "float16 only")
        if bits == 4 and zp:
            why = (f"group size {gs} is not one of marlin's {list(MARLIN_GROUPS)}" if gs not in MARLIN_GROUPS
                   else f"awq_marlin needs compute capability 8.0+, target is {sm / 10:.1f}")
            findings.append(Finding("awq-no-marlin", "warning", f"{why}: vLLM uses the awq kernel"))
        findings += _dtype_findings(model_dtype, "the fp16-only awq kernel", "awq.py get_supported_act_dtypes")
    bad_group = [(m, p) for m in quantized if (p := group_problem(m, tp))]
    if bad_group:
        findings.append(Finding("group-size-shape", "blocker",
                                f"{bad_group[0][1]} ({_compact([m for m, _ in bad_group])})",
                                _names(m for m, _ in bad_group)))
    verdict.findings = findings
    return verdict


def ct_verdict(qc: dict, fmt: str, quantized: list[ModuleQuant], model_dtype: str | None,
               tp: int, sm: int) -> VllmVerdict:
    findings: list[Finding] = []
    if fmt != "ct-pack-quantized":
        return VllmVerdict("compressed-tensors", "?", "?", [Finding(
            "ct-format", "warning", f"{fmt}: this pre-flight covers pack-quantized (W4A16/W8A16) only")])
    verdict = VllmVerdict("compressed-tensors", "machete (sm90) / marlin" if sm >= 90 else "marlin",
                          "float16 or bfloat16")
    no_marlin = [m for m in quantized if (m.bits == 8 and not m.sym) or m.group_size not in (*MARLIN_GROUPS, None)]
    asym8 = [m for m in quantized if m.bits == 8 and not m.sym]
    if asym8 and sm < 90:
        findings.append(Finding("ct-w8-asym", "blocker",
                                "asymmetric 8-bit weights (uint8 with zero points): marlin supports zero points "
                                "for uint4 only and exllama takes no zero points; only machete (Hopper, 9.0) "
                                f"implements it: {_compact(asym8)}", _names(asym8)))
    fallback = [(m, p) for m in quantized if m not in no_marlin and (p := marlin_shape_problem(m, tp))]
    fallback += [(m, f"group size {m.group_size} is not one of marlin's {list(MARLIN_GROUPS)}")
                 for m in no_marlin if m not in asym8]
    if fallback:
        findings.append(Finding("marlin-shape-fallback", "warning",
                                "marlin cannot run some layers (" + fallback[0][1] + f"; {len(fallback)} layers: "
                                f"{_compact([m for m, _ in fallback])}); vLLM falls back to exllama, float16 "
                                "activations only and symmetric weights only", _names(m for m, _ in fallback)))
        if any(not m.sym for m, _ in fallback):
            findings.append(Finding("ct-asym-fallback", "blocker",
                                    "asymmetric layers that marlin cannot run have no other kernel (exllama is "
                                    "symmetric only)"))
        findings += _dtype_findings(model_dtype, "the exllama fallback", "kernels/mixed_precision/exllama.py")
    bad_group = [(m, p) for m in quantized if (p := group_problem(m, tp))]
    if bad_group:
        findings.append(Finding("group-size-shape", "blocker", f"{bad_group[0][1]} "
                                f"({_compact([m for m, _ in bad_group])})", _names(m for m, _ in bad_group)))
    verdict.findings = findings
    return verdict


def bnb_verdict(qc: dict, fmt: str, quantized: list[ModuleQuant], model_dtype: str | None,
                tp: int, sm: int) -> VllmVerdict:
    findings = []
    storage = str(qc.get("bnb_4bit_quant_storage", "uint8")).removeprefix("torch.")
    if fmt != "bnb-int8" and storage != "uint8":
        findings.append(Finding("bnb-quant-storage", "blocker",
                                f"bnb_4bit_quant_storage {storage}: vLLM's BitsAndBytesConfig accepts uint8 only"))
    if sm < 70:
        findings.append(Finding("bnb-capability", "blocker", "bitsandbytes in vLLM needs compute capability 7.0+"))
    findings.append(Finding("bnb-bf16-compute", "warning",
                            "vLLM's bitsandbytes path casts activations to bfloat16 for the matmuls (and keeps "
                            "LLM.int8's int8 activation quantization); it is the slowest of vLLM's weight-only "
                            "kernels"))
    return VllmVerdict("bitsandbytes", "bitsandbytes", "float32, float16 or bfloat16", findings)


def vllm_verdict(method: str, fmt: str, qc: dict, quantized: list[ModuleQuant], dense: list[ModuleQuant],
                 model_dtype: str | None, tp: int = 1, sm: int = 80) -> VllmVerdict:
    """The verdict of the checkpoint's format (table.FORMATS[method].vllm_verdict), with the
    checks every quantized format shares: fused layers' schemes, tensor-parallel splits."""
    from .table import FORMATS

    if method == "gguf":
        return VllmVerdict("gguf", "gguf", "float16 or bfloat16", [Finding(
            "gguf", "warning", "vLLM's GGUF support is experimental and single-file only")])
    if method not in FORMATS:
        return VllmVerdict(method, "?", "?", [Finding("unknown-method", "warning", f"no rules for {method!r}")])
    fn = FORMATS[method].vllm_verdict
    if method == "none":
        return fn(qc, fmt, quantized, model_dtype, tp, sm)
    verdict = fn(qc, fmt, quantized, model_dtype, tp, sm)
    verdict.findings += fused_findings(quantized, dense)
    if tp > 1:
        uneven = [m for m in quantized + dense if _leaf(m.name) != "lm_head"  # the vocab is padded
                  and (m.in_features if _leaf(m.name) in ROW_PARALLEL else m.out_features) % tp]
        if uneven:
            verdict.findings.append(Finding("tp-uneven", "blocker", f"tensor parallel {tp} does not split "
                                            f"{_compact(uneven)} evenly", _names(uneven)))
    return verdict
