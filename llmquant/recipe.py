"""Recipes: YAML documents turned into typed, validated models.

Every section is a pydantic model with `extra="forbid"`, so a misspelt key is an error that
names its YAML path. Relative paths in a recipe are resolved against the recipe file's
directory, so a recipe works from any working directory.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import UserError
from .peers import PEER_NAMES
from .quantize import METHODS, variant_configs
from .schema import Device, Dtype, OutputSpec, RecipePaths, Strict, check_name, format_validation_error

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
FIDELITY_PROTOCOLS = ("gptq-paper",)
"""The protocols that measure KL divergence and top-1 agreement (PROTOCOLS entries with `fidelity`)."""
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


Variant = Annotated[Union[variant_configs()], Field(discriminator="method")]
"""A `variants:` entry: the config of the method its `method:` names (one per METHODS entry)."""


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
    max_kld: float | None = Field(
        None, ge=0, description="fidelity guard: a variant qualifies only if its mean KL divergence from the "
                                "baseline (nats per token, the top-64 bucketed lower bound) is at most this; "
                                "needs eval.protocol gptq-paper"
    )
    min_top1: float | None = Field(
        None, ge=0, le=1, description="fidelity guard: a variant qualifies only if its most likely next token is "
                                      "the baseline's on at least this fraction of positions (0..1); needs "
                                      "eval.protocol gptq-paper"
    )


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
        return None if v is None else check_name(v)

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
        bounds = [g for g in ("max_kld", "min_top1") if getattr(self.select, g) is not None]
        if bounds and self.eval.protocol not in FIDELITY_PROTOCOLS:
            raise ValueError(f"select.{bounds[0]}: KL divergence and top-1 agreement are measured only under "
                             f"eval.protocol {' / '.join(FIDELITY_PROTOCOLS)} (this recipe: {self.eval.protocol}); "
                             "remove the bound or change the protocol")
        return self


# -- loading ---------------------------------------------------------------------------------


def _parse_llm(data: dict, path: Path | str) -> Recipe:
    try:
        recipe = Recipe.model_validate({k: v for k, v in data.items() if k != "kind"})
    except ValidationError as e:
        raise UserError(format_validation_error(path, e, METHODS)) from None
    recipe._path = Path(path).resolve() if str(path) != "<recipe>" else None
    return recipe


RECIPE_KINDS: dict[str, str] = {
    "llm": "llmquant.recipe:_parse_llm",
    "classic": "llmquant.classic.recipe:parse_classic",
}
"""`kind:` -> its parser ("module:attr", imported when a recipe of that kind is read)."""


def parse_recipe(data: Any, path: Path | str = "<recipe>") -> Recipe:
    """Validate an already-parsed YAML document. `kind: classic` documents become ClassicRecipe
    (llmquant.classic.recipe); no `kind` (or `kind: llm`) is an LLM recipe."""
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping (model:, eval:, variants:, ...), got {type(data).__name__}")
    kind = data.get("kind", "llm")
    if kind not in RECIPE_KINDS:
        raise UserError(f"{path}: kind: {kind!r} is not a known recipe kind; allowed: llm (the default), classic")
    module, attr = RECIPE_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), attr)(data, path)


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
