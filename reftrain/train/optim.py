"""AdamW with linear warmup, cosine decay to 10% and global-norm clipping (optax)."""

from __future__ import annotations

import optax

from reftrain.phases import Phase


def make_optimizer(phase: Phase, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns (optimizer, learning-rate schedule) for `phase` run over `total_steps` steps.

    Clipping comes first so that the reported grad norm is the raw one and the update never
    sees a larger norm than `phase.grad_clip`. betas (0.9, 0.95) as in Llama/Mistral continued
    pretraining; the paper does not state its optimiser settings.
    """
    warmup = min(phase.warmup_steps, max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=phase.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=phase.learning_rate * 0.1,
    )
    optimizer = optax.chain(
        optax.clip_by_global_norm(phase.grad_clip),
        optax.adamw(schedule, b1=0.9, b2=0.95, eps=1e-8, weight_decay=phase.weight_decay),
    )
    return optimizer, schedule
