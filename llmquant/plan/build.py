"""The plan of a recipe: each step's estimated peak host memory, GPU memory and disk, against
this machine, from the model's config (and tensor headers where present) only.

    plan = plan_recipe(recipe, source, config, meta_model, machine)
    plan.problems        # one line per step that cannot fit, saying what would
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from . import memory as mem
from .footprint import Footprint
from .machine import Machine
from .packing import checkpoint_bytes, save_bytes

GiB = mem.GiB


@dataclass
class Step:
    name: str
    host: int  # peak bytes
    device: int | None = None  # peak GPU bytes (None: nothing on a GPU)
    disk: int = 0  # bytes this step leaves (or spills) on disk
    terms: dict[str, int] = field(default_factory=dict)  # what the host peak is made of
    problem: str | None = None  # why it cannot fit, and what would
    warning: str | None = None
    note: str | None = None
    seconds: float | None = None  # estimated wall time (plan/timing.py), where measured on such a CPU
    seconds_upper: bool = False  # the time is an upper bound


@dataclass
class Plan:
    model: str
    footprint: Footprint
    machine: Machine
    device: str
    dtype: str
    steps: list[Step]
    disk_problem: str | None = None

    @property
    def problems(self) -> list[str]:
        out = [f"{s.name}: {s.problem}" for s in self.steps if s.problem]
        return out + ([self.disk_problem] if self.disk_problem else [])

    @property
    def disk_total(self) -> int:
        return sum(s.disk for s in self.steps)


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def calibration_of(recipe) -> mem.Calibration | None:
    c = recipe.calibration
    if c is None:
        return None
    return mem.Calibration(c.n_samples, c.seqlen, 2 if c.activation_dtype == "bfloat16" else 4,
                           c.activation_budget_mb << 20)


def options_of(variant, calib: mem.Calibration | None, device: str = "cpu") -> mem.QuantizeOptions:
    chunk = getattr(variant, "max_chunk_memory_mb", 1024) << 20
    samples = getattr(variant, "search_samples", None)
    tokens = samples * calib.seqlen if (samples and calib) else None
    gradients = getattr(variant, "fisher_samples", 0) if getattr(variant, "weighting", None) == "fisher" else 0
    tune = min(getattr(variant, "batch_size", 0), calib.n_samples) if calib else 0  # SignRound's samples per step
    return mem.QuantizeOptions(max_chunk_bytes=chunk, search_tokens=tokens,
                               gradient_sequences=min(gradients, calib.n_samples) if calib else 0,
                               tune_samples=tune,
                               solve_bytes=8 if solver_options(variant, device).get("precision") == "float64" else 4)


def solver_options(variant, device: str) -> dict[str, str]:
    """The GPTQ solver settings that change its time (plan.timing.SLOWER_OPTIONS) and memory, `auto` resolved."""
    from ..quantize.gptq.config import solve_dtype

    precision, grid = getattr(variant, "precision", None), getattr(variant, "grid", None)
    out = {"grid": grid} if grid else {}
    if precision:
        out["precision"] = str(solve_dtype(precision, device)).removeprefix("torch.")
    return out


def saved_dtype(variant, model: nn.Module) -> str:
    """The dtype a quantized checkpoint keeps its dense tensors in: the writer's own rule."""
    from ..formats.checkpoint import save_dtype

    return str(save_dtype(model, getattr(variant, "save_dtype", "auto"))).removeprefix("torch.")


def _dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def quantize_step(fp: Footprint, ckpt: int, variant, recipe, device: str, own_loader: bool) -> Step:
    """`ckpt`: the bytes of the checkpoint it writes (packing.checkpoint_bytes)."""
    from ..quantize import METHODS

    needs = METHODS[variant.method].needs_calibration
    calib = calibration_of(recipe) if needs else None
    method = "peer" if own_loader else variant.method
    opts = options_of(variant, calib, device)
    on_gpu = device.startswith("cuda")
    terms = mem.quantize_host(fp, method, calib, opts, on_gpu=on_gpu, save_bytes=save_bytes(variant))
    step = Step(f"quantize {variant.name}", mem.total(terms), disk=ckpt + mem.spill_bytes(fp, calib), terms=terms)
    if not on_gpu and not own_loader:
        from ..cpu import cpu_info
        from .timing import quantize_seconds

        info = cpu_info()
        t = quantize_seconds(variant.method, fp.block_params, fp.layers, calib.tokens if calib else 0, info.model,
                             info.capability, options=solver_options(variant, device))
        if t is not None:
            step.seconds, step.seconds_upper = t.seconds, t.upper
            bounds = ["linearly in tokens"] * t.by_tokens + [f"x{t.factor:.2f} for the solver options"] * (t.factor > 1)
            step.note = f"time scaled from {t.source}" + (f" ({', '.join(bounds)}: an upper bound)" if bounds else "")
    if on_gpu:
        step.device = mem.total(mem.quantize_device(fp, method, calib, opts))
    return step


