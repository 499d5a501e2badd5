"""Recipes: YAML documents turned into typed, validated models.

Every section is a pydantic model with `extra="forbid"`, so a misspelt key is an error that
names its YAML path. Relative paths in a recipe are resolved against the recipe file's
directory, so a recipe works from any working directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from .errors import UserError
from .peers import METHOD_BACKENDS, OURS, PEER_NAMES
from .quantize import METHODS

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]
GPTQ_BITS = (2, 3, 4, 8)
"""Bit widths the GPTQ v1 checkpoint format (and so vLLM/transformers) can store."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(v: str) -> str:
    if not NAME_RE.match(v):
        raise ValueError(
            "must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return v


def _check_group_size(v: int) -> int:
    if v != -1 and v < 1:
        raise ValueError("must be -1 (one group per row) or a positive divisor of the layer's input features")
    return v


class DatasetSpec(Strict):
    """A corpus: a local file (.txt, .jsonl, .json, .parquet, .tokens), `builtin:pydoc`, or a hub name."""

    source: str
    field: str = "text"
    split: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        return {"source": v} if isinstance(v, str) else v

    @field_validator("source")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class ModelSpec(Strict):
    source: str = Field(description="HF directory, .gguf file, hub id, or the alias smollm2-demo")
    gguf_file: str | None = None
    dtype: Dtype = Field("auto", description="compute dtype for evaluation; auto = float16 on CUDA, bfloat16 "
                                            "on CPUs with bf16 support (checked against float32), else float32")
    revision: str | None = None
    trust_remote_code: bool = False
    device: Device = "auto"


class CalibrationSpec(Strict):
    dataset: DatasetSpec
    n_samples: int = Field(128, ge=1, le=100_000)
    seqlen: int = Field(2048, ge=8, le=1_000_000)
    seed: int = 0
    activation_budget_mb: int = Field(
        4096, ge=1, description="memory for the calibration activations passed between blocks; past it they spill "
                                "to the variant's work dir (exact), and GPTQ keeps fewer batches parked (same numbers)")
    activation_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype the activations between blocks are kept in: float32 is exact; bfloat16 "
                               "halves their memory and rounds the hidden states (results change slightly)")


class LatencySpec(Strict):
    enabled: bool = True
    prompt_tokens: int = Field(128, ge=1)
    decode_tokens: int = Field(32, ge=1)
    repeats: int = Field(5, ge=1)
    warmup: int = Field(1, ge=0)
    prompts: list[str] | None = None
    via: Literal["in_process", "server"] = Field(
        "in_process", description="in_process: the model called directly; server: through the OpenAI streaming "
                                  "API of the serve engine (serve.engine), the same code for GPU and CPU")


ProtocolName = Literal["gptq-paper", "lm-eval-word", "llama-cpp"]
"""Perplexity protocols (llmquant/eval/protocols.py); results of different ones are never ranked together."""
LLAMA_CPP_DEFAULT_CTX = 512


class EvalSpec(Strict):
    dataset: DatasetSpec
    protocol: ProtocolName = Field(
        "gptq-paper", description="gptq-paper (the papers' windows) | lm-eval-word (lm-eval wikitext word "
                                  "perplexity) | llama-cpp (llama-perplexity: second half of each window)"
    )
    seqlen: int = Field(2048, ge=8, le=1_000_000, description="window length; default 2048, 512 for llama-cpp")
    max_windows: int | None = Field(None, ge=1, description="only the first N windows (lm-eval-word: documents)")
    batch_size: int = Field(1, ge=1)
    check_windows: int = Field(2, ge=0, description="windows also scored in float32 when computing in 16-bit (CPU)")
    check_tolerance_pct: float = Field(0.1, ge=0, description="16-bit vs float32 difference that is reported")
    compile: bool = Field(True, description="fuse packed weights' dequantization with torch.compile (same results; "
                                            "falls back to eager where it cannot compile)")
    latency: LatencySpec = LatencySpec()
    isolate: bool = Field(
        True, description="evaluate each checkpoint in its own process, so peak memory is its own"
    )

    @model_validator(mode="before")
    @classmethod
    def _protocol_seqlen(cls, v: Any) -> Any:
        if isinstance(v, dict) and "seqlen" not in v and v.get("protocol") == "llama-cpp":
            return {**v, "seqlen": LLAMA_CPP_DEFAULT_CTX}  # llama-perplexity's default context
        return v


