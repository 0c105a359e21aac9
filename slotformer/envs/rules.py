"""Slot Garden's rules: the seed lifecycle, what a step does, the reward, and their parameters.

Each slot of a :class:`~slotformer.config.SlotConfig` grid (up to 8x8) is empty or holds a
**seed**: a blueprint (1..12), a lifecycle stage, a blend level alpha moving toward its target,
and a hidden quality drawn from its blueprint's distribution.

Lifecycle (``SeedStage``)::

    EMPTY --GERMINATE--> GERMINATED --(next step)--> TRAINING --ADVANCE--> BLENDING
          --(alpha reaches its target)--> HOLDING --FOSSILIZE--> FOSSILIZED (permanent)
    any live stage (GERMINATED, TRAINING, BLENDING, HOLDING) --PRUNE--> EMPTY
    BLENDING / HOLDING --SET_ALPHA_TARGET--> BLENDING (or HOLDING at once for INSTANT speed)

One ``step``: the action is validated against the current state and applied; every seed not
germinated this step ages by one (GERMINATED becomes TRAINING, BLENDING alpha moves along its
curve); the reward is the change in the host score minus the rent.

* True contribution of a seed ``i`` (what it adds at alpha = 1)::

      c_i = quality_i + TEMPO_QUALITY_BONUS[tempo_i] + style_bonus[bp_i, style_i]
            + sum over occupied 4-neighbours j of affinity[bp_i, bp_j]

  ``quality_i ~ Normal(BLUEPRINT_MEAN_QUALITY[bp], BLUEPRINT_QUALITY_STD[bp])`` is drawn at
  germination; ``affinity [13, 13]`` (symmetric) and ``style_bonus [13, 4]`` once per
  environment seed (shared by the ``E`` environments), so what to plant where depends on the
  neighbours.
* Host score = sum over live seeds of ``alpha * c`` + sum over fossilized seeds of the value
  locked at fossilization (``alpha * c`` then).
* Reward = host score(t+1) - host score(t) - ``rent`` x (live seeds after the action);
  fossilized seeds pay no rent. PRUNE removes a seed at once (its ``alpha * c`` leaves the
  score); its alpha_speed and alpha_curve are validated but have no effect.
* Observed contribution estimate = ``c + noise``, fresh every step, with standard deviation
  ``ESTIMATE_NOISE_STD / sqrt(1 + age)``.
* Episodes last ``episode_length`` steps and all environments start (``reset``) and end
  together: the ``step`` that ends them auto-resets them and returns the new episode's first
  observation, with ``done`` True and the finished ``episode_return``.
* With ``min_episode_length`` each environment draws each episode's length uniformly from
  ``min_episode_length .. episode_length`` (at ``reset`` and every auto-reset) and keeps its
  own clock ``t`` and length (``episode_lengths [E]``) on the device; ``done`` is computed
  there (no host sync) and only the finished environments reset, so a recurrent trainer must
  zero its state per environment (``episode_starts``).

Reference scores (mean episode return, T = 100, 64 environments x 2 episodes, seeds 0/1/2,
``DEFAULT_RENT``): 1x3 grid: random valid policy -0.61/-0.66/-0.62, heuristic
+2.75/+1.64/+1.86; 2x5: random -1.36/-1.46/-1.58, heuristic +11.78/+5.49/+6.30; doing nothing
scores exactly 0. A small MLP PPO on 1x3 reaches about +2 in 13k environment steps.
"""

from __future__ import annotations

from enum import IntEnum

from slotformer.presets.seed_lifecycle import AlphaCurve

MAX_SLOTS = 64  # the largest grid the environment accepts (8x8)


class SeedStage(IntEnum):
    """A slot's lifecycle stage (PRUNE sends a live seed back to EMPTY)."""

    EMPTY = 0
    GERMINATED = 1
    TRAINING = 2
    BLENDING = 3
    HOLDING = 4
    FOSSILIZED = 5


NUM_STAGES = len(SeedStage)
LIVE_STAGES = (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING)

# Per blueprint (BlueprintAction order, NOOP first), the hidden quality's mean (a few reliably
# positive, most negative: the uniform mean is < 0) and standard deviation (FLEX_ATTENTION is
# a gamble).
BLUEPRINT_MEAN_QUALITY: tuple[float, ...] = (
    0.0, 0.35, 0.50, 0.15, -0.10, -0.30, 0.25, -0.40, -0.10, -0.50, -0.20, -0.35, 0.10,
)
BLUEPRINT_QUALITY_STD: tuple[float, ...] = (
    0.0, 0.15, 0.25, 0.10, 0.20, 0.20, 0.15, 0.30, 0.20, 0.30, 0.15, 0.20, 0.45,
)
ALPHA_TARGET_VALUES: tuple[float, ...] = (0.5, 0.7, 1.0)  # AlphaTarget HALF, SEVENTY, FULL
ALPHA_SPEED_STEPS: tuple[int, ...] = (0, 2, 4, 8)  # steps to the target, AlphaSpeed INSTANT..SLOW
ADVANCE_BLEND_STEPS = 4  # steps an ADVANCE-d seed takes to blend from 0 to its target (MEDIUM)
# Per Tempo FAST, STANDARD, SLOW: the age ADVANCE needs, and the bonus added to the seed's
# contribution (patience pays a little).
TEMPO_TRAINING_STEPS: tuple[int, ...] = (2, 4, 7)
TEMPO_QUALITY_BONUS: tuple[float, ...] = (-0.05, 0.0, 0.05)
# Per Style, the blend curve of a germinated seed when ADVANCE-d (SET_ALPHA_TARGET picks its own).
STYLE_DEFAULT_CURVE: tuple[int, ...] = (
    AlphaCurve.LINEAR, AlphaCurve.COSINE, AlphaCurve.SIGMOID, AlphaCurve.SIGMOID_SHARP,
)
# Steepness of AlphaCurve SIGMOID_GENTLE, SIGMOID, SIGMOID_SHARP (rescaled: f(0) = 0, f(1) = 1).
SIGMOID_STEEPNESS: tuple[float, ...] = (4.0, 8.0, 16.0)
ESTIMATE_NOISE_STD = 0.5  # of the contribution estimate at age 0
AFFINITY_STD = 0.15  # scale of the blueprint-by-blueprint neighbour affinity table
STYLE_BONUS_STD = 0.05  # scale of the blueprint-by-style bonus table
# Reward charged per live seed per step (with a higher rent a small PPO settles on never
# planting before it finds the plant-advance-fossilize sequence).
DEFAULT_RENT = 0.005