def eval_step(name: str, fp: Footprint, recipe, device: str, dtype: str, packed: int | None,
              unpacked: int, stored: str) -> Step:
    """`stored`: the dtype of the checkpoint's dense tensors. A 16-bit CPU evaluation re-scores its
    first windows in float32: from a float32 copy of the model unless the checkpoint is stored in
    one 16-bit dtype (then module by module: eval/upcast.py)."""
    ev = recipe.eval
    d = _dtype_bytes(dtype)
    checks = ev.check_windows > 0 and dtype != "float32" and not device.startswith("cuda") and stored == "float32"
    load = 4 if checks else d
    terms = mem.eval_terms(fp, packed, unpacked, load, d, ev.seqlen, ev.batch_size, ev.isolate)
    step = Step(f"evaluate {name}", mem.total(terms), terms=terms)
    if device.startswith("cuda"):  # loaded on the host at the compute dtype, then moved
        gpu = {k: v for k, v in terms.items() if k not in ("process", mem.PACKED_SETUP)}  # measured on a CPU
        step.device = mem.total({"CUDA context": mem.CUDA_CONTEXT_BYTES, **gpu})
        weights = {k: v for k, v in terms.items() if k in ("weights", "packed weights", "embeddings, head, norms")}
        step.host = mem.total({"process": terms["process"], **weights})
    if checks:
        lighter = mem.eval_terms(fp, packed, unpacked, d, d, ev.seqlen, ev.batch_size, ev.isolate)
        step.terms["(eval.check_windows: 0 would need)"] = mem.total(lighter)
    return step


def serve_step(fp: Footprint, recipe, device: str, dtype: str, packed: int | None, unpacked: int,
               ckpt: int, name: str, machine: Machine) -> Step:
    """Serving the largest variant: the built-in server as the evaluation loads it, with one
    request of serve.local.max_tokens; vLLM (engine vllm, or auto on a GPU with vLLM installed):
    serve/fit.py's arithmetic on the machine's GPUs, the same as `llmquant serve`'s fit check."""
    if vllm_engine(recipe, device):
        return vllm_step(fp, recipe, ckpt, name, machine)
    tokens = recipe.serve.local.max_tokens + recipe.eval.latency.prompt_tokens
    terms = mem.local_serve_terms(fp, packed, unpacked, _dtype_bytes(dtype), tokens)
    return Step(f"serve {name} (built-in server)", mem.total(terms), terms=terms)


def vllm_engine(recipe, device: str) -> bool:
    import importlib.util

    engine = recipe.serve.engine
    return engine == "vllm" or (engine == "auto" and device.startswith("cuda")
                                and importlib.util.find_spec("vllm") is not None)


VLLM_HOST_BYTES = 4 * GiB  # the vLLM server process on the host (an allowance, not measured here)


def vllm_step(fp: Footprint, recipe, ckpt: int, name: str, machine: Machine) -> Step:
    from ..errors import UserError
    from ..serve.fit import GpuMemory, ModelShape, WeightBytes, plan_fit
    from ..serve.vllm import fit_request, gpus_for

    spec = recipe.serve.vllm
    per_layer = max(0, ckpt - fp.outer_params * 2) // fp.layers
    shape = ModelShape(fp.layers, fp.heads, fp.kv_heads, fp.head_dim, fp.hidden, fp.intermediate, fp.vocab,
                       fp.max_positions, fp.head_params == 0)
    weights = WeightBytes(fp.embed_params * 2, fp.head_params * 2, fp.other_params * 2, (per_layer,) * fp.layers)
    step = Step(f"serve {name} (vLLM)", mem.total({"vLLM process": VLLM_HOST_BYTES}),
                terms={"vLLM process": VLLM_HOST_BYTES})
    gpus = gpus_for(spec, [GpuMemory(g.total, g.free) for g in machine.gpus])
    try:
        fit = plan_fit(shape, weights, gpus, fit_request(spec, 2))
    except UserError as e:
        step.problem = str(e)
        return step
    worst = fit.worst
    step.device = worst.weights + worst.overhead + fit.kv_needed(worst)
    step.note = "vLLM fit: " + fit.describe()
    return step


