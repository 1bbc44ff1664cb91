"""Train a task model (tasks/: induction heads, Mamba paper §4.1.2 / E.1, by default) on CPU or GPU.

    python -m training.train --seed 0 --out runs/induction-s0
    python -m training.train --out runs/induction-s0 --resume          # continue where it stopped
    python -m training.train --init-from checkpoints/induction-2layer.safetensors --out runs/more
        # a new run from a shipped file's weights (its run directory, Adam state included, is gone)
    python -m training.train --ssm-cfg '{"layer": "Mamba2", "d_state": 16, "headdim": 16}' --out runs/m2
    python -m training.train --task mqar --task-options '{"n_pairs": 16}' --train-len 256 --out runs/mqar

The paper's recipe for induction heads: batch 8, Adam lr 1e-3 constant, no weight decay, L = 256,
loss on the query steps only (induction heads: the last position), 2-layer Mamba d_model 64. The
run writes, under --out:
    settings.json            these flags (the run's settings, beside what it produced)
    log.jsonl                one JSON object per training-log / validation event
    model.safetensors        the latest model (save_checkpoint, task metadata with lengths seen)
    optim.safetensors        Adam state + step + data-generator state, for --resume (no pickle)

Two optional additions for length extrapolation (see docs/training.md for why and what they do):
- `--schedule 0:256,4000:2048` switches the training length at the given steps (a curriculum).
- `--dilation-max K` multiplies every layer's A by a random k ~ logUniform[1, K] per step
  (A_log + log k, so gradients reach A_log unchanged). In Mamba-1 the discretisation is
  Ā = exp(Δ·A), B̄u = Δ·B·u, so this stretches every *decay* k-fold while the *input* term is
  unchanged: a sequence of L tokens then forgets as much as one of k·L tokens would. The loss thus
  sees the forgetting of long sequences while the model only ever reads L = 256 tokens.
  `--dilation-from -1` switches it on once the task is learned (validation at 100% up to L).
- `--filler-dilation-max K` multiplies Δ by k ~ logUniform[1, K] at the *filler* steps only (all but
  each write, marker and query the task names and the d_conv - 1 steps after it), so both the decay and
  the filler's input Δ·B·x grow k-fold there: the state then holds about as much filler as after k·L
  filler tokens (the mean term exactly; the random part k-fold, not sqrt(k)-fold: a harder test).
  Mamba-2's memory heads integrate instead of gating (docs/mamba2.md): their limit is filler written
  into the state, which decay dilation cannot show at L = 256.
On CPU the scan runs on the `torch` backend (chunked, hand-written backward); on CUDA the default.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.func import functional_call
from tqdm import tqdm

import numpy as np

from model import MambaConfig, MambaLM, MixerHooks, load_checkpoint, save_checkpoint
from model.checkpoint import CheckpointError
from model.config import NORM_EPSILON_DEFAULT
from tasks import task_named

from .eval import count_correct, query_logits, task_batch

VAL_SEED = 1_000_003     # validation sets never share a seed with training data (seeded by --seed)


def _json_object(name: str, text: str) -> dict:
    try:
        v = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} must be a JSON object, got {text!r} ({e})") from None
    if not isinstance(v, dict):
        raise ValueError(f"{name} must be a JSON object, got {text!r}")
    return v


class FlagError(ValueError):
    """Flags a run cannot use, found before its first step (the CLI prints it as one line)."""


@dataclass
class TrainConfig:
    task: str = "induction_heads"  # induction_heads, selective_copying or mqar (tasks/)
    # task options as JSON, passed to the task's batch(), e.g. '{"n_pairs": 16}' for MQAR
    task_options: str = ""
    seed: int = 0                 # drives the initialisation (torch.manual_seed) and the data stream
    steps: int = 12000            # upper bound; training stops early once validation holds 100%
    batch: int = 8                # paper, E.1
    lr: float = 1e-3              # Adam, constant, no weight decay (paper, E.1)
    # lr steps "step:lr,..." (steps increasing): from each step on that lr, before the first --lr; e.g.
    # "9000:1e-3" lowers it late in a run (a changed --lr-schedule may be given with --resume)
    lr_schedule: str = ""
    train_len: int = 256          # L in training (paper: 2^8)
    # curriculum "step:len,step:len" (first must be 0:...); empty = train_len throughout. "step:a|b|c"
    # draws one of the lengths per batch from that step on (a mixture of contexts)
    schedule: str = ""
    # task-option curriculum as JSON {"step": {options}, ...} (first key "0"), merged over task_options
    # from that step on, e.g. '{"0": {"k": 4}, "2000": {"k": 16}}' for selective copying; validation and
    # the checkpoint use task_options + the last entry (what the model is trained for)
    options_schedule: str = ""
    # task options for the training batches only, merged last; validation and the checkpoint's task
    # options never see them (an augmentation), e.g. '{"lead_max": 2048}' for selective copying
    train_options: str = ""
    dilation_max: float = 1.0     # decay dilation k ~ logU[1, dilation_max] per step; 1 = off
    # first step with dilation; -1 = from the first validation at 100% on every validation length
    # <= the training length (the task is learned; the stop-after count then restarts there)
    dilation_from: int = 0
    # filler dilation: Δ x k at the filler steps (all but each write, marker or query and the d_conv - 1
    # steps after it), k ~ logU[1, K] per step; 1 = off. Stretches both the decay and the filler's input
    filler_dilation_max: float = 1.0
    filler_dilation_from: int = 0  # first step with filler dilation
    eval_every: int = 250         # steps between validations
    # validation sets "len:samples,...": fixed sequences (seed VAL_SEED + len), same every eval
    val: str = "256:256,1024:64,4096:32"
    stop_after: int = 3           # stop once every validation length is at 100% this many evals in a row
    min_steps: int = 0            # never stop before this step
    out: str = "runs/induction"   # run directory: settings.json, log.jsonl, model + optimizer state
    resume: bool = False          # continue the run in --out from its last save (flags may change)
    # a new run that starts from this checkpoint's weights (a shipped file; its run directory is gone):
    # the step count, lengths seen and wall time continue from its metadata so schedules keep their
    # steps; Adam starts fresh and the data stream is seeded by (seed, step), never replaying the first run
    init_from: str = ""
    threads: int = 2              # torch.set_num_threads (the notes measured 2-core machines)
    device: str = "cpu"           # cpu: the torch scan backend; cuda: the default (Triton) backend
    log_every: int = 50           # steps between train-loss log lines
    # the model: mamba_ssm's ssm_cfg as JSON, e.g. '{"layer": "Mamba2", "d_state": 16, "headdim": 16}';
    # empty = the paper's Mamba-1 (d_state 16, expand 2)
    ssm_cfg: str = ""
    d_model: int = 64             # residual width (paper: 64 for the 2-layer task models)
    n_layer: int = 2

    def __post_init__(self):
        if self.batch < 1 or self.steps < 0 or self.eval_every < 1:
            raise ValueError(f"batch ({self.batch}), steps ({self.steps}) and eval_every "
                             f"({self.eval_every}) must be positive")
        if self.dilation_from < -1:
            raise ValueError(f"dilation_from must be a step >= 0, or -1 (auto), got {self.dilation_from}")
        if self.resume and self.init_from:
            raise ValueError("--resume continues a run directory and --init-from starts a new one: give one")
        if self.dilation_max < 1 or self.filler_dilation_max < 1:
            raise ValueError(f"dilation_max ({self.dilation_max}) and filler_dilation_max "
                             f"({self.filler_dilation_max}) must be >= 1 (1 = off)")
        self.length_schedule()
        self.lr_steps()
        self.options_at(0)
        self.val_sets()
        self.model_config()
        self.options()
        if not (self.resume or self.init_from):     # those start later: train() checks from their step
            self.check_batches()

    @property
    def the_task(self):
        return task_named(self.task, self.options().get("vocab"))

    def options(self) -> dict:
        """The task options the model is trained for (validation, checkpoint): the schedule's last."""
        steps = self._options_steps()
        return {**_json_object("task_options", self.task_options), **(steps[-1][1] if steps else {})}

    def _options_steps(self) -> list[tuple[int, dict]]:
        raw = _json_object("options_schedule", self.options_schedule)
        try:
            items = sorted((int(k), v) for k, v in raw.items())
        except ValueError:
            raise ValueError(f"options_schedule keys must be steps, got {list(raw)}") from None
        if items and (items[0][0] != 0 or not all(isinstance(v, dict) for _, v in items)):
            raise ValueError(f"options_schedule {self.options_schedule!r}: the first step must be 0 and "
                             "each value an object")
        return items

    def options_at(self, step: int) -> dict:
        """The task options of the training batches at `step`."""
        picked = [v for s, v in self._options_steps() if s <= step]
        return {**_json_object("task_options", self.task_options), **(picked[-1] if picked else {}),
                **_json_object("train_options", self.train_options)}

    def check_batches(self, first_step: int = 0):
        """Every training batch from `first_step` on and every validation set can be drawn: a length or
        option the task's generator refuses fails before the first step, not hours into the run at the
        first validation (one row each, numpy only). Raises FlagError."""
        rng = np.random.default_rng(0)
        last = max(self.steps, first_step)
        changes = sorted({s for s, _ in self.length_schedule()} | {s for s, _ in self._options_steps()} | {0})
        draws = []
        for s, end in zip(changes, changes[1:] + [last + 1]):    # each stretch of equal lengths and options
            at = max(s, first_step)
            if at < end and s <= last:
                draws += [(f"the training batches from step {at}", L, self.options_at(at)) for L in self.lengths_at(at)]
        draws += [(f"the validation set at {n}", n, self.options()) for n, _ in self.val_sets()]
        for what, L, opts in draws:
            try:
                task_batch(self.the_task, 1, L, rng, opts)
            except ValueError as e:
                raise FlagError(f"{what} (length {L}, options {opts}) cannot be drawn: {e}") from None

    def model_config(self) -> MambaConfig:
        return MambaConfig(d_model=self.d_model, n_layer=self.n_layer, vocab_size=self.the_task.vocab_size,
                           ssm_cfg=_json_object("ssm_cfg", self.ssm_cfg))


    def length_schedule(self) -> list[tuple[int, tuple[int, ...]]]:
        """[(first_step, lengths), ...] ascending in step; more than one length: one drawn per batch."""
        if not self.schedule:
            return [(0, (self.train_len,))]
        try:
            pairs = [(int(st), tuple(int(v) for v in ls.split("|")))
                     for st, ls in (item.split(":") for item in self.schedule.split(","))]
        except ValueError as e:
            raise ValueError(f"schedule must look like '0:256,4000:2048' (or 4000:1024|4096 for a mixture), "
                             f"got {self.schedule!r}") from e
        if pairs[0][0] != 0 or any(b[0] <= a[0] for a, b in zip(pairs, pairs[1:])):
            raise ValueError(f"schedule {self.schedule!r}: steps must start at 0 and increase")
        if any(n < 1 for _, ls in pairs for n in ls):
            raise ValueError(f"schedule {self.schedule!r}: lengths must be positive")
        return pairs

    def lr_steps(self) -> list[tuple[int, float]]:
        if not self.lr_schedule:
            return []
        try:
            pairs = [(int(s), float(v)) for s, v in (item.split(":") for item in self.lr_schedule.split(","))]
        except ValueError as e:
            raise ValueError(f"lr_schedule must look like '9000:1e-3,12000:3e-4', got {self.lr_schedule!r}") from e
        if any(b[0] <= a[0] for a, b in zip(pairs, pairs[1:])) or any(s < 0 or not 0 < v < 1 for s, v in pairs):
            raise ValueError(f"lr_schedule {self.lr_schedule!r}: steps must be >= 0 and increase, "
                             "each lr in (0, 1)")
        return pairs

    def lr_at(self, step: int) -> float:
        return ([self.lr] + [v for s, v in self.lr_steps() if s <= step])[-1]

    def lengths_at(self, step: int) -> tuple[int, ...]:
        return [ls for s, ls in self.length_schedule() if s <= step][-1]

    def length_at(self, step: int) -> int:
        """The longest length trained on at `step` (the checkpoint's training length)."""
        return max(self.lengths_at(step))

    def val_sets(self) -> list[tuple[int, int]]:
        try:
            return [tuple(int(v) for v in item.split(":")) for item in self.val.split(",")]
        except ValueError as e:
            raise ValueError(f"val must look like '256:256,1024:64', got {self.val!r}") from e


