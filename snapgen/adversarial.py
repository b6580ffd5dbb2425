"""What both adversarial terms share: the GAN losses' two forms, the discriminator's diagnostics, a probe of the
adversarial gradient beside the task loss's, and a watch that warns when a discriminator sits at chance.

Used by step distillation (Eq. 9, LADD heads on the frozen teacher: `snapgen.step_distill`) and the decoder's PatchGAN
(Sec. 3.2: `snapgen.train_decoder`). Every diagnostic is a 0-dim device tensor returned in a phase's metric dict, so the
engine averages it over `log_every` steps and reads it back once per record (no host sync per step); it lands in
`metrics.jsonl` and MLflow under the phase's prefix:

- `acc_real`, `acc_fake`: the share of real logits > 0 and of fake logits < 0 (0.5 each = chance);
- `logit_real`, `logit_fake`: the mean logits;
- `adv_grad`, `task_grad`, `adv_grad_ratio` (the generator's phase): the norms of the adversarial term's and the task
  term's gradients at the generator's output (one backward pass: tensor hooks, not a second backward), and their
  ratio: ~0 means the adversarial term does not steer the generator.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

GAN_LOSSES = ("hinge", "nonsaturating")


def _as_list(logits: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [logits] if isinstance(logits, Tensor) else list(logits)


def gan_d_loss(real: Tensor | Sequence[Tensor], fake: Tensor | Sequence[Tensor], kind: str = "hinge") -> Tensor:
    """The discriminator's side of Eq. 9 (D = logits; several heads are averaged). `hinge` (LADD, StyleGAN-T, VQGAN):
    E[relu(1 - D(x))] + E[relu(1 + D(x'))]; `nonsaturating`, Eq. 9's log form: -E[log σ(D(x))] - E[log(1 - σ(D(x')))]
    = E[softplus(-D(x))] + E[softplus(D(x'))]."""
    if kind not in GAN_LOSSES:
        raise ValueError(f"gan loss {kind!r}; valid choices: {', '.join(GAN_LOSSES)}")
    real, fake = _as_list(real), _as_list(fake)
    if kind == "hinge":
        terms = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake)]
    else:
        terms = [F.softplus(-r).mean() + F.softplus(f).mean() for r, f in zip(real, fake)]
    return sum(terms) / len(terms)


def gan_g_loss(fake: Tensor | Sequence[Tensor], kind: str = "hinge") -> Tensor:
    """The generator's side of Eq. 9: hinge -E[D(x')], or the non-saturating -E[log σ(D(x'))] = E[softplus(-D(x'))]
    (Goodfellow et al.'s usual replacement of log(1 - σ(D)), which saturates while D wins)."""
    if kind not in GAN_LOSSES:
        raise ValueError(f"gan loss {kind!r}; valid choices: {', '.join(GAN_LOSSES)}")
    terms = [(-f).mean() if kind == "hinge" else F.softplus(-f).mean() for f in _as_list(fake)]
    return sum(terms) / len(terms)


@torch.no_grad()
def d_diagnostics(real: Tensor | Sequence[Tensor], fake: Tensor | Sequence[Tensor]) -> dict[str, Tensor]:
    """`acc_real`, `acc_fake` (logit > 0 means "real"), `logit_real`, `logit_fake`: 0-dim tensors, over all heads."""
    r = torch.cat([x.detach().float().flatten() for x in _as_list(real)])
    f = torch.cat([x.detach().float().flatten() for x in _as_list(fake)])
    return {"acc_real": (r > 0).float().mean(), "acc_fake": (f < 0).float().mean(),
            "logit_real": r.mean(), "logit_fake": f.mean()}


def r1_penalty(real_logits: Tensor, real_input: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): E[|∇_x D(x)|²] on real inputs (`real_input` must require grad; a double backward)."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_input, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def adaptive_weight(task_loss: Tensor, adv_loss: Tensor, output: Tensor, max_weight: float = 1e4) -> Tensor:
    """The adaptive adversarial weight of taming-transformers' VQGAN (Esser et al. 2021, Eq. 7 there):
    lambda = |grad L_task| / (|grad L_adv| + 1e-8), here at the generator's output rather than its last layer, clamped
    to [0, max_weight] and detached. Scaling L_adv by it makes the adversarial gradient at `output` the task
    gradient's size, so a weight w on top sets their ratio to w. The decoder's fixed weight 0.1 gave a ratio of 139 on
    the H200 (`reports/results/adversarial/`), and its D fell to chance within 25 steps of the term starting.

    Two `autograd.grad` calls that stop at `output`: the decoder's own backward is not repeated."""
    task_grad, = torch.autograd.grad(task_loss, output, retain_graph=True)
    adv_grad, = torch.autograd.grad(adv_loss, output, retain_graph=True)
    return (task_grad.float().norm() / (adv_grad.float().norm() + 1e-8)).clamp(0.0, max_weight).detach()


class GradProbe:
    """Norms of two loss terms' gradients at one tensor (the generator's output), from the one backward pass.

    `adv_view, task_view = probe.split(output)`: feed `adv_view` to the adversarial term and `task_view` to the task
    loss; their gradients are recorded by hooks into 0-dim tensors (`metrics()`) that are filled during backward (the
    engine reads a phase's metric tensors after backward). A term that did not run leaves its norm at 0."""

    def __init__(self, device: torch.device):
        self.adv = torch.zeros((), device=device)
        self.task = torch.zeros((), device=device)
        self.ratio = torch.zeros((), device=device)

    def _hook(self, target: Tensor):
        def hook(grad: Tensor) -> None:
            target.copy_(grad.detach().float().norm())
            self.ratio.copy_(self.adv / self.task.clamp_min(1e-12))  # right once both have fired, in either order
        return hook

    def split(self, output: Tensor) -> tuple[Tensor, Tensor]:
        if not output.requires_grad:
            return output, output
        adv_view, task_view = output.view_as(output), output.view_as(output)
        adv_view.register_hook(self._hook(self.adv))
        task_view.register_hook(self._hook(self.task))
        return adv_view, task_view

    def metrics(self) -> dict[str, Tensor]:
        return {"adv_grad": self.adv, "task_grad": self.task, "adv_grad_ratio": self.ratio}


class ChanceWatch:
    """One warning line when a discriminator's balanced accuracy (acc_real + acc_fake) / 2 has stayed within `margin`
    of chance over every record of `window` steps (`describe(record)` per metrics record; `''` otherwise). Warns again
    only after D has left chance and come back."""

    def __init__(self, prefix: str, window: int, margin: float = 0.05, what: str = "discriminator"):
        self.prefix, self.window, self.margin, self.what = prefix, window, margin, what
        self.since: int | None = None
        self.warned = False

    def describe(self, record: dict) -> str:
        real, fake = record.get(self.prefix + "acc_real"), record.get(self.prefix + "acc_fake")
        if real is None or fake is None:
            return ""
        step, balanced = int(record["step"]), (real + fake) / 2
        if abs(balanced - 0.5) > self.margin:
            self.since, self.warned = None, False
            return ""
        if self.since is None:
            self.since = step
        if step - self.since >= self.window and not self.warned:
            self.warned = True
            return (f"warning: the {self.what} has been at chance since step {self.since} (balanced accuracy "
                    f"{balanced:.3f}, logits real {record.get(self.prefix + 'logit_real', float('nan')):.3f} / fake "
                    f"{record.get(self.prefix + 'logit_fake', float('nan')):.3f}): the adversarial term carries no "
                    f"signal; raise its learning rate, change its inputs or noise level, or drop the term")
        return ""


__all__ = ["GAN_LOSSES", "gan_d_loss", "gan_g_loss", "d_diagnostics", "r1_penalty", "adaptive_weight", "GradProbe",
           "ChanceWatch"]