def check_fit(step: Step, machine: Machine, device: str, dtype: str) -> None:
    """Set step.problem (cannot fit: host or GPU memory above what the machine has) or
    step.warning (above what is free now)."""
    reasons = [step.problem] if step.problem else []
    if step.host > machine.ram_total:
        reasons.append(f"needs ~{gib(step.host)} of host memory, this machine has {gib(machine.ram_total)}"
                       + host_hint(step, device, dtype))
    elif step.host > machine.ram_available:
        step.warning = f"needs ~{gib(step.host)}; {gib(machine.ram_available)} is free now"
    if step.device is not None:
        if not machine.gpus:
            reasons.append(f"needs a GPU with ~{gib(step.device)}; none is visible")
        elif step.device > machine.gpus[0].total and not step.name.endswith("(vLLM)"):
            reasons.append(f"needs ~{gib(step.device)} of GPU memory, GPU 0 has {gib(machine.gpus[0].total)}; "
                           f"a GPU with {gib(step.device)} would fit")
    step.problem = "; and ".join(reasons) or None


def host_hint(step: Step, device: str, dtype: str) -> str:
    lighter = step.terms.get("(eval.check_windows: 0 would need)")
    if lighter is not None:
        return f"; with eval.check_windows: 0 it would need ~{gib(lighter)} (no float32 copy)"
    if step.name.startswith(("evaluate", "serve")):
        if dtype == "float32":
            return "; model.dtype: bfloat16 would halve the weights"
        return "; a machine with more memory (the weights are loaded on the host first)"
    if step.name.startswith("quantize") and not device.startswith("cuda"):
        return ("; lower calibration.activation_budget_mb or calibration.n_samples, "
                "or quantize on a GPU (model.device: cuda)")
    return ""


def load_step(fp: Footprint, gguf: bool) -> Step:
    """The tokenizer and skeleton; a GGUF source is first de-quantized whole to float32 and saved
    as the run's base model (loading.materialize_base)."""
    terms = {"process": mem.PROCESS_BYTES}
    if not gguf:
        return Step("load (tokenizer, skeleton)", mem.total(terms), terms=terms)
    terms["de-quantized model (float32)"] = fp.total_params * 4
    return Step("load (de-quantize the GGUF)", mem.total(terms), disk=fp.total_params * 4, terms=terms)


def plan_recipe(recipe, label: str, config, model: nn.Module, machine: Machine, device: str,
                dtype: str, stored: tuple[float, str, int] | None, gguf: bool = False) -> Plan:
    """The steps of `recipe` for the (meta) `model` built from `config` on `machine`."""
    from ..quantize import loads_own_model
    from .footprint import footprint

    fp = footprint(model, config, *(stored or (None, None, None)))
    steps = [load_step(fp, gguf)]
    steps.append(eval_step("baseline", fp, recipe, device, dtype, None, fp.total_params, fp.stored_dtype))
    largest: tuple[int, int, str] | None = None
    for variant in recipe.variants:
        # a variant sized per layer is sized as its largest uniform case; its method plans the work
        v = getattr(variant, "sized_as", lambda: variant)()
        ckpt, _ = checkpoint_bytes(model, v)
        steps.append(quantize_step(fp, ckpt, variant, recipe, device, loads_own_model(v)))
        held, unpacked = checkpoint_bytes(model, v, resident=True)
        packed = held - unpacked * save_bytes(v)
        steps.append(eval_step(v.name, fp, recipe, device, dtype, packed, unpacked, saved_dtype(v, model)))
        if largest is None or packed > largest[0]:
            largest = (packed, unpacked, v.name, ckpt)
    if recipe.serve.after_run != "none" and largest is not None:
        packed, unpacked, name, ckpt = largest
        steps.append(serve_step(fp, recipe, device, dtype, packed, unpacked, ckpt, name, machine))
    for s in steps:
        check_fit(s, machine, device, dtype)
    plan = Plan(label, fp, machine, device, dtype, steps)
    if plan.disk_total > machine.disk_free:
        plan.disk_problem = (f"disk: the run writes ~{gib(plan.disk_total)} (checkpoints and spilled activations), "
                             f"the run directory's disk has {gib(machine.disk_free)} free")
    return plan