def _field_comments() -> dict:
    """{field: its comment in TrainConfig's source}: the dataclass is the one place flags are described."""
    out, pending = {}, []
    for line in inspect.getsource(TrainConfig).splitlines():
        code, _, comment = line.strip().partition("#")
        if not code and comment:
            pending.append(comment.strip())
        elif ":" in code and "=" in code and "(" not in code:
            out[code.split(":")[0].strip()] = " ".join(pending + [comment.strip()]).strip()
            pending = []
        else:
            pending = []
    return out


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    helps = _field_comments()
    for f in fields(TrainConfig):
        flag, h = "--" + f.name.replace("_", "-"), (helps.get(f.name) or " ").replace("%", "%%")
        if f.type == "bool":            # annotations are strings (from __future__ import annotations)
            p.add_argument(flag, action="store_true", default=f.default, help=h)
        else:
            p.add_argument(flag, type={"int": int, "float": float, "str": str}[f.type], default=f.default,
                           help=h)
    try:
        return TrainConfig(**vars(p.parse_args(argv)))
    except ValueError as e:     # a flag the run cannot use: one line, before any work
        p.error(str(e))


# ---------------------------------------------------------------------------------------------
# validation

def validate(lm: MambaLM, cfg: TrainConfig) -> dict:
    was = lm.training
    lm.eval()
    out = {}
    for n, k in cfg.val_sets():
        right, total = count_correct(lm, n, k, VAL_SEED + n, task=cfg.the_task, options=cfg.options())
        out[str(n)] = right / total
    lm.train(was)
    return out


