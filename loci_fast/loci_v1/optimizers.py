"""The original Loci's five optimizers as one ``torch.optim.Optimizer`` (reference loci.md §3.2 item 4, §3.4).

Upstream trains with five optimizers and decides per iteration which of them step:

* ``init`` (the slot seeder's 193 parameters): ``torch.optim.Adam`` at 30 x learning_rate, betas (0.9, 0.99),
  eps 1e-16; it steps on the first iteration of a sequence only;
* ``encoder``, ``decoder``, ``predictor``: RAdam at learning_rate; they step on every other iteration;
* ``background``: RAdam at model.background.learning_rate; it steps with them once ``entity_pretraining_steps``
  updates have passed or the background gate is open (init status > 0.001), and alone on a background-only
  iteration (the very first of a run, §3.2 item 3).

Here the five are the param groups of one optimizer (so DeepSpeed checkpoints it like any client optimizer)
and ``step`` follows upstream's rule from what the stage tells it about the iteration (:meth:`plan`). The
update counter (upstream's ``num_updates``, advanced by every iteration, the steps that change nothing
included) is part of the state dict. The RAdam is upstream's: no update while the variance rectification
term is below 5 (the first 5 steps of a parameter), eps 1e-16, no weight decay; a parameter whose gradient
is None is skipped, its step count included.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

#: group name -> the model's submodule it trains
GROUPS = ("init", "encoder", "decoder", "predictor", "background")
_MODULES = {"init": "initial_states", "encoder": "encoder", "decoder": "decoder", "predictor": "predictor",
            "background": "background"}


def radam_step_size(step: int, beta1: float, beta2: float) -> float | None:
    """Upstream RAdam's step size at ``step`` (1-based), or None while N_sma < 5 (no update)."""
    beta2_t = beta2 ** step
    n_max = 2 / (1 - beta2) - 1
    n_sma = n_max - 2 * step * beta2_t / (1 - beta2_t)
    if n_sma < 5:
        return None
    return math.sqrt((1 - beta2_t) * (n_sma - 4) / (n_max - 4) * (n_sma - 2) / n_sma * n_max / (n_max - 2)) / (
        1 - beta1 ** step)


