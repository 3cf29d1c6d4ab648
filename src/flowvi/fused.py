"""A whole training step as one compiled graph: loss, gradient, NaN guard and Adam's update.

The steps of small flows are bound by the number of operations, not by arithmetic: the
autograd engine, one guard check per compiled call and an optimizer that loops over the
parameter tensors cost as much as the matrix products. :class:`FusedAdamStep` takes the
gradient with :func:`torch.func.grad_and_value` (no autograd engine), checks it and applies
Adam's update (Kingma & Ba 2015, Algorithm 1, as :class:`torch.optim.Adam` computes it) in the
same compiled function, so inductor fuses the update of every parameter into one
kernel. :func:`flowvi.train.train` uses it with ``compile=True``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

Loss = Callable[..., tuple[Tensor, Mapping[str, Tensor]]]


@contextlib.contextmanager
def _validation(*, enabled: bool | None) -> Iterator[None]:
    """torch.distributions' default argument validation set to ``enabled`` inside (``None``:
    left as it is), and back as it was after. Dynamo turns it off for the rest of the process
    at the first ``torch.compile`` (``TorchPatcher.patch``), which would silently disable
    every later check of user input, such as a NaN given to ``log_prob``."""
    before = Distribution._validate_args
    if enabled is not None:
        Distribution.set_default_validate_args(enabled)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(before)


def _unguarded() -> contextlib.AbstractContextManager:
    """A context in which Dynamo checks no guards (torch >= 2.7); otherwise one that does
    nothing."""
    try:
        return torch.compiler.set_stance(skip_guard_eval_unsafe=True)
    except (AttributeError, TypeError):
        return contextlib.nullcontext()


class BatchLoss:
    """A minibatch loss in two parts: ``batch(t)`` makes iteration ``t``'s inputs, a tensor or
    a tuple of tensors (eagerly: data draws use torch's generator exactly as without
    compiling; scalars such as an annealing ``beta`` as 0-d tensors, so that a compiled loss
    does not specialize on them) and ``loss(*inputs)`` returns ``(loss, parts)`` as a function
    of the model's parameters and the inputs alone, which :func:`flowvi.train.train` can
    compile. Called as ``loss_fn(t)``, it is an ordinary loss function."""

    def __init__(self, batch: Callable[[int], Tensor | tuple[Tensor, ...]], loss: Loss) -> None:
        self.batch, self.loss = batch, loss

    def inputs(self, t: int) -> tuple[Tensor, ...]:
        """``batch(t)`` as a tuple."""
        out = self.batch(t)
        return out if isinstance(out, tuple) else (out,)

    def __call__(self, t: int) -> tuple[Tensor, Mapping[str, Tensor]]:
        return self.loss(*self.inputs(t))


class _Objective(nn.Module):
    """``model`` as a submodule and ``loss`` as ``forward``, for :func:`torch.func.functional_call`
    (which swaps the parameters of ``model``, seen by ``loss`` through its closure)."""

    def __init__(self, model: nn.Module, loss: Loss) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Mapping[str, Tensor]]:
        return self.loss(*inputs)


class FusedAdamStep:
    """One Adam step of ``loss`` over ``model``'s trainable parameters, compiled as one graph.

    ``step(inputs, lr)`` computes ``(loss, parts) = loss(*inputs)``, the gradient of ``loss``
    and its largest absolute entry, and, only if the loss and every gradient entry are finite,
    updates the parameters and ``optimizer``'s state (``step``, ``exp_avg``, ``exp_avg_sq``, the
    tensors :class:`torch.optim.Adam` keeps, so its ``state_dict`` and checkpoints stay valid);
    otherwise nothing changes. Returns ``(loss, parts, grad_norm)``, or ``None`` (with a
    warning, once) if the step cannot be compiled, e.g. without a C++ compiler: the caller then
    steps eagerly.

    After the first call, guard evaluation is skipped while the inputs keep their shapes,
    dtypes and devices (``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``): the
    model's structure cannot change during training, and the checks cost as much as a layer.
    New shapes are compiled with guards. Every parameter gets a gradient (zero if unused),
    where :class:`torch.optim.Adam` skips parameters without one.

    Args:
        model: the module whose parameters ``loss`` uses.
        loss: ``*inputs -> (scalar loss, named tensors)``; a pure function of the parameters
            and the inputs (it may draw random numbers: compiled, they come from inductor's
            generator, seeded from torch's, so runs are reproducible but differ from eager).
        optimizer: a :class:`torch.optim.Adam` over ``model``'s trainable parameters (one group,
            no weight decay, AMSGrad or maximize); its state is created if empty.

    Raises:
        ValueError: for an optimizer this step does not implement.
    """

    def __init__(self, model: nn.Module, loss: Loss, optimizer: torch.optim.Optimizer) -> None:
        group = optimizer.param_groups[0]
        if (
            not isinstance(optimizer, torch.optim.Adam)
            or len(optimizer.param_groups) != 1
            or group["weight_decay"]
            or group["amsgrad"]
            or group["maximize"]
        ):
            raise ValueError("compile=True trains with plain Adam only (optimizer='adam')")
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = tuple(f"model.{name}" for name, _ in named)
        self.params = [p for _, p in named]
        for p in self.params:
            if not optimizer.state[p]:
                optimizer.state[p] = {
                    "step": torch.zeros((), dtype=torch.float32, device=p.device),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
        self.state = [optimizer.state[p] for p in self.params]
        self.group = group
        self.objective = _Objective(model, loss)
        self.lr = torch.zeros((), dtype=torch.float64)
        with _validation(enabled=None):
            self.compiled = torch.compile(
                self._step, fullgraph=True, dynamic=False, options={"size_asserts": False}
            )
        self.signature: tuple | None = None  # the inputs' shapes, dtypes, devices
        self.failed = False

    def __call__(
        self, inputs: tuple[Tensor, ...], lr: float
    ) -> tuple[Tensor, Mapping[str, Tensor], Tensor] | None:
        if self.failed:
            return None
        self.lr.fill_(lr)
        key = tuple((x.shape, x.dtype, x.device) for x in inputs)
        # no_grad outside: torch.func takes the gradient; nothing else is differentiated
        with torch.no_grad(), _validation(enabled=False):
            if key == self.signature:
                try:
                    with _unguarded():
                        return self.compiled(self.lr, *inputs)
                except RuntimeError as error:  # a guard failed, so nothing ran: check them all
                    if "skip_guard_eval_unsafe" not in str(error):
                        raise
                    return self.compiled(self.lr, *inputs)
            try:
                out = self.compiled(self.lr, *inputs)
            except Exception as error:  # compile-time failures surface at the first call
                reason = str(error).strip().splitlines()[0][:200] if str(error) else ""
                warnings.warn(
                    f"torch.compile failed on the training step ({type(error).__name__}: "
                    f"{reason}); training eagerly. A step with data-dependent control flow "
                    "(an iterative inverse, a first-batch initialization) cannot be one graph",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.failed = True
                return None
        self.signature = key
        return out

    def _step(self, lr: Tensor, *inputs: Tensor) -> tuple[Tensor, Mapping[str, Tensor], Tensor]:
        def loss(params: dict[str, Tensor]) -> tuple[Tensor, Mapping[str, Tensor]]:
            return torch.func.functional_call(self.objective, params, inputs)

        grads, (value, parts) = torch.func.grad_and_value(loss, has_aux=True)(
            dict(zip(self.names, self.params, strict=True))
        )
        grads = [grads[name] for name in self.names]
        grad_norm = torch.cat([g.reshape(-1) for g in grads]).abs().max()
        # a float, not a boolean tensor: inductor's CPU code stores booleans slowly
        finite = torch.isfinite(value.detach() + grad_norm).to(torch.float32)
        ok = finite > 0
        beta1, beta2 = self.group["betas"]
        eps = self.group["eps"]
        for p, g, state in zip(self.params, grads, self.state, strict=True):
            step, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
            step_new = step + finite
            m_new = torch.lerp(m, g, 1 - beta1)
            v_new = v * beta2 + (1 - beta2) * g * g
            count = step_new.to(torch.float64)  # the bias corrections in double, as Adam's
            bias1 = 1 - beta1**count
            bias2 = 1 - beta2**count
            denom = v_new.sqrt() / bias2.sqrt() + eps
            p_new = p - (lr / bias1) * m_new / denom
            p.copy_(torch.where(ok, p_new, p))
            m.copy_(torch.where(ok, m_new, m))
            v.copy_(torch.where(ok, v_new, v))
            step.copy_(step_new)
        return value.detach(), parts, grad_norm