# ---------------------------------------------------------------------------------------------
# optimizer / resume state, as safetensors (never pickle)

def save_train_state(path: Path, lm: MambaLM, opt: torch.optim.Adam, step: int, gen: np.random.Generator,
                     extra: dict) -> None:
    """Adam's state as `{param name}.{exp_avg,exp_avg_sq,step}` tensors, the data generator's state
    (JSON metadata: numpy's PCG64 state is two integers) and `extra` (lengths seen, wall time, ...)
    as JSON metadata: everything --resume needs."""
    names = {id(p): n for n, p in lm.named_parameters()}
    tensors = {}
    meta = {"step": str(step), "data_generator": json.dumps(gen.bit_generator.state),
            **{k: json.dumps(v) for k, v in extra.items()}}
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                tensors[f"{names[id(p)]}.{k}"] = v.detach().cpu().contiguous()
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_train_state(path: Path, lm: MambaLM, opt: torch.optim.Adam, gen: np.random.Generator) -> tuple[int, dict]:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    gen.bit_generator.state = json.loads(meta.pop("data_generator"))
    for n, p in lm.named_parameters():
        st = {k.rsplit(".", 1)[1]: v.to(p.device) for k, v in tensors.items() if k.rsplit(".", 1)[0] == n}
        if st:
            opt.state[p] = st
    step = int(meta.pop("step"))
    return step, {k: json.loads(v) for k, v in meta.items()}


