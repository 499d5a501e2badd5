"""`kind: classic` recipes: typed sections for classifier quantization.

Like LLM recipes, every section forbids unknown keys and errors name their YAML path.
`llmquant.recipe.load_recipe` dispatches here when the document has `kind: classic`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from ..errors import UserError
from ..schema import OutputSpec, RecipePaths, Strict, check_name, describe, yaml_path

METHOD_NAMES = ("dynamic", "static", "qat", "cast", "mixed", "onnx_fp32", "onnx_dynamic", "onnx_static")
ONNX_METHODS = ("onnx_fp32", "onnx_dynamic", "onnx_static")
BUILTIN_DATA = ("builtin:digits",)


def _check_patterns(v: list[str]) -> list[str]:
    for p in v:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"{p!r} is not a valid regular expression ({e})") from None
    return v


class TrainSpec(Strict):
    """Train a factory model from scratch on the training split before quantizing (demos, tests)."""

    epochs: int = Field(5, ge=1, le=1000)
    lr: float = Field(1e-3, gt=0, le=10)
    batch_size: int = Field(64, ge=1)
    seed: int = 0


class ClassicModelSpec(Strict):
    """Exactly one of `hf`, `factory`, `onnx`."""

    hf: str | None = Field(None, description="HF sequence-classification directory (BERT-like)")
    factory: str | None = Field(None, description="'module:function' returning an nn.Module")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")
    weights: str | None = Field(None, description="state_dict file (.pt/.pth/.bin, weights_only) or .safetensors")
    train: TrainSpec | None = None
    onnx: str | None = Field(None, description="an .onnx file (only the onnx_* methods apply)")
    tokenizer: str | None = Field(None, description="tokenizer directory for text data with a factory or ONNX model")

    @field_validator("factory")
    @classmethod
    def _entry_point(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError("must be 'package.module:function'")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "ClassicModelSpec":
        given = [k for k in ("hf", "factory", "onnx") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of hf (directory), factory ('module:function') or onnx (file); "
                             f"got {', '.join(given) or 'none'}")
        if not self.factory and (self.weights or self.train or self.kwargs):
            raise ValueError("weights, train and kwargs go with factory only")
        if self.factory and bool(self.weights) == bool(self.train):
            raise ValueError("a factory needs exactly one of weights (a state_dict file) or "
                             "train (train from scratch on the training split)")
        return self

    @property
    def kind(self) -> str:
        return "hf" if self.hf else "factory" if self.factory else "onnx"


class ClassicDataSpec(Strict):
    """A labelled dataset: .npz (x/y arrays), MNIST idx images + labels, .jsonl (text/label), builtin:digits."""

    source: str
    labels: str | None = Field(None, description="idx labels file, with an idx images source")
    x_key: str = "x"
    y_key: str = "y"
    text_field: str = "text"
    label_field: str = "label"
    max_length: int = Field(128, ge=4, le=8192, description="tokens per text (padded/truncated)")
    mean: list[float] | None = None
    std: list[float] | None = None
    limit: int | None = Field(None, ge=10, description="use only the first N samples")
    validation: float = Field(0.2, gt=0, description="fraction (< 1) or number of samples held out for validation")
    calibration: int = Field(256, ge=100, le=1000, description="calibration samples drawn from the training split")
    seed: int = 0

    @field_validator("std")
    @classmethod
    def _positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(s <= 0 for s in v):
            raise ValueError("every std must be > 0")
        return v

    @field_validator("validation")
    @classmethod
    def _fraction_or_count(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError("must be a fraction below 1 or a whole number of samples")
        return v

    @model_validator(mode="after")
    def _pairs(self) -> "ClassicDataSpec":
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.mean is not None and len(self.mean) != len(self.std):
            raise ValueError("mean and std need the same number of channels")
        return self

    @property
    def is_text(self) -> bool:
        return self.source.endswith(".jsonl")


class ClassicLatencySpec(Strict):
    warmup: int = Field(10, ge=0)
    repeats: int = Field(100, ge=5)


class ValidationSpec(Strict):
    batch_size: int = Field(64, ge=2, description="accuracy and throughput batch")
    latency: ClassicLatencySpec = ClassicLatencySpec()
    compile: bool = Field(True, description="run every torch variant (baseline too) through torch.compile")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch and ONNX Runtime")


class ClassicVariantBase(Strict):
    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)


class SkipMixin(Strict):
    skip: list[str] = Field(default_factory=list, description="regexes on module names kept in float")

    @field_validator("skip")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        return _check_patterns(v)


class DynamicVariant(ClassicVariantBase, SkipMixin):
    """INT8 weights, activations quantized per row at run time (torchao); Linear layers."""

    method: Literal["dynamic"]


class StaticVariant(ClassicVariantBase, SkipMixin):
    """INT8 weights and activations with ranges from the calibration split (pt2e, X86 inductor quantizer)."""

    method: Literal["static"]


class QATVariant(ClassicVariantBase, SkipMixin):
    """Fake-quantized fine-tuning on the training split, then converted like static."""

    method: Literal["qat"]
    epochs: int = Field(3, ge=1, le=1000)
    lr: float = Field(1e-4, gt=0, le=1)
    batch_size: int = Field(64, ge=1)
    seed: int = 0


class CastVariant(ClassicVariantBase):
    method: Literal["cast"]
    dtype: Literal["float16", "bfloat16"] = "float16"


class MixedVariant(ClassicVariantBase):
    """Static or dynamic INT8 that keeps chosen and/or the most sensitive layers in float."""

    method: Literal["mixed"]
    base: Literal["static", "dynamic"] = "static"
    keep_float: list[str] = Field(default_factory=list, description="regexes on module names kept in float")
    keep_most_sensitive: int = Field(0, ge=0, description="also keep the N layers whose quantization hurts most")
    sensitivity: Literal["output_error", "accuracy"] = "output_error"

    @field_validator("keep_float")
    @classmethod
    def _regexes(cls, v: list[str]) -> list[str]:
        return _check_patterns(v)

    @model_validator(mode="after")
    def _something_kept(self) -> "MixedVariant":
        if not self.keep_float and self.keep_most_sensitive == 0:
            raise ValueError("give keep_float patterns and/or keep_most_sensitive > 0")
        return self


class OnnxFp32Variant(ClassicVariantBase):
    method: Literal["onnx_fp32"]


class OnnxDynamicVariant(ClassicVariantBase):
    method: Literal["onnx_dynamic"]
    per_channel: bool = False


class OnnxStaticVariant(ClassicVariantBase):
    method: Literal["onnx_static"]
    per_channel: bool = True
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    op_types: list[str] = Field(default_factory=lambda: ["Conv", "MatMul", "Gemm"], min_length=1, description=(
        "ONNX op types to quantize; the default leaves adds, norms and softmax in float (quantizing a "
        "transformer's attention-mask add breaks it)"))


ClassicVariant = Annotated[
    Union[DynamicVariant, StaticVariant, QATVariant, CastVariant, MixedVariant, OnnxFp32Variant,
          OnnxDynamicVariant, OnnxStaticVariant],
    Field(discriminator="method"),
]


class ClassicSelectSpec(Strict):
    policy: Literal["fastest_within", "smallest_within", "best_accuracy"] = "fastest_within"
    max_loss_pts: float = Field(1.0, ge=0, description="accuracy loss allowed, in points")


class ClassicRecipe(Strict, RecipePaths):
    kind: Literal["classic"]
    name: str | None = None
    description: str | None = None
    model: ClassicModelSpec
    data: ClassicDataSpec
    validation: ValidationSpec = ValidationSpec()
    variants: list[ClassicVariant] = []
    select: ClassicSelectSpec = ClassicSelectSpec()
    output: OutputSpec = OutputSpec()

    _path: Path | None = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v)

    @model_validator(mode="after")
    def _cross_checks(self) -> "ClassicRecipe":
        seen: dict[str, int] = {}
        for i, v in enumerate(self.variants):
            if v.name in seen or v.name == "baseline":
                where = f"variants[{seen[v.name]}]" if v.name in seen else "the baseline"
                raise ValueError(f"variants[{i}].name: {v.name!r} is already used by {where}; names must be unique")
            seen[v.name] = i
            if self.model.onnx and v.method not in ("onnx_dynamic", "onnx_static"):
                raise ValueError(f"variants[{i}].method: {v.method!r} needs a PyTorch model; an onnx model "
                                 "supports onnx_dynamic and onnx_static")
        if self.data.is_text and self.model.kind != "hf" and not self.model.tokenizer:
            raise ValueError("model.tokenizer: text data needs a tokenizer: use an hf model or give model.tokenizer")
        return self


def _drop_tags(loc: tuple) -> tuple:
    """('variants', 0, 'static', 'skip') -> ('variants', 0, 'skip'): the union tag is not a YAML key."""
    out: list = []
    for i, part in enumerate(loc):
        if i and isinstance(loc[i - 1], int) and part in METHOD_NAMES and out and out[0] == "variants":
            continue
        out.append(part)
    return tuple(out)


def _describe_classic(err: dict) -> str:
    err = dict(err, loc=_drop_tags(tuple(err.get("loc", ()))))
    kind = err.get("type", "")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        where = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"]).replace(".[", "[")
        tag = (err.get("ctx") or {}).get("tag")
        shown = f"{tag!r} is not a known method; allowed" if tag is not None else "required (one of"
        return f"{where}.method: {shown} {', '.join(METHOD_NAMES)}" + ("" if tag is not None else ")")
    if kind == "value_error" and isinstance(err.get("input"), dict) and err["loc"]:
        return f"{yaml_path(err['loc'], METHOD_NAMES)}: {err.get('msg', '').removeprefix('Value error, ')}"
    return describe(err, METHOD_NAMES)


def parse_classic(data: dict, path: Path | str = "<recipe>") -> ClassicRecipe:
    try:
        recipe = ClassicRecipe.model_validate(data)
    except ValidationError as e:
        raise UserError(f"{path}: " + "; ".join(_describe_classic(x) for x in e.errors(include_url=False))) from None
    recipe._path = Path(path).resolve() if str(path) != "<recipe>" else None
    return recipe