class ModuleOverride(Strict):
    """Per-module settings, matched with re.search against module names such as
    `model.layers.3.mlp.down_proj`. The first matching override wins."""

    pattern: str
    skip: bool = False
    bits: Literal[2, 3, 4, 8] | None = None
    group_size: int | None = None
    sym: bool | None = None

    @field_validator("pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"is not a valid regular expression ({e})") from None
        return v

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int | None) -> int | None:
        return None if v is None else _check_group_size(v)


class VariantBase(Strict):
    name: str
    save_dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="dtype of the tensors left unquantized; auto = float16 unless the model is bfloat16"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)


class WeightOnlyVariant(VariantBase):
    """Options shared by weight-only integer methods stored in packed integer formats."""

    bits: Literal[2, 3, 4, 8] = 4
    group_size: int = 128
    sym: bool = True
    quantize_lm_head: bool = False
    overrides: list[ModuleOverride] = []

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        return _check_group_size(v)


class RTNVariant(WeightOnlyVariant):
    """Round-to-nearest: each group's min/max (or absmax) sets its grid; no calibration."""

    method: Literal["rtn"]


class BnbVariant(VariantBase):
    """bitsandbytes through transformers' BitsAndBytesConfig: LLM.int8 or 4-bit NF4/FP4.

    int8 is LLM.int8(): int8 weights per row, activations quantized to int8 per token at run
    time except the input columns holding a value >= `threshold`, which stay in floating point.
    """

    method: Literal["bnb"]
    mode: Literal["int8", "nf4", "fp4"] = "nf4"
    threshold: float = Field(6.0, ge=0, description="LLM.int8 outlier threshold (int8 only); 0 disables the decomposition")
    skip_modules: list[str] | None = Field(
        None, description="modules left unquantized (default: transformers' choice, the output head)")
    double_quant: bool = Field(False, description="also quantize the 4-bit absmax constants (nf4/fp4 only)")
    compute_dtype: Dtype | None = Field(None, description="dtype of the 4-bit matmul (nf4/fp4 only); default float32")
    quant_storage: Literal["uint8", "float16", "bfloat16", "float32"] = Field(
        "uint8", description="dtype the packed 4-bit weights are stored in (nf4/fp4 only)")

    @model_validator(mode="after")
    def _mode_fields(self) -> "BnbVariant":
        four_bit = {"double_quant", "compute_dtype", "quant_storage"} & self.model_fields_set
        if self.mode == "int8" and four_bit:
            raise ValueError(f"{', '.join(sorted(four_bit))} only apply to mode nf4 or fp4, not int8")
        if self.mode != "int8" and "threshold" in self.model_fields_set:
            raise ValueError(f"threshold only applies to mode int8, not {self.mode}")
        return self

    @property
    def bits(self) -> int:
        return 8 if self.mode == "int8" else 4

    @property
    def group_size(self) -> int | None:
        return None if self.mode == "int8" else 64  # bitsandbytes' 4-bit blocks of 64 weights


class PeerBackedVariant(WeightOnlyVariant):
    """A weight-only method a peer tool may quantize instead of us (llmquant/peers): a subclass
    declares `backend: Literal[METHOD_BACKENDS["<method>"]] = backend_field()`."""

    @model_validator(mode="after")
    def _peer_limits(self):
        backend = getattr(self, "backend", OURS)
        if backend != OURS:
            if self.overrides:
                raise ValueError(f"overrides are not passed to backend {backend}; use backend: {OURS}")
            if self.quantize_lm_head:
                raise ValueError(f"quantize_lm_head is not passed to backend {backend}; use backend: {OURS}")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict:
        # leave the default backend out, so variants (and cache keys) from before `backend` stay the same
        data = handler(self)
        if isinstance(data, dict) and data.get("backend") == OURS:
            data.pop("backend")
        return data


def backend_field():
    return Field(OURS, description="who quantizes: llmquant (ours), or a peer tool in its own venv (gptqmodel, "
                                   "llmcompressor) whose checkpoint our loader and protocol evaluate; see `peers:`")


class GPTQVariant(PeerBackedVariant):
    """GPTQ: each Linear solved layer by layer from calibration Hessians, with error feedback."""

    method: Literal["gptq"]
    desc_act: bool = Field(False, description="act-order: quantize columns by decreasing Hessian diagonal")
    static_groups: bool = Field(False, description="choose every group's grid before any update")
    act_group_aware: bool = Field(True, description="group-aware reordering: solve groups by importance, "
                                                    "g_idx stays monotonic (gptqmodel's default; off with desc_act)")
    damp_percent: float = Field(0.01, gt=0, le=1, description="damping, as a fraction of the mean Hessian diagonal")
    true_sequential: bool = Field(True, description="later linears of a block calibrate on the quantized earlier ones")
    block_size: int = Field(128, ge=1, le=8192, description="columns per lazy-update block (speed only)")
    backend: Literal[METHOD_BACKENDS["gptq"]] = backend_field()  # type: ignore[valid-type]