def init_from_checkpoint(lm: MambaLM, cfg: TrainConfig, src: MambaLM) -> tuple[int, dict, np.random.Generator]:
    """Load --init-from's weights (`src`, the loaded file) into `lm` (same architecture and task, else a
    FlagError naming the difference) -> (its step, the run state to continue, the data generator)."""
    task = src.task or {}
    if task.get("name") != cfg.the_task.name:
        raise FlagError(f"--init-from {cfg.init_from}: trained on task {task.get('name')!r}, "
                        f"not {cfg.the_task.name!r}")
    theirs, ours = src.config.to_mamba_ssm_dict(), cfg.model_config().to_mamba_ssm_dict()
    diff = sorted(k for k in ours if theirs.get(k) != ours[k])
    if diff:
        raise FlagError(f"--init-from {cfg.init_from}: its model differs from these flags in "
                        + ", ".join(f"{k} ({theirs.get(k)!r} there, {ours[k]!r} here)" for k in diff))
    lm.load_state_dict(src.state_dict())
    step = int(task.get("steps", 0))
    prior = task.get("init_from", [])
    state = {"lengths_seen": list(task.get("lengths_seen", [])), "wall_s": float(task.get("wall_time_s", 0.0)),
             "streak": 0, "dilation_start": task.get("dilation_from_step"),
             "init_from": prior + [{"file": Path(cfg.init_from).name, "sha256": src.checkpoint_sha256,
                                    "step": step}]}
    if task.get("widened_from"):                  # training/widen.py's lineage: the narrower file it came from
        state["widened_from"] = task["widened_from"]
    return step, state, np.random.default_rng([cfg.seed, step])


# ---------------------------------------------------------------------------------------------
# training

def dilated_params(lm: MambaLM, k: float) -> dict:
    """{name: A_log + log k} for every layer: A -> k·A, i.e. every decay exp(Δ·A) stretched k-fold."""
    return {n: p + math.log(k) for n, p in lm.named_parameters() if n.endswith("mixer.A_log")}


