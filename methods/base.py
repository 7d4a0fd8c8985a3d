"""The Method protocol (DESIGN §2) and the registry of method names.

A method owns its formulas (loss, sampler, NFE) and nothing else: the training loop handles
optimisation, EMA, checkpoints, devices and logging. Curricula are pure functions of the
training step so resume is exact.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from benchmark.diffusion import with_labels
from benchmark.errors import ConfigError
from benchmark.noise import StepNoise


@runtime_checkable
class Method(Protocol):
    name: str
    teacher: str | None  # method whose checkpoint this one distils / starts from
    num_cond: int  # number of scalar time inputs the network takes (IMM: 2)

    def loss(self, net: nn.Module, x0: Tensor, step: int, rng: StepNoise | torch.Generator,
             labels: Tensor | None = None) -> Tensor: ...  # rng: this batch's rows of the step's noise
    def sample(self, net: nn.Module, noise: Tensor, steps: int, labels: Tensor | None = None,
               guidance: float = 1.0, generator: torch.Generator | None = None) -> Tensor: ...
    def nfe(self, steps: int) -> int: ...


class MethodBase:
    """Defaults for the optional hooks; concrete methods override what they need.

    Hooks, all called by the training loop (`benchmark.train`, `benchmark.train_step.fit`):
      setup(net, teacher)   once, before the first step (teacher: frozen raw net or None)
      after_step(net, step) after each optimizer step (e.g. target-EMA update)
      state_dict / load_state_dict   method state that must survive resume (target nets)

    Sampling: `sample` checks the step budget, binds labels and guidance once and calls the
    method's own `generate(net, noise, steps, generator)`, which is written for `net(x, c)`.

    Class conditioning: `loss(..., labels)` and `sample(..., labels, guidance)` take float one-hot
    labels [B, K] (all-zero row = unconditional) and bind them to every raw net the formulas call
    (student, target, teacher: `benchmark.diffusion.with_labels`), so each formula stays written
    for `net(x, c)`; classifier-free guidance is applied to the raw output in one place
    (`benchmark.diffusion.guided_forward`).
    """

    name: str = ""
    teacher: str | None = None
    num_cond: int = 1
    init_from_teacher: bool = False  # student starts from the teacher's weights (CD, PD, ECT)
    supports_editing: bool = False  # one-step consistency function for zero-shot editing (CD, CT, iCT, ECT)

    def __init__(self, *, total_steps: int, data_shape: tuple[int, ...], **params: Any):
        if params:
            raise ConfigError(
                f"unknown parameter(s) {sorted(params)} for method '{self.name}'",
                "remove them or check the spelling against config/methods/" + self.name.split("-")[0] + ".yaml",
            )
        self.total_steps = int(total_steps)
        self.data_shape = tuple(data_shape)

    # optional hooks -------------------------------------------------------------------
    def setup(self, net: nn.Module, teacher: nn.Module | None) -> None:
        self.teacher_net = teacher

    def after_step(self, net: nn.Module, step: int) -> None:
        pass

    def teacher_for(self, labels: Tensor | None) -> nn.Module | None:
        """The frozen teacher conditioned on the batch's labels (the student's labels)."""
        return with_labels(getattr(self, "teacher_net", None), labels)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @torch.no_grad()
    def sample(self, net: nn.Module, noise: Tensor, steps: int, labels: Tensor | None = None,
               guidance: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """`steps`-step samples from `noise` (labels: float one-hot [B, K]; guidance: CFG scale)."""
        self.check_steps(steps)
        return self.generate(with_labels(net, labels, guidance), noise, steps, generator)

    def generate(self, net: nn.Module, noise: Tensor, steps: int,
                 generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError(f"method '{self.name}' has no sampler")

    def pass_phases(self) -> list[int]:
        """First steps of the curriculum's phases (ascending, starting at 0): `benchmark plan`
        runs one training step per phase on meta tensors to count the network passes, so a method
        whose passes per step change with the step lists where they may change."""
        return [0]

    def check_steps(self, steps: int) -> None:
        """Raise ConfigError if this method cannot sample with `steps` steps."""
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"step budget {steps!r} for '{self.name}' is invalid", "use an integer >= 1")

    @property
    def data_dim(self) -> int:
        d = 1
        for s in self.data_shape:
            d *= s
        return d


def check_choice(method: str, key: str, value: Any, choices: tuple[str, ...], fix: str | None = None) -> None:
    """One line naming a categorical parameter outside its choices, and the choices."""
    if value not in choices:
        raise ConfigError(f"unknown {method} {key} '{value}'", fix or f"use one of {choices}")


# name -> "module:Class"; imported lazily so a broken optional method never breaks the others
METHODS: dict[str, str] = {
    "edm": "methods.edm:EDM",
    "cd": "methods.consistency:ConsistencyDistillation",
    "ct": "methods.consistency:ConsistencyTraining",
    "ict": "methods.ict:ImprovedConsistencyTraining",
    "mcm-cd": "methods.multistep_consistency:MultistepConsistencyDistillation",
    "mcm-ct": "methods.multistep_consistency:MultistepConsistencyTraining",
    "ect": "methods.ect:ECT",
    "pd": "methods.progressive_distillation:ProgressiveDistillation",
    "imm": "methods.imm:IMM",
}


def batch_group(method: Any) -> int:
    """Examples a method's loss treats together (IMM's groups of M, which it stores as `M`): batches
    and every rank's micro-batch must hold whole groups. 1 for the other methods."""
    return int(getattr(method, "group_size", None) or getattr(method, "M", None) or 1)


def method_class(name: str) -> type:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'", f"use one of: {', '.join(sorted(METHODS))}")
    module, cls = METHODS[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"method '{name}' is not available ({e})", "check the installation") from e


def build_method(name: str, params: dict[str, Any] | None, *, total_steps: int,
                 data_shape: tuple[int, ...]) -> MethodBase:
    cls = method_class(name)
    try:
        return cls(total_steps=total_steps, data_shape=data_shape, **(params or {}))
    except TypeError as e:  # wrong parameter names/types for this method
        raise ConfigError(f"bad parameters for method '{name}': {e}",
                          f"see config/methods/{name.split('-')[0]}.yaml for the accepted keys") from e


def snapshot_rng():
    """Snapshot the global RNG; calling the returned function restores it.

    Consistency-style losses evaluate the student and the stop-grad target with the same
    dropout mask (CM code restores the RNG state; ECT §2.4): snapshot, run the first call,
    restore, run the second."""
    state_cpu = torch.get_rng_state()
    state_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def restore() -> None:
        torch.set_rng_state(state_cpu)
        if state_cuda is not None:
            torch.cuda.set_rng_state_all(state_cuda)

    return restore