AWQ_BITS = (4,)
"""Bit widths an AWQ GEMM checkpoint may have here: vLLM's awq kernel is 4-bit only and awq_marlin's
zero-point types are uint4 only (marlin_utils.query_marlin_supported_quant_types)."""


class AWQVariant(PeerBackedVariant):
    """AWQ: per-channel scales searched on calibration activations, folded into the previous op,
    then clipping and round-to-nearest on AWQ's asymmetric grid; an AWQ GEMM checkpoint."""

    method: Literal["awq"]
    zero_point: bool = Field(True, description="asymmetric grid with zero points (AWQ's default); false: symmetric")
    n_grid: int = Field(20, ge=1, le=1000, description="scale ratios tried per mapping (0, 1/n, ..., (n-1)/n)")
    duo_scaling: bool = Field(True, description="scales from activation and weight magnitudes (AutoAWQ's default)")
    clip: bool = Field(True, description="search a clipping bound per weight group after scaling")
    clip_n_grid: int = Field(20, ge=1, le=1000, description="clip bounds are max|w| * (1 - i / clip_n_grid)")
    clip_max_shrink: float = Field(0.5, ge=0, lt=1, description="largest fraction of max|w| clipped away")
    search_samples: int | None = Field(
        16, ge=1, description="how many calibration samples' worth of tokens score the scale search through the "
                              "attention (the first N samples, whole) and the MLP (every k-th token of every "
                              "sample, as many tokens); null: every sample. Statistics and clipping always use "
                              "every sample")
    propagate: Literal["quantized", "float"] = Field(
        "quantized", description="what the next block calibrates on: this block's outputs once it is quantized "
                                 "(one more forward per block), or its float outputs (AutoAWQ's and llm-awq's "
                                 "protocol: the float model's activations throughout)")
    coarse_grid: int | None = Field(
        5, ge=2, description="coarse-to-fine scale search: score this many evenly spaced ratios (and s = 1), then "
                             "the ratios around the best; null: score all n_grid ratios")
    calib_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="matmul dtype while calibrating (block forwards, statistics, search); auto: bfloat16 "
                            "where the device computes it fast (AMX/AVX512-BF16 CPUs, CUDA), else float32")
    max_chunk_memory_mb: int = Field(1024, ge=16, description="working memory bound of one search forward")
    backend: Literal[METHOD_BACKENDS["awq"]] = backend_field()  # type: ignore[valid-type]

    @field_validator("bits")
    @classmethod
    def _awq_bits(cls, v: int) -> int:
        if v not in AWQ_BITS:
            raise ValueError(f"an AWQ GEMM checkpoint holds 4-bit weights: vLLM's awq kernel takes 4 bits only and awq_marlin "
                             f"has zero-point kernels for uint4 only; use method gptq for {v}-bit weights")
        return v

    @field_validator("sym", mode="before")
    @classmethod
    def _no_sym(cls, v: Any) -> Any:
        raise ValueError("there is no sym option for AWQ; use zero_point (true: asymmetric, the default; false: symmetric)")

    @field_validator("quantize_lm_head")
    @classmethod
    def _no_head(cls, v: bool) -> bool:
        if v:
            raise ValueError("method awq does not quantize lm_head (no op before it to fold a scale into "
                             "when embeddings are tied); use method gptq or rtn for that")
        return v

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v: list[ModuleOverride]) -> list[ModuleOverride]:
        for i, o in enumerate(v):
            if o.bits is not None and o.bits not in AWQ_BITS:
                raise ValueError(f"overrides[{i}].bits: {o.bits}: an AWQ checkpoint has one bit width (4); "
                                 "use skip: true to keep a module unquantized")
            if o.sym is not None:
                raise ValueError(f"overrides[{i}].sym: an AWQ checkpoint has one zero_point setting for all modules")
        return v

    @model_validator(mode="after")
    def _sym_from_zero_point(self) -> "AWQVariant":
        object.__setattr__(self, "sym", not self.zero_point)  # the grid code reads `sym`
        return self