def filler_scale(task, tokens: np.ndarray, k: float, reach: int) -> np.ndarray:
    """tokens [B, L] -> Δ multipliers [B, 1, L] float32: k at the filler steps, 1 at every write,
    marker and query of the task and the `reach` - 1 steps after each (the conv window still holds
    them there, so the write itself is never scaled)."""
    B, L = tokens.shape
    scale = np.full((B, 1, L), k, dtype=np.float32)
    for b in range(B):
        pos = task.positions(tokens[b])
        for s in (*pos.writes, *pos.markers, *pos.queries):
            scale[b, 0, s:s + reach] = 1.0
    return scale


def train_step(lm: MambaLM, opt: torch.optim.Adam, tokens: torch.Tensor, queries: torch.Tensor,
               answers: torch.Tensor, k: float = 1.0,
               delta_scale: torch.Tensor | None = None) -> tuple[float, float]:
    """One Adam step on the loss at the query steps only (induction heads: the last position).
    tokens [B, L], queries and answers [B, K]; k: decay dilation; delta_scale [B, 1, L]: Δ
    multipliers per step (filler dilation), every layer. Returns (loss, accuracy over the queries)."""
    hooks = None
    if delta_scale is not None:
        hooks = [MixerHooks(delta=lambda d: d * delta_scale)] * len(lm.backbone.layers)   # d [B, U, L]
    if k != 1.0:
        params = dilated_params(lm, k)
        forward = lambda t, **kw: functional_call(lm, params, (t,), {**kw, "hooks": hooks})  # noqa: E731
    else:
        forward = lambda t, **kw: lm(t, hooks=hooks, **kw)  # noqa: E731
    logits = query_logits(lm, tokens, queries, forward)                           # [B, K, V]
    loss = F.cross_entropy(logits.float().flatten(0, 1), answers.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach()), float((logits.detach().argmax(-1) == answers).float().mean())


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Run (or resume) training as configured; returns the final summary dict."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = asdict(cfg)
    state_path, model_path = out / "optim.safetensors", out / "model.safetensors"
    # RMSNorm's eps is not a flag: a widened file (training/widen.py) carries its own, and a run that
    # starts from a file keeps that file's, so that what it computes does not move at step 0
    resuming = cfg.resume and state_path.exists()
    start = load_checkpoint(model_path if resuming else cfg.init_from, device=cfg.device) \
        if resuming or cfg.init_from else None
    eps = start.config.norm_epsilon if start else NORM_EPSILON_DEFAULT
    torch.manual_seed(cfg.seed)                       # the initialisation
    lm = MambaLM(replace(cfg.model_config(), norm_epsilon=eps), device=cfg.device)
    opt = torch.optim.Adam(lm.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = np.random.default_rng(cfg.seed)             # the data stream (and the dilation draws)
    step, state = 0, {"lengths_seen": [], "wall_s": 0.0, "streak": 0, "dilation_start": None}
    if resuming:
        lm.load_state_dict(start.state_dict())
        step, state = load_train_state(state_path, lm, opt, gen)
        state.setdefault("dilation_start", None)
        prev = json.loads((out / "settings.json").read_text())
        for key in ("seed", "batch", "lr", "ssm_cfg", "task", "task_options", "d_model", "n_layer"):
            before = prev.get(key, getattr(TrainConfig, key))       # a flag older runs did not have: its default
            if before != settings[key]:
                raise FlagError(f"--resume with {key}={settings[key]!r} but the run in {out} used {before!r}")
    elif cfg.resume:
        raise FlagError(f"--resume: no {state_path} to resume from")
    elif cfg.init_from:
        step, state, gen = init_from_checkpoint(lm, cfg, start)
    if cfg.resume or cfg.init_from:
        cfg.check_batches(step)
    if cfg.dilation_max > 1 and cfg.dilation_from >= 0:
        state["dilation_start"] = cfg.dilation_from
    (out / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    log = open(out / "log.jsonl", "a")
    lm.train()

    def write(event: dict):
        log.write(json.dumps(event) + "\n")
        log.flush()

    write({"event": "settings", "step": step, **settings})   # a resumed run may change flags

    def save(val: dict):
        mixture = sorted(set(cfg.lengths_at(step)))
        task = cfg.the_task.metadata(
            cfg.train_len if not cfg.schedule else cfg.length_at(step), lengths_seen=state["lengths_seen"],
            steps=step, seed=cfg.seed, batch=cfg.batch, lr=cfg.lr, lr_schedule=cfg.lr_schedule,
            schedule=cfg.schedule,
            **({"train_lengths": mixture} if len(mixture) > 1 else {}),
            options_schedule=cfg.options_schedule,
            **({"train_options": cfg.train_options} if cfg.train_options else {}), dilation_max=cfg.dilation_max,
            **({"filler_dilation_max": cfg.filler_dilation_max, "filler_dilation_from": cfg.filler_dilation_from}
               if cfg.filler_dilation_max > 1 else {}),
            dilation_from_step=state["dilation_start"],
            wall_time_s=round(state["wall_s"], 1), hardware=f"{cfg.device}, {cfg.threads} threads",
            validation=val, options=cfg.options(),
            **({"init_from": state["init_from"]} if state.get("init_from") else {}),
            **({"widened_from": state["widened_from"]} if state.get("widened_from") else {}))
        save_checkpoint(lm, model_path, task=task)
        save_train_state(state_path, lm, opt, step, gen, state)

    t_start = time.time() - state["wall_s"]
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, dynamic_ncols=True, mininterval=1.0)
    run_loss = run_acc = None
    done = False
    while step < cfg.steps and not done:
        Ls = cfg.lengths_at(step)
        # a single length draws nothing, so a run without a mixture keeps its data stream
        L = Ls[0] if len(Ls) == 1 else int(Ls[gen.integers(len(Ls))])
        if L not in state["lengths_seen"]:
            state["lengths_seen"].append(L)
        b = task_batch(cfg.the_task, cfg.batch, L, gen, cfg.options_at(step))
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        k = 1.0
        if cfg.dilation_max > 1 and state["dilation_start"] is not None and step >= state["dilation_start"]:
            k = float(np.exp(gen.random() * math.log(cfg.dilation_max)))
        dev = lambda a: torch.from_numpy(a).to(cfg.device)  # noqa: E731
        scale = None
        if cfg.filler_dilation_max > 1 and step >= cfg.filler_dilation_from:
            kf = float(np.exp(gen.random() * math.log(cfg.filler_dilation_max)))
            scale = dev(filler_scale(cfg.the_task, b.tokens, kf, lm.config.ssm("d_conv")))
        loss, acc = train_step(lm, opt, dev(b.tokens), dev(b.queries), dev(b.answers), k, scale)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step}")
        step += 1
        run_loss = loss if run_loss is None else 0.98 * run_loss + 0.02 * loss
        run_acc = acc if run_acc is None else 0.98 * run_acc + 0.02 * acc
        bar.update(1)
        bar.set_postfix(L=L, loss=f"{run_loss:.3f}", acc=f"{run_acc:.2f}", refresh=False)
        state["wall_s"] = time.time() - t_start
        if step % cfg.log_every == 0:
            write({"event": "train", "step": step, "loss": round(run_loss, 5), "acc": round(run_acc, 4),
                   "len": L, "wall_s": round(state["wall_s"], 1)})
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val = validate(lm, cfg)
            state["wall_s"] = time.time() - t_start
            perfect = all(v == 1.0 for v in val.values())
            state["streak"] = state["streak"] + 1 if perfect else 0
            short = [v for n, v in val.items() if int(n) <= L] or list(val.values())
            if cfg.dilation_max > 1 and state["dilation_start"] is None and all(v == 1.0 for v in short):
                state["dilation_start"], state["streak"] = step, 0
                bar.write(f"step {step}: validation at 100%, decay dilation (k up to {cfg.dilation_max:g}) on")
            write({"event": "val", "step": step, "acc": val, "wall_s": round(state["wall_s"], 1)})
            bar.write(f"step {step:6d}  {state['wall_s'] / 60:5.1f} min  loss {run_loss:.4f}  val "
                      + "  ".join(f"L={n}: {v:.1%}" for n, v in val.items()))
            save(val)
            done = state["streak"] >= cfg.stop_after and step >= cfg.min_steps and \
                (cfg.dilation_max == 1 or state["dilation_start"] is not None)
    bar.close()
    summary = {"event": "end", "step": step, "wall_s": round(state["wall_s"], 1),
               "stopped_early": done, "lengths_seen": state["lengths_seen"]}
    write(summary)
    log.close()
    return summary


def main(argv=None):
    cfg = parse_args(argv)
    if cfg.device == "cpu":     # the CLI only: process-wide, and a test process should not keep its peak
        from kernels.cpu_memory import keep_freed_memory
        keep_freed_memory(every_size=True)      # each step re-faulted GBs of activations (cpu_memory.py says)
    try:
        summary = train(cfg)
    except (FlagError, CheckpointError) as e:   # found before the first step: one line, the run as it was
        sys.exit(f"training.train: error: {e}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
