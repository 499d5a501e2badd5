"""The sequential layer loop shared by calibrating methods (GPTQ; AWQ builds on it too).

    result = run_sequential(model, calib.input_ids, handler, SequentialOptions(device=..., work_dir=...))

The loop captures the inputs of the first decoder block once (hidden states plus the keyword
arguments the block needs: attention mask, position embeddings / ids, cache off), then for each
block: moves it to `options.device`, runs the calibration batches through it with pre-hooks on
the method's target modules, lets the method solve, and propagates the *solved* block's outputs
as the next block's inputs. Only one block's activations live at a time; the rest of the model
stays where it is (CPU).

A method plugs in by implementing `BlockHandler` (duck-typed; see the Protocol below):
  state_key               identifies the result (method version, variant config, calibration key);
                          resume state is only reused under the same key
  targets(i, name, block) {full module name: module} to observe in block i (e.g. its Linears)
  begin_block(run)        a block starts (`run` is a BlockRun: index, name, block, groups,
                          per-batch inputs and kwargs, device, forward(), note())
  observe(group, x)       one batch of input `x` reaching the modules of `group` (modules fed
                          with the very same tensor — q/k/v, gate/up — form one InputGroup, so
                          statistics of a shared input are gathered once)
  solve(group)            every batch has been observed for `group`: compute and write the new
                          weights into its modules in place
  finish_block(run)       -> BlockResult(state={str: Tensor}, report=[{...}]): what to save so a
                          later run can skip this block, and per-module report rows
  restore_block(run, state)  apply a saved state instead of solving (resume)

Two orders (`SequentialOptions.staged`):
  staged=True   each group is solved as soon as all batches have reached its first module, and
                the rest of the forward runs with the solved weights: later groups see the
                quantized earlier ones (GPTQ's true-sequential: q/k/v, then o, then gate/up, then
                down — the order is discovered from the calls, not from module names). One forward
                per block: each batch runs in its own thread, parked at the group's first module
                while the others catch up; only one thread computes at a time. Parked batches
                keep the block's activations for the whole calibration set alive at its widest
                point; `max_parked` bounds that, re-running the other batches per group instead.
  staged=False  every group is observed on the unmodified block, then solved in call order, then
                a second pass propagates through the solved block (AWQ; GPTQ without true-sequential).

Resume: with `work_dir`, each finished block's state is written atomically to
`work_dir/blocks/block-NNNN.safetensors` and recorded in `work_dir/manifest.json` (with the
handler's state_key and the block's report). A later run with the same key restores those blocks
and only forwards through them; every forward (solved or restored) takes the same code path, so
the result is bit-identical to an uninterrupted run. `SequentialResult.resumed` lists them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from ..progress import NULL_PROGRESS, Progress
from ..runs import atomic_write_bytes, atomic_write_json, file_sha256, read_json
from .activations import Activations, parked_within
from .batches import _Runner
from .capture import capture_inputs
from .blockrun import BlockHandler, BlockResult, BlockRun, InputGroup, _input_of
from .lazy import Blocks, EagerBlocks
from .targets import find_blocks

__all__ = ["BlockHandler", "BlockResult", "BlockRun", "InputGroup", "SequentialOptions", "SequentialResult",
           "capture_inputs", "default_batch_size", "probe_groups", "return_freed_memory", "run_sequential"]

log = logging.getLogger("llmquant")

TOKENS_PER_BATCH = 4096
MANIFEST = "manifest.json"

BlockDone = Callable[[int, str, nn.Module], None]


@dataclass(frozen=True)
class SequentialOptions:
    device: str = "cpu"
    batch_size: int | None = None  # samples per forward; default ~4096 tokens per batch
    staged: bool = True
    work_dir: Path | None = None
    keep_final: bool = False  # return the last block's outputs (e.g. to calibrate lm_head)
    max_parked: int | None = None  # staged: batches kept waiting with their activations (None:
    #                                all, one forward per block); the others are re-run per group
    label: str = "sequential"
    autocast: torch.dtype | None = None  # run block forwards under torch.autocast (e.g. bfloat16
    #                                      matmuls on a CPU with AMX); None: the model's own dtype
    activation_budget: int | None = None  # bytes of block inputs kept in memory (the rest spill to
    #                                       work_dir/activations) and, staged with max_parked None, of
    #                                       parked batches (estimated; fewer parked: same numbers)
    activation_dtype: torch.dtype | None = None  # dtype the block inputs are kept in (None: as computed)
    float_outputs: bool = False  # unstaged: the next block calibrates on this block's outputs before
    #                              it is solved (the observing forward's; AutoAWQ's and llm-awq's
    #                              protocol), saving the second forward; False: on the solved block's
    #                              outputs
    observe: bool = True  # unstaged: run the observing forward (False: the handler computes what it
    #                       needs itself when it solves, e.g. SignRound's tuning; one forward fewer)


@dataclass
class SequentialResult:
    solved: list[int]
    resumed: list[int]
    report: list[dict]
    hidden: list[Tensor] | None = None  # last block's outputs per batch, when keep_final
    block_seconds: list[tuple[int, float]] = field(default_factory=list)  # (block, wall seconds) forwarded here


def return_freed_memory() -> None:
    """Make glibc give large freed blocks back to the OS.

    glibc raises its mmap threshold each time a large block is freed, after which blocks of
    that size come from heaps that never shrink: a layer loop that allocates and frees
    activations of many sizes in several threads then holds about twice its live memory.
    Pinning the threshold at glibc's documented default (128 KiB) keeps RSS at the live set
    (measured here: 1.9 GB -> 1.0 GB peak on SmolLM2 with 32 samples), at no measurable cost
    in speed. Process-wide and idempotent; a no-op where glibc is absent.
    """
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        if name and "libc" in name:
            ctypes.CDLL(name).mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass



def default_batch_size(seqlen: int) -> int:
    return max(1, TOKENS_PER_BATCH // max(1, seqlen))


# -- discovering the input groups of a block -------------------------------------------------


def probe_groups(run: BlockRun, targets: dict[str, nn.Module]) -> list[InputGroup]:
    """Forward batch 0 once, recording which targets are called, in which order, on which input.

    Modules called with the very same tensor share a group. Targets never called get a group of
    their own marked `called=False`; a target called twice in one forward is not supported.
    """
    calls: list[tuple[str, Tensor]] = []
    name_of = {id(m): n for n, m in targets.items()}

    def hook(module, args, kwargs):
        calls.append((name_of[id(module)], _input_of(args, kwargs)))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in targets.values()]
    try:
        run.forward(0)
    finally:
        for h in handles:
            h.remove()
    seen = [n for n, _ in calls]
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if twice:
        raise ValueError(f"{twice[0]} is called more than once per forward; the sequential loop cannot calibrate it")
    keys: list[tuple] = []
    members: list[list[str]] = []
    for name, x in calls:
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)
        if key in keys:
            members[keys.index(key)].append(name)
        else:
            keys.append(key)
            members.append([name])
    groups = [InputGroup(tuple(ns), tuple(targets[n] for n in ns)) for ns in members]
    for n in targets:
        if n not in seen:
            groups.append(InputGroup((n,), (targets[n],), called=False))
    return groups


def _signature(block: nn.Module, name: str, targets: dict[str, nn.Module]) -> tuple:
    rel = [(n[len(name) + 1:], type(m).__name__, tuple(getattr(m, "weight", torch.empty(0)).shape))
           for n, m in targets.items()]
    return (type(block).__name__, tuple(rel))


def _relabel(groups: list[InputGroup], old: str, new: str, targets: dict[str, nn.Module]) -> list[InputGroup]:
    out = []
    for g in groups:
        names = tuple(new + n[len(old):] for n in g.names)
        out.append(InputGroup(names, tuple(targets[n] for n in names), g.called))
    return out


# -- resume state ----------------------------------------------------------------------------


class _StateStore:
    """Per-block states under work_dir, valid only for one state_key."""

    def __init__(self, work_dir: Path | None, key: str, n_blocks: int):
        self.dir, self.key, self.n_blocks = work_dir, key, n_blocks
        self.blocks: dict[str, dict] = {}
        if work_dir is None:
            return
        manifest = read_json(work_dir / MANIFEST)
        if manifest and manifest.get("key") == key and manifest.get("n_blocks") == n_blocks:
            self.blocks = manifest.get("blocks", {})
        elif manifest:
            log.info("%s: resume state is for other settings; starting over", work_dir)

    def done_prefix(self) -> int:
        """How many leading blocks have a valid saved state."""
        k = 0
        while str(k) in self.blocks:
            entry = self.blocks[str(k)]
            path = self.dir / entry["file"]
            if not path.is_file() or file_sha256(path) != entry["sha256"]:
                log.warning("%s: unreadable or changed; block %d will be solved again", path, k)
                break
            k += 1
        return k

    def load(self, index: int) -> tuple[dict[str, Tensor], list[dict]]:
        entry = self.blocks[str(index)]
        return load_file(str(self.dir / entry["file"])), entry.get("report", [])

    def save(self, index: int, result: BlockResult) -> None:
        if self.dir is None:
            return
        name = f"blocks/block-{index:04d}.safetensors"
        state = result.state() if callable(result.state) else result.state
        data = save({k: v.detach().cpu().contiguous() for k, v in state.items()}, metadata={"key": self.key})
        atomic_write_bytes(self.dir / name, data)
        self.blocks[str(index)] = {"file": name, "sha256": file_sha256(self.dir / name), "report": result.report}
        atomic_write_json(self.dir / MANIFEST, {"key": self.key, "n_blocks": self.n_blocks, "blocks": self.blocks})


# -- the loop --------------------------------------------------------------------------------


def run_sequential(model: nn.Module, input_ids: Tensor, handler: BlockHandler,
                   options: SequentialOptions = SequentialOptions(), progress: Progress = NULL_PROGRESS,
                   residency: Blocks | None = None, on_done: BlockDone | None = None) -> SequentialResult:
    """The loop (see the module docstring). `residency` makes each block's weights present on the
    device for its turn and lets go of them after (default: the model is in memory, blocks move
    to the device and back; `lazy.LazyBlocks` reads them from the checkpoint files). `on_done(i,
    name, block)` is called once per block, solved or restored, while its final weights are still
    loaded (a streamed checkpoint writes it there)."""
    residency = residency or EagerBlocks()
    prefix, blocks = find_blocks(model)
    return_freed_memory()
    device = torch.device(options.device)
    bs = options.batch_size or default_batch_size(input_ids.shape[1])
    if options.float_outputs and options.staged:
        raise ValueError("float_outputs needs the unstaged loop (staged solves groups inside the forward)")
    if not options.observe and (options.staged or options.float_outputs):
        raise ValueError("observe=False needs the unstaged loop without float_outputs")
    float_outputs = options.float_outputs
    store = _StateStore(Path(options.work_dir) if options.work_dir else None, handler.state_key, len(blocks))
    done = store.done_prefix()
    # restored blocks need a forward only when a later block is solved (or the output is wanted)
    last_needed = len(blocks) if (options.keep_final or done < len(blocks)) else 0
    solved, resumed, report = [], [], []
    seconds: list[tuple[int, float]] = []
    if done:
        log.info("%s: resuming: blocks 0-%d were solved by an earlier run and are restored, not solved again",
                 options.label, done - 1)
        progress.message(f"{options.label}: resuming after block {done - 1} (blocks 0-{done - 1} restored from {store.dir})")

    inputs: list[Tensor] | None = None
    kwargs: list[dict] = []
    probed: dict[tuple, tuple[str, list[InputGroup]]] = {}
    with progress.task(f"{options.label}: blocks", total=len(blocks)) as advance:
        for i, block in enumerate(blocks):
            name = f"{prefix}.{i}"
            if i < done:
                state, rows = store.load(i)
                report.extend(rows)
                resumed.append(i)
            if i >= last_needed:  # restored blocks past the last one to solve: no forward needed
                residency.load(name, block, None)
                handler.restore_block(BlockRun(i, name, block, [], [], [], device, autocast=options.autocast), state)
                if on_done is not None:
                    on_done(i, name, block)
                residency.unload(name, block)
                advance(1, note=f"block {i}: restored")
                continue
            if inputs is None:
                with residency.outer(model):
                    first, kwargs = capture_inputs(model, block, input_ids, bs, device,
                                                   None if device.type == "cpu" else torch.device("cpu"))
                inputs = _activations(options, device)
                while first:
                    inputs.append(first.pop(0))
            t0 = time.perf_counter()
            residency.load(name, block, device)
            run = BlockRun(i, name, block, [], inputs, kwargs, device,
                           note=lambda text: advance(0, note=text), autocast=options.autocast)
            if i < done:
                if float_outputs:  # the outputs the solving run passed on: before the block is solved
                    _Runner(run, None).forward()
                    handler.restore_block(run, state)
                else:
                    handler.restore_block(run, state)
                    _Runner(run, None).forward()
                note = f"block {i}: restored"
            else:
                targets = handler.targets(i, name, block)
                sig = _signature(block, name, targets)
                if sig not in probed:
                    probed[sig] = (name, probe_groups(run, targets))
                old, groups = probed[sig]
                run.groups = _relabel(groups, old, name, targets)
                handler.begin_block(run)
                runner = _Runner(run, handler)
                if options.staged:  # solves groups as it goes; inputs become outputs
                    runner.staged(parked_limit(options, block, inputs[0], len(inputs)))
                else:
                    if options.observe:
                        runner.forward(observe=True, keep_outputs=float_outputs)
                    for g in run.groups:
                        if g.called:
                            handler.solve(g)
                for g in run.groups:
                    if not g.called:
                        handler.solve(g)
                if not options.staged and not float_outputs:
                    runner.forward()  # propagate through the solved block
                result = handler.finish_block(run)
                store.save(i, result)
                report.extend(result.report)
                solved.append(i)
                note = f"block {i}: solved in {time.perf_counter() - t0:.1f} s"
            if on_done is not None:
                on_done(i, name, block)
            residency.unload(name, block)  # `inputs` now holds this block's outputs: the next block's inputs
            seconds.append((i, time.perf_counter() - t0))
            advance(1, note=note)
    hidden = inputs.tensors() if (options.keep_final and inputs is not None) else None
    if inputs is not None:
        inputs.clear()
    return SequentialResult(solved, resumed, report, hidden, seconds)


def _activations(options: SequentialOptions, device: torch.device) -> Activations:
    """Block inputs on the CPU (a GPU holds one block and one batch), spilling past the budget."""
    spill = Path(options.work_dir) / "activations" if options.work_dir else None
    return Activations(options.activation_budget, spill, options.activation_dtype,
                       store_device=None if device.type == "cpu" else "cpu", compute_device=device)


def parked_limit(options: SequentialOptions, block: nn.Module, x: Tensor, n_batches: int) -> int | None:
    """options.max_parked, else as many batches as the activation budget holds (see
    activations.parked_within), else all."""
    if options.max_parked is not None or options.activation_budget is None:
        return options.max_parked
    return parked_within(options.activation_budget, block, x, n_batches)