Variant = Annotated[Union[RTNVariant, GPTQVariant, BnbVariant, AWQVariant], Field(discriminator="method")]


class SelectSpec(Strict):
    policy: Literal["smallest_within", "fastest_within", "best_ppl"] = "smallest_within"
    max_ppl_increase_pct: float = Field(
        2.0, ge=0, description="the usual rule: under 2 % perplexity loss is acceptable"
    )
    min_decode_ratio: float | None = Field(
        None, gt=0, description="speed guard: a variant qualifies only if its decode tok/s is at least this times "
                                "the baseline's (1.0: not slower); needs eval.latency"
    )
    max_ttft_ratio: float | None = Field(
        None, gt=0, description="speed guard: a variant qualifies only if its first-token latency is at most this "
                                "times the baseline's (1.0: not slower); needs eval.latency"
    )


class OutputSpec(Strict):
    dir: str | None = Field(None, description="run directory; default ./runs/<recipe name>")
    board: str | None = Field(None, description="leaderboard SQLite file; default the user data dir")
    shard_size_mb: float = Field(4096, gt=0, le=1 << 20, description="largest safetensors shard of a quantized "
                               "checkpoint (written block by block as the model is quantized)")


class LocalServeSpec(Strict):
    """The built-in OpenAI-compatible server (CPU, or any device torch has)."""

    dtype: Dtype = Field("auto", description="compute dtype; auto = float16 on CUDA, bfloat16 on CPUs with "
                                             "AVX512-bf16/AMX, else float32")
    device: Device = "auto"
    compile: bool = Field(True, description="fuse packed weights' dequantization with torch.compile for prompts "
                                            "(same results; compiled while the server starts)")
    max_tokens: int = Field(512, ge=1, description="largest max_tokens a request may ask for")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    queue: int = Field(8, ge=0, description="requests that may wait while one generates; more get 429")


class VllmServeSpec(Strict):
    """`vllm serve` options. Unset values are chosen by the fit check or left to vLLM."""

    max_model_len: int | None = Field(None, ge=16, description="context length; default: the largest that fits")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(
        None, description="ray to span machines (start the Ray cluster first); default: vLLM's choice")
    max_num_seqs: int | None = Field(None, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=16)
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = "auto"
    quantization: Literal["bitsandbytes"] | None = Field(
        None, description="quantize a dense checkpoint while loading (in-flight bitsandbytes)")
    enforce_eager: bool = False
    fit_check: bool = Field(True, description="refuse to launch when weights + KV cache cannot fit")
    gpu_memory_gib: float | None = Field(
        None, gt=0, description="memory of each GPU, for the fit check where this machine cannot see them "
                                "(Ray across machines, or planning on a machine without a GPU)")
    overhead_gib: float | None = Field(
        None, ge=0, description="activation + CUDA context reserve per GPU; default: estimated from the model")
    startup_timeout_s: float = Field(900, gt=0)
    extra_args: list[str] = Field([], description="passed to `vllm serve` as they are")


class ServeSpec(Strict):
    """Serving the winner: vLLM on a GPU, the built-in server elsewhere."""

    after_run: Literal["none", "check", "serve"] = Field(
        "none", description="check: start the server, answer one chat request, stop; serve: keep serving (Ctrl-C)")
    engine: Literal["auto", "vllm", "local"] = "auto"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    model_name: str | None = Field(None, description="the name clients ask for; default: the variant's name")
    api_key_env: str | None = Field(
        None, description="environment variable holding the API key clients must send (never the key itself)")
    check_message: str = "Say hello in one short sentence."
    local: LocalServeSpec = LocalServeSpec()
    vllm: VllmServeSpec = VllmServeSpec()

    @field_validator("after_run", mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        return {True: "serve", False: "none"}.get(v, v) if isinstance(v, bool) else v


class RecipePaths:
    """Where a recipe's relative paths and its run directory lead (shared by the LLM and classic
    recipes; the model sets ``_path`` when it is loaded from a file and has an ``output`` spec)."""

    _path: Path | None
    name: str | None
    output: OutputSpec

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def base_dir(self) -> Path:
        return self._path.parent if self._path else Path.cwd()

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        return _check_name(self._path.stem) if self._path else "run"

    def resolve(self, p: str) -> Path:
        """A path from the recipe, relative to the recipe's directory."""
        path = Path(p).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)

    def run_dir(self) -> Path:
        if self.output.dir:
            return self.resolve(self.output.dir)
        return Path.cwd() / "runs" / self.run_name