class LociV1Optimizer(torch.optim.Optimizer):
    """Upstream's five optimizers with its per-iteration schedule.

    Build it with :meth:`for_model`. Before each ``step`` the caller says what the iteration was with
    :meth:`plan` (``first_of_sequence``, ``background_only``, ``last_of_sequence``); without a plan ``step``
    raises, so a missed call cannot silently step the wrong groups. ``entity_pretraining_steps`` is
    upstream's config key.

    ``init_whole_sequence`` (compat ``init_first_iteration_gradient`` false, §11.10) fixes upstream's
    slot-seeder update, which only ever sees the gradient of a video's first iteration: the init group's
    gradients are summed over all iterations of the video (kept in its state as ``grad_sum``) and Adam
    steps once, on the video's last iteration; the first iteration then steps nothing.
    """

    def __init__(self, groups: Iterable[dict], *, entity_pretraining_steps: int = 30000,
                 init_whole_sequence: bool = False) -> None:
        groups = list(groups)
        names = [g.get("name") for g in groups]
        if sorted(names) != sorted(GROUPS):
            raise ValueError(f"LociV1Optimizer needs the groups {list(GROUPS)}, got {names}")
        for g in groups:
            g.setdefault("kind", "adam" if g["name"] == "init" else "radam")
            g.setdefault("betas", (0.9, 0.99) if g["kind"] == "adam" else (0.9, 0.999))
            g.setdefault("eps", 1e-16)
        super().__init__(groups, {"lr": 1e-4})
        self.entity_pretraining_steps = int(entity_pretraining_steps)
        self.num_updates = 0
        self.init_whole_sequence = bool(init_whole_sequence)
        self._plan: tuple[bool, bool, bool] | None = None
        self.stepped: tuple[str, ...] = ()  # the groups the last step stepped (for logs and tests)

    @classmethod
    def for_model(cls, model: torch.nn.Module, *, learning_rate: float, background_learning_rate: float,
                  entity_pretraining_steps: int = 30000, init_whole_sequence: bool = False,
                  trainable: Callable[[torch.nn.Parameter], bool] | None = None) -> "LociV1Optimizer":
        """The five groups of a :class:`~loci_fast.loci_v1.LociV1` (upstream's learning rates)."""
        lrs = {"init": 30 * learning_rate, "background": background_learning_rate}
        groups = []
        for name in GROUPS:
            params = [p for p in getattr(model, _MODULES[name]).parameters()
                      if p.requires_grad and (trainable is None or trainable(p))]
            groups.append({"name": name, "params": params, "lr": lrs.get(name, learning_rate)})
        return cls(groups, entity_pretraining_steps=entity_pretraining_steps, init_whole_sequence=init_whole_sequence)

    def group(self, name: str) -> dict:
        return next(g for g in self.param_groups if g["name"] == name)

    def plan(self, *, first_of_sequence: bool, background_only: bool = False, last_of_sequence: bool = False) -> None:
        """What the coming iteration is; read by the next :meth:`step`."""
        self._plan = (bool(first_of_sequence), bool(background_only), bool(last_of_sequence))

    def background_gate_open(self) -> bool:
        """Upstream's ``get_init_status() > 0.001``, from the background group's ``alpha`` (its only 1-element
        parameter)."""
        for p in self.group("background")["params"]:
            if p.numel() == 1:
                return math.tanh(float(p.detach().float()) / 2) > 0.001
        return False

    def groups_to_step(self, first_of_sequence: bool, background_only: bool,
                       last_of_sequence: bool = False) -> tuple[str, ...]:
        """Upstream's rule for one iteration (evaluated before the step, with this iteration's counter)."""
        if background_only:
            return ("background",)
        if first_of_sequence:
            return () if self.init_whole_sequence else ("init",)
        names = ("encoder", "decoder", "predictor")
        if self.num_updates >= self.entity_pretraining_steps or self.background_gate_open():
            names += ("background",)
        if self.init_whole_sequence and last_of_sequence:
            names = ("init",) + names
        return names

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):  # type: ignore[override]
        if self._plan is None:
            raise RuntimeError("LociV1Optimizer.step without plan(): the stage must say whether the iteration "
                               "starts a sequence (upstream steps other optimizers then)")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        names = self.groups_to_step(*self._plan)
        if self.init_whole_sequence and not self._plan[1]:
            self._sum_init_gradients(stepping="init" in names)
        for group in self.param_groups:
            if group["name"] in names:
                (self._adam if group["kind"] == "adam" else self._radam)(group)
        self.stepped = names
        self.num_updates += 1
        self._plan = None
        return loss

    def _sum_init_gradients(self, stepping: bool) -> None:
        """Add this iteration's init gradients to ``grad_sum``; when the init group steps now, hand it the
        sums as its gradients and start afresh."""
        for p in self.group("init")["params"]:
            state = self.state[p]
            if p.grad is not None:
                g = p.grad.detach().float()
                state["grad_sum"] = g.clone() if "grad_sum" not in state else state["grad_sum"].add_(g)
            if stepping:
                total = state.pop("grad_sum", None)
                p.grad = None if total is None else total.to(p.dtype)

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
        return state

    def _radam(self, group: dict) -> None:
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad.float()
            state = self._state(p)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            state["step"] += 1
            step_size = radam_step_size(state["step"], beta1, beta2)
            if step_size is None:
                continue  # upstream: moments advance, the parameter does not move
            p32 = p.float()
            p32.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size * group["lr"])
            if p32 is not p:
                p.copy_(p32)

    def _adam(self, group: dict) -> None:
        """torch.optim.Adam's single-tensor update (amsgrad off, no weight decay), in the same order."""
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad.float()
            state = self._state(p)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            state["step"] += 1
            step = state["step"]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = group["lr"] / (1 - beta1 ** step)
            denom = (exp_avg_sq.sqrt() / (1 - beta2 ** step) ** 0.5).add_(group["eps"])
            p32 = p.float()
            p32.addcdiv_(exp_avg, denom, value=-step_size)
            if p32 is not p:
                p.copy_(p32)

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["num_updates"] = self.num_updates
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.num_updates = int(state_dict.pop("num_updates", 0))
        super().load_state_dict(state_dict)


def flat_state(optimizer: LociV1Optimizer, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The per-parameter optimizer state as flat tensors named by the model's parameter names
    (``<name>/exp_avg``, ``<name>/exp_avg_sq``, ``<name>/step``): a safetensors-friendly form, no pickles."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    for p, state in optimizer.state.items():
        n = names[id(p)]
        out[f"{n}/exp_avg"] = state["exp_avg"].detach().clone()
        out[f"{n}/exp_avg_sq"] = state["exp_avg_sq"].detach().clone()
        out[f"{n}/step"] = torch.tensor(int(state["step"]), dtype=torch.int64)
    return out


def load_flat_state(optimizer: LociV1Optimizer, model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> int:
    """Set the optimizer state from :func:`flat_state`'s form; returns how many parameters got a state.
    Raises ValueError naming a parameter that does not exist or whose shape differs."""
    params = dict(model.named_parameters())
    names = sorted({k.rsplit("/", 1)[0] for k in tensors})
    problems = [n for n in names if n not in params]
    problems += [f"{n} (state {tuple(tensors[f'{n}/exp_avg'].shape)}, parameter {tuple(params[n].shape)})"
                 for n in names if n in params and tuple(tensors[f"{n}/exp_avg"].shape) != tuple(params[n].shape)]
    if problems:
        raise ValueError("the optimizer state does not fit this model: " + ", ".join(problems[:6]))
    for n in names:
        p = params[n]
        optimizer.state[p] = {"step": int(tensors[f"{n}/step"]),
                              "exp_avg": tensors[f"{n}/exp_avg"].to(p.device, torch.float32).clone(),
                              "exp_avg_sq": tensors[f"{n}/exp_avg_sq"].to(p.device, torch.float32).clone()}
    return len(names)
