"""Checks a recipe can run, without loading model weights: files exist, the model's config is
readable, and every quantized layer's shape suits its bits and group size."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .errors import UserError
from .loading.sources import ModelSource, load_config, resolve_source
from .recipe import Recipe
from .quantize.config import WeightOnlyVariant

log = logging.getLogger("llmquant")


@dataclass
class PreflightReport:
    source: ModelSource
    notes: list[str] = field(default_factory=list)
    peers: dict = field(default_factory=dict)  # backend -> peers.interpreter.Peer, for variants a peer quantizes
    plan: object | None = None  # plan.Plan: each step's memory and disk against this machine


def _check_dataset(recipe: Recipe, section: str) -> None:
    from .data import HUB_DATASETS

    spec = getattr(recipe, section).dataset
    src = spec.source
    if src.startswith("builtin:") or src in HUB_DATASETS:
        return
    path = recipe.resolve(src)
    if not path.is_file():
        raise UserError(f"{recipe.path}: {section}.dataset.source: {path} not found")
    if path.stat().st_size == 0:
        raise UserError(f"{recipe.path}: {section}.dataset.source: {path} is empty")


def meta_model(config):
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # built on the meta device, the head is not tied to the embeddings yet
    return model


def shape_targets(model, variant) -> dict[str, tuple[object, int, int | None]]:
    """name -> (Linear, bits, group size) of the layers a variant quantizes: the recipe's targets
    for weight-only variants; every Linear at the variant's bits for the others (bitsandbytes)."""
    from torch import nn

    from .quantize.targets import target_linears

    if isinstance(variant, WeightOnlyVariant):
        return {name: (lin, s.bits, s.group_size) for name, (lin, s) in target_linears(model, variant).items()}
    bits, group = getattr(variant, "bits", None), getattr(variant, "group_size", None)
    return {name: (m, bits, group) for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def check_shapes(recipe: Recipe, model) -> None:
    """Every quantized layer's shape against its format's rules (FORMATS[...].shape_problem)."""
    from .formats.table import FORMATS
    from .quantize import checkpoint_format
    from .quantize.targets import allowed_group_sizes

    for i, v in enumerate(recipe.variants):
        if not hasattr(v, "bits"):
            continue  # chooses bits per layer itself (method mixed): its METHODS check covers the shapes
        shape_problem = FORMATS[checkpoint_format(v)].shape_problem
        targets = shape_targets(model, v)
        if not targets and isinstance(v, WeightOnlyVariant):
            raise UserError(f"{recipe.path}: variants[{i}]: no Linear layers left to quantize (all skipped by overrides)")
        in_features = {lin.in_features for lin, _, _ in targets.values()}
        for name, (lin, bits, group_size) in targets.items():
            problem = shape_problem(lin.in_features, lin.out_features, bits, group_size)
            if problem:
                field_name = "group_size" if "group size" in problem else "bits"
                raise UserError(
                    f"{recipe.path}: variants[{i}].{field_name}: {problem} ({name}); "
                    + (f"allowed here: {allowed_group_sizes(in_features)}" if field_name == "group_size"
                       else "choose other bits for this layer with an override")
                )


def check_packages(recipe: Recipe) -> None:
    """Packages a variant's method needs, before anything is loaded."""
    import importlib.util

    from .quantize import METHODS

    for i, v in enumerate(recipe.variants):
        entry = METHODS[v.method]
        missing = [p for p in entry.requires if importlib.util.find_spec(p) is None]
        if missing:
            raise UserError(f"{recipe.path}: variants[{i}].method: {v.method!r} needs {', '.join(missing)}: "
                            f"{entry.install or 'pip install ' + ' '.join(missing)}")


def check_methods(recipe: Recipe, config, model) -> None:
    """Method-specific checks on the architecture (METHODS[...].check), e.g. AWQ's mapping table."""
    import importlib

    from .quantize import METHODS

    for i, v in enumerate(recipe.variants):
        ref = METHODS[v.method].check
        if ref is None:
            continue
        module_name, fn = ref.split(":")
        problem = getattr(importlib.import_module(module_name), fn)(v, getattr(config, "model_type", None), model)
        if problem:
            raise UserError(f"{recipe.path}: variants[{i}] ({v.name}): {problem}")


def preflight(recipe: Recipe) -> PreflightReport:
    from .peers.interpreter import check_peers

    check_packages(recipe)
    peers, peer_notes = check_peers(recipe)
    try:
        src = resolve_source(recipe.model.source, recipe.base_dir, recipe.model.gguf_file, recipe.model.revision)
    except UserError as e:
        raise UserError(f"{recipe.path or '<recipe>'}: {e}") from None
    report = PreflightReport(src, list(peer_notes), peers)
    _check_dataset(recipe, "eval")
    if recipe.calibration is not None:
        _check_dataset(recipe, "calibration")
    try:
        config = load_config(src, recipe.model.trust_remote_code)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{recipe.path}: model.source: cannot read the model's config ({str(e).splitlines()[0]})") from None
    if config is None:
        report.notes.append("model config not available offline: layer shapes not checked")
        return report
    model = meta_model(config)
    check_methods(recipe, config, model)  # architecture support first: it explains shape problems too
    check_shapes(recipe, model)
    report.plan = plan_steps(recipe, src, config, model)
    return report


def plan_steps(recipe: Recipe, src, config, model):
    """The memory and disk plan (llmquant plan); None where the model's blocks cannot be found."""
    from .plan import plan_from_config

    try:
        return plan_from_config(recipe, src.label, config, model, src.path if src.kind == "hf-dir" else None,
                                gguf=src.kind == "gguf")
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        # e.g. decoder blocks not where find_blocks looks, a config without vocab_size: the plan
        # is advice, so the run goes on without it
        log.warning("%s: no memory plan for this model (%s: %s)", recipe.path, type(e).__name__, e)
        return None


def plan_summary(plan) -> str:
    """One line: the largest step by host memory, and the quantize time where it is estimated."""
    from .plan.build import gib
    from .plan.timing import duration

    top = max(plan.steps, key=lambda s: s.host)
    timed = [s for s in plan.steps if s.seconds is not None]
    took = ""
    if timed:
        took = f"; quantizing {duration(sum(s.seconds for s in timed), any(s.seconds_upper for s in timed))}"
    return (f"plan: fits this machine (largest step: {top.name}, ~{gib(top.host)} of {gib(plan.machine.ram_total)} "
            f"RAM{took}; estimates, see llmquant plan)")


def check_plan(recipe: Recipe, report: PreflightReport) -> None:
    """Stop before anything is loaded when a step cannot fit this machine (one line: the first
    step that does not, and what would); steps that fit only what is free now are noted."""
    plan = report.plan
    if plan is None:
        return
    for s in plan.steps:
        if s.warning:
            report.notes.append(f"plan: {s.name}: {s.warning} (estimate)")
    if not plan.problems:
        report.notes.append(plan_summary(plan))
    if plan.problems:
        more = f" (and {len(plan.problems) - 1} more: llmquant plan {recipe.path or '<recipe>'})" \
            if len(plan.problems) > 1 else ""
        raise UserError(f"{recipe.path}: will not fit this machine: {plan.problems[0]}{more}; "
                        "set LLMQUANT_SKIP_PLAN=1 to run anyway")