class Recipe(Strict, RecipePaths):
    name: str | None = None
    description: str | None = None
    model: ModelSpec
    calibration: CalibrationSpec | None = None
    eval: EvalSpec
    variants: list[Variant] = []
    select: SelectSpec = SelectSpec()
    output: OutputSpec = OutputSpec()
    serve: ServeSpec = ServeSpec()
    peers: dict[Literal[PEER_NAMES], str] = Field(  # type: ignore[valid-type]
        {}, description="the interpreter of each peer backend, e.g. {gptqmodel: ../peers/gptqmodel/bin/python} "
                        "(relative to the recipe); LLMQUANT_<NAME>_PYTHON overrides it; default: this one")

    _path: Path | None = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else _check_name(v)

    @model_validator(mode="after")
    def _cross_checks(self) -> "Recipe":
        seen: dict[str, int] = {}
        for i, v in enumerate(self.variants):
            if v.name in seen:
                raise ValueError(
                    f"variants[{i}].name: {v.name!r} is already used by variants[{seen[v.name]}]; names must be unique"
                )
            seen[v.name] = i
            if METHODS[v.method].needs_calibration and self.calibration is None:
                raise ValueError(
                    f"variants[{i}]: method {v.method!r} needs a 'calibration' section (dataset, n_samples, seqlen)"
                )
        guards = [g for g in ("min_decode_ratio", "max_ttft_ratio") if getattr(self.select, g) is not None]
        if guards and not self.eval.latency.enabled:
            raise ValueError(f"select.{guards[0]}: a speed guard needs latency measurements; "
                             "set eval.latency.enabled: true or remove the guard")
        return self


# -- loading ---------------------------------------------------------------------------------


def _yaml_path(loc: tuple) -> str:
    """('variants', 2, 'rtn', 'bits') -> 'variants[2].bits' (the union tag is dropped)."""
    out = ""
    prev_was_list_index = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            prev_was_list_index = True
            continue
        if prev_was_list_index and part in _VARIANT_TAGS:
            prev_was_list_index = False
            continue
        if part in ("function-before[_from_string(), DatasetSpec]",):
            continue
        out += f".{part}" if out else str(part)
        prev_was_list_index = False
    return out or "(top level)"


_VARIANT_TAGS = set(METHODS)


def _describe(err: dict) -> str:
    where = _yaml_path(tuple(err.get("loc", ())))
    kind = err.get("type", "")
    value = err.get("input")
    if kind == "extra_forbidden":
        return f"{where}: unknown key (check the spelling; see `llmquant validate --help`)"
    if kind == "missing":
        return f"{where}: required but missing"
    if kind == "union_tag_invalid":
        tag = (err.get("ctx") or {}).get("tag", value)
        expected = (err.get("ctx") or {}).get("expected_tags", "")
        return f"{where}.method: {tag!r} is not a known method; allowed: {expected}"
    if kind == "union_tag_not_found":
        return f"{where}.method: required (one of {', '.join(sorted(_VARIANT_TAGS))})"
    msg = err.get("msg", "invalid")
    msg = msg.removeprefix("Value error, ")
    if kind == "value_error" and where == "(top level)":
        return msg
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return f"{where}: got {shown}; {msg[0].lower() + msg[1:] if msg else msg}"


def format_validation_error(path: Path | str, e: ValidationError) -> str:
    parts = [_describe(err) for err in e.errors(include_url=False)]
    return f"{path}: " + "; ".join(parts)


def parse_recipe(data: Any, path: Path | str = "<recipe>") -> Recipe:
    """Validate an already-parsed YAML document. `kind: classic` documents become ClassicRecipe
    (llmquant.classic.recipe); no `kind` (or `kind: llm`) is an LLM recipe."""
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping (model:, eval:, variants:, ...), got {type(data).__name__}")
    kind = data.get("kind", "llm")
    if kind == "classic":
        from .classic.recipe import parse_classic

        return parse_classic(data, path)
    if kind != "llm":
        raise UserError(f"{path}: kind: {kind!r} is not a known recipe kind; allowed: llm (the default), classic")
    data = {k: v for k, v in data.items() if k != "kind"}
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(path, e)) from None
    recipe._path = Path(path).resolve() if str(path) != "<recipe>" else None
    return recipe


def load_recipe(path: Path | str) -> Recipe:
    """Read and validate a recipe file; every problem becomes a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read recipe ({e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None
    return parse_recipe(data, path)
