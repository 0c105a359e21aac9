"""The Slot Garden simulation: state tensors, ``reset``, ``step`` (actions, ageing, rewards,
contributions, auto-resets) and the environment's state API.

The rules it implements are :mod:`slotformer.envs.rules`; what it shows the agent is
:mod:`slotformer.envs.observation`; which actions it accepts is :mod:`slotformer.envs.validity`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import Tensor

from slotformer.actions import ActionSpace
from slotformer.config import DEFAULT_BASE_DIM, DEFAULT_SLOT_DIM, ObservationLayout, SlotConfig
from slotformer.envs import observation, rules
from slotformer.envs.observation import StepOutput
from slotformer.envs.rules import DEFAULT_RENT, MAX_SLOTS, NUM_STAGES, SeedStage
from slotformer.envs.state import GardenState
from slotformer.envs.validity import ActionChecker, split_actions
from slotformer.presets.seed_lifecycle import (
    NUM_BLUEPRINTS,
    NUM_OPS,
    AlphaCurve,
    AlphaSpeed,
    AlphaTarget,
    Op,
    Style,
    Tempo,
)
from slotformer.validation import describe_shape, validation_enabled


class SlotGardenEnv(GardenState):
    """``num_envs`` Slot Garden environments stepped together on one grid.

    Args:
        num_envs: E, environments stepped at once.
        slot_config: the grid (default ``SlotConfig.default()``, 3 slots in a row); at most
            64 slots. Neighbourhoods are the 4-neighbours of ``slot_config.positions``.
        episode_length: T, steps per episode (environments auto-reset); with
            ``min_episode_length``, the longest episode.
        seed: seeds the environment's own ``torch.Generator``: the affinity and style tables
            and every draw (qualities, estimate noise, episode lengths). Same seed and same
            actions give identical trajectories.
        device: where all tensors live.
        rent: reward charged per live seed per step.
        table_seed: when given, the affinity and style tables come from this seed instead of
            ``seed`` (evaluate on fresh trajectories of the same world: same ``table_seed``,
            another ``seed``).
        min_episode_length: None (the default): every episode lasts ``episode_length`` steps
            and all environments end together. An int in ``1 .. episode_length``: each
            environment draws each episode's length uniformly from ``min_episode_length ..
            episode_length``, so episodes end at different steps in different environments
            (``episode_lengths`` holds the current lengths, ``t`` the per-environment clocks).
        final_observation: when True, a ``step`` that ends episodes also reports the last
            state of each finished episode (before the auto-reset) in its ``info``:
            ``final_obs [E, 23 + 31 N]``, ``final_blueprint_indices [E, N]`` and
            ``final_slot_by_op [E, 6, N]`` (rows of environments that did not finish hold
            their current state). Off by default: it costs a second observation on those
            steps, and a trainer that does not bootstrap across episode ends never needs it.
            The gymnasium wrappers turn it on.

    Example:
        >>> env = SlotGardenEnv(num_envs=4, slot_config=SlotConfig.for_grid(2, 2), seed=0)
        >>> out = env.reset()
        >>> tuple(out.obs.shape), tuple(out.slot_by_op.shape)
        ((4, 147), (4, 6, 4))
        >>> actions = torch.zeros(4, 8, dtype=torch.long)  # WAIT everywhere
        >>> out = env.step(actions)
        >>> out.reward.tolist()
        [0.0, 0.0, 0.0, 0.0]
    """

    def __init__(
        self,
        num_envs: int,
        slot_config: SlotConfig | None = None,
        episode_length: int = 100,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rent: float = DEFAULT_RENT,
        table_seed: int | None = None,
        min_episode_length: int | None = None,
        final_observation: bool = False,
    ) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if not isinstance(episode_length, int) or episode_length < 1:
            raise ValueError(f"episode_length must be a positive int, got {episode_length!r}")
        if min_episode_length is not None and (
            not isinstance(min_episode_length, int)
            or not 1 <= min_episode_length <= episode_length
        ):
            raise ValueError(
                f"min_episode_length must be None or an int in 1..episode_length="
                f"{episode_length}, got {min_episode_length!r}"
            )
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if table_seed is not None and not isinstance(table_seed, int):
            raise ValueError(f"table_seed must be an int or None, got {table_seed!r}")
        slot_config = SlotConfig.default() if slot_config is None else slot_config
        if not isinstance(slot_config, SlotConfig):
            raise ValueError(f"slot_config must be a SlotConfig, got {type(slot_config).__name__}")
        if slot_config.num_slots > MAX_SLOTS:
            raise ValueError(
                f"slot_config has {slot_config.num_slots} slots, expected at most {MAX_SLOTS} (8x8)"
            )
        if not math.isfinite(rent) or rent < 0:
            raise ValueError(f"rent must be a finite non-negative float, got {rent!r}")
        self.num_envs = num_envs
        self.slot_config = slot_config
        self.num_slots = slot_config.num_slots
        self.episode_length = episode_length
        self.seed = seed
        self.device = torch.device(device)
        self.rent = float(rent)
        self.table_seed = table_seed
        self.min_episode_length = min_episode_length
        self.final_observation = bool(final_observation)
        # Equal lengths: one shared clock, tracked on the host (no reset work between ends).
        # Unequal: per-environment clocks and lengths on the device, masked resets.
        self._staggered = min_episode_length is not None
        self.action_space = ActionSpace.default(self.num_slots)
        self.observation_layout = ObservationLayout(
            num_slots=self.num_slots, slot_dim=DEFAULT_SLOT_DIM, base_dim=DEFAULT_BASE_DIM
        )

        dev = self.device
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(seed)
        tables = self.generator
        if table_seed is not None:
            tables = torch.Generator(device=dev)
            tables.manual_seed(table_seed)
        affinity = torch.randn(NUM_BLUEPRINTS, NUM_BLUEPRINTS, generator=tables, device=dev)
        affinity = (affinity + affinity.T) * (rules.AFFINITY_STD / math.sqrt(2.0))
        affinity[0] = 0.0
        affinity[:, 0] = 0.0
        self.affinity = affinity  # [13, 13], symmetric, NOOP row/col 0
        self.style_bonus = rules.STYLE_BONUS_STD * torch.randn(
            NUM_BLUEPRINTS, len(Style), generator=tables, device=dev
        )  # [13, 4]

        def const(values: tuple[float, ...] | tuple[int, ...], dtype: torch.dtype) -> Tensor:
            return torch.tensor(values, dtype=dtype, device=dev)

        self._bp_mean = const(rules.BLUEPRINT_MEAN_QUALITY, torch.float32)
        self._bp_std = const(rules.BLUEPRINT_QUALITY_STD, torch.float32)
        self._target_values = const(rules.ALPHA_TARGET_VALUES, torch.float32)
        self._speed_steps = const(rules.ALPHA_SPEED_STEPS, torch.float32)
        self._tempo_steps = const(rules.TEMPO_TRAINING_STEPS, torch.long)
        self._tempo_bonus = const(rules.TEMPO_QUALITY_BONUS, torch.float32)
        self._style_curve = const(tuple(int(c) for c in rules.STYLE_DEFAULT_CURVE), torch.long)
        neighbours, rows, cols = observation.grid_neighbours(slot_config)
        self._neighbours = neighbours.to(dev)  # [N, 4], N = padding
        self._row_feature = rows.to(dev)  # [N]
        self._col_feature = cols.to(dev)  # [N]
        self._checker = ActionChecker(self.action_space, dev)
        self._eye = {
            size: torch.eye(size, device=dev) for size in (NUM_STAGES, NUM_OPS, 3, 4, 5)
        }
        # Per AlphaCurve (LINEAR and COSINE do not use theirs).
        steepness = torch.tensor((1.0, 1.0, *rules.SIGMOID_STEEPNESS), device=dev)
        self._curve_steepness = steepness
        self._curve_low = torch.sigmoid(-steepness / 2)
        self._curve_span = torch.sigmoid(steepness / 2) - self._curve_low
        self._allocate_state()

    def clone(self) -> SlotGardenEnv:
        """An independent copy (same tables, state and generator position)."""
        twin = SlotGardenEnv(
            self.num_envs, self.slot_config, self.episode_length, self.seed, self.device, self.rent,
            self.table_seed, self.min_episode_length, self.final_observation,
        )
        twin.set_state(self.get_state())
        return twin

    # ------------------------------------------------------------- dynamics
    def _live(self) -> Tensor:
        return (self.stage >= SeedStage.GERMINATED) & (self.stage <= SeedStage.HOLDING)

    def _contribution(self) -> Tensor:
        """True contribution at alpha = 1 of every occupied slot, ``[E, N]`` (0 when empty)."""
        occupied = self.blueprint >= 0  # [E, N]
        bp = self.blueprint.clamp(min=0)  # [E, N]
        padded = torch.cat([self.blueprint, self.blueprint.new_full((self.num_envs, 1), -1)], 1)
        neighbour_bp = padded[:, self._neighbours]  # [E, N, 4], -1 off-grid or empty
        pair = bp.unsqueeze(-1) * NUM_BLUEPRINTS + neighbour_bp.clamp(min=0)
        affinity = self.affinity.flatten()[pair] * (neighbour_bp >= 0)  # [E, N, 4]
        style = self.style_bonus.flatten()[bp * len(Style) + self.style]  # [E, N]
        total = self.quality + self._tempo_bonus[self.tempo] + style + affinity.sum(-1)
        return total * occupied

    def _host_score(self, contribution: Tensor) -> Tensor:
        live_value = self.alpha * contribution * self._live()
        fossil_value = self.locked_value * (self.stage == SeedStage.FOSSILIZED)
        return (live_value + fossil_value).sum(-1)  # [E]

    def _refresh_estimates(self, noise: Tensor) -> None:
        """Draw the observed contribution estimates from ``noise [E, N]`` (standard normal)."""
        std = rules.ESTIMATE_NOISE_STD * torch.rsqrt(1.0 + self.age.float())
        estimate = self.contribution + noise * std
        estimate = torch.where(self.stage == SeedStage.FOSSILIZED, self.locked_contribution,
                               estimate)
        self.estimate = torch.where(self.blueprint >= 0, estimate, 0.0)

    # ---------------------------------------------------------------- masks
    def slot_by_op(self) -> Tensor:
        """Bool ``[E, 6, N]``: the slots valid for each op in the current state."""
        return observation.slot_by_op(self)

    def masks(self, slot_by_op: Tensor | None = None) -> dict[str, Tensor]:
        """The per-head masks of the current state (:mod:`slotformer.envs.observation`)."""
        return observation.masks(self, self.slot_by_op() if slot_by_op is None else slot_by_op)

    def final_state(self, out: StepOutput) -> StepOutput:
        """``out`` as seen at the end of its step, before any auto-reset.

        For an environment whose episode ended at this step: that episode's last
        observation, blueprint indices, ``slot_by_op`` and masks (from ``info["final_*"]``,
        which ``final_observation=True`` reports); for the others, ``out``'s own (their rows
        of ``info["final_*"]`` hold the current state). Reward, ``done``, the return and
        ``info`` are ``out``'s. A step that ended no episode returns ``out`` itself.

        Example:
            >>> env = SlotGardenEnv(num_envs=2, episode_length=1, final_observation=True)
            >>> _ = env.reset()
            >>> out = env.step(torch.zeros(2, 8, dtype=torch.long))  # WAIT ends the episode
            >>> bool(out.obs[0, 0] == 0), bool(env.final_state(out).obs[0, 0] == 1)
            (True, True)
        """
        if "final_obs" not in out.info:
            if not self.final_observation:
                raise ValueError(
                    "final_state needs the environment built with final_observation=True"
                )
            return out
        slot_by_op = out.info["final_slot_by_op"]
        return replace(
            out,
            obs=out.info["final_obs"],
            blueprint_indices=out.info["final_blueprint_indices"],
            slot_by_op=slot_by_op,
            masks=self.masks(slot_by_op),  # the masks are a function of slot_by_op
        )

    def action_validity(self, actions: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Bool ``[E]``: is each environment's action valid in the current state.

        Checked directly from the state, rule by rule (independently of ``slot_by_op``):
        the op is in 0..5, the slot suits the op (ignored for WAIT), and every head relevant
        to the op is in range (blueprint also not NOOP). Irrelevant heads are ignored.
        """
        heads = split_actions(actions, self.num_envs, self.device)
        return self._checker.check(self, heads)[0]

    # ------------------------------------------------------------------ api
    def reset(self) -> StepOutput:
        """Reset every environment to an empty grid at t = 0 (drawing new episode lengths with
        ``min_episode_length``) and return the first observation."""
        self._allocate_state()
        zeros, empty = torch.zeros(self.num_envs, device=self.device), self.contribution
        info = {"host_score": zeros.clone(), "num_live": zeros.clone(),
                "contributions_before_reset": empty.clone(), "contributions": empty.clone()}
        return observation.output(self, zeros, zeros.bool(), torch.full_like(zeros, math.nan), info)

    def step(
        self, actions: Mapping[str, Tensor] | Tensor, *, hold: Tensor | None = None
    ) -> StepOutput:
        """Apply one action per environment and advance every environment by one step.

        Args:
            actions: ``dict`` head name -> int64 ``[E]``, or int64 ``[E, 8]`` in head order
                slot, blueprint, style, tempo, alpha_target, alpha_speed, alpha_curve, op.
            hold: None, or bool ``[E]`` (needs ``min_episode_length``): the environments that
                sit this step out. Their action is ignored (never validated), their state,
                clock and observation stay as they were, their reward is 0 and ``done``
                False. The step's random draws are the same with or without it. The
                gymnasium vector env's NEXT_STEP autoreset holds the environments it resets.

        Raises:
            ValueError: an action is invalid (naming the first such environment and its
                action). With ``slotformer.validation`` off the check is skipped (no host
                sync) and an invalid action is replaced by WAIT.
        """
        heads = split_actions(actions, self.num_envs, self.device)
        valid, reason = self._checker.check(self, heads)
        if hold is not None:
            self._check_hold(hold)
            kept = self._snapshot()
            valid = valid | hold  # ignored: whatever it does is undone below
        if validation_enabled() and not bool(valid.all()):
            env = int((~valid).nonzero()[0, 0])
            raise ValueError(
                "SlotGardenEnv.step: " + self._checker.explain(self, heads, env, int(reason[env]))
            )
        op = torch.where(valid, heads["op"], int(Op.WAIT))  # [E]
        slot = heads["slot"].clamp(0, self.num_slots - 1)
        chosen = torch.nn.functional.one_hot(slot, self.num_slots).bool()  # [E, N]

        def at(target_op: Op) -> Tensor:
            return chosen & (op == target_op).unsqueeze(-1)  # [E, N]

        def col(name: str, num_choices: int) -> Tensor:
            return heads[name].clamp(0, num_choices - 1).unsqueeze(-1)  # [E, 1]

        contribution = self.contribution  # [E, N], before the action
        score_before = self.score

        # A fixed number of draws per step (a quality per environment, used only where a seed
        # is planted, and the estimate noise) keeps the generator stream independent of the
        # actions taken.
        draws = torch.randn(
            self.num_envs, 1 + self.num_slots, generator=self.generator, device=self.device
        )
        draw, noise = draws[:, :1], draws[:, 1:]  # [E, 1], [E, N]

        germinate = at(Op.GERMINATE)
        bp = col("blueprint", NUM_BLUEPRINTS)
        style = col("style", len(Style))
        self.blueprint = torch.where(germinate, bp, self.blueprint)
        self.stage = torch.where(germinate, int(SeedStage.GERMINATED), self.stage)
        self.style = torch.where(germinate, style, self.style)
        self.tempo = torch.where(germinate, col("tempo", len(Tempo)), self.tempo)
        self.curve = torch.where(germinate, self._style_curve[style], self.curve)
        self.alpha_target = torch.where(
            germinate, self._target_values[col("alpha_target", len(AlphaTarget))],
            self.alpha_target,
        )
        quality = self._bp_mean[bp] + self._bp_std[bp] * draw  # [E, 1]
        self.quality = torch.where(germinate, quality, self.quality)
        for name in ("age", "alpha", "alpha_start", "blend_steps", "blend_progress"):
            setattr(self, name, getattr(self, name).masked_fill(germinate, 0))

        retarget = at(Op.SET_ALPHA_TARGET)
        steps = self._speed_steps[col("alpha_speed", len(AlphaSpeed))]  # [E, 1]
        new_target = self._target_values[col("alpha_target", len(AlphaTarget))]
        instant = retarget & (steps == 0)
        self.style = torch.where(retarget, style, self.style)
        self.curve = torch.where(retarget, col("alpha_curve", len(AlphaCurve)), self.curve)
        self.alpha_target = torch.where(retarget, new_target, self.alpha_target)
        self.alpha_start = torch.where(retarget, self.alpha, self.alpha_start)
        self.blend_steps = torch.where(retarget, steps, self.blend_steps)
        self.blend_progress = self.blend_progress.masked_fill(retarget, 0.0)
        self.stage = torch.where(retarget, int(SeedStage.BLENDING), self.stage)
        self.alpha = torch.where(instant, self.alpha_target, self.alpha)
        self.blend_progress = self.blend_progress.masked_fill(instant, 1.0)
        self.stage = torch.where(instant, int(SeedStage.HOLDING), self.stage)

        advance = at(Op.ADVANCE)
        self.stage = torch.where(advance, int(SeedStage.BLENDING), self.stage)
        self.alpha_start = self.alpha_start.masked_fill(advance, 0.0)
        self.blend_steps = self.blend_steps.masked_fill(advance, float(rules.ADVANCE_BLEND_STEPS))
        self.blend_progress = self.blend_progress.masked_fill(advance, 0.0)

        fossilize = at(Op.FOSSILIZE)
        self.stage = torch.where(fossilize, int(SeedStage.FOSSILIZED), self.stage)
        self.locked_contribution = torch.where(fossilize, contribution, self.locked_contribution)
        self.locked_value = torch.where(fossilize, self.alpha * contribution, self.locked_value)

        prune = at(Op.PRUNE)
        self.blueprint = self.blueprint.masked_fill(prune, -1)
        for name in ("stage", "style", "tempo", "curve", "age", "alpha", "alpha_start",
                     "alpha_target", "blend_steps", "blend_progress", "quality"):
            setattr(self, name, getattr(self, name).masked_fill(prune, 0))

        self._tick(~germinate)

        self.contribution = contribution = self._contribution()
        live_count = self._live().sum(-1).float()  # [E]
        score = self._host_score(contribution)
        rent = self.rent * live_count
        reward = score - score_before - rent  # [E]
        self.score = score
        self.t = self.t + 1
        self.running_return = self.running_return + reward
        self.last_reward = reward
        self.last_rent = rent
        self.last_op = op
        if hold is not None:  # the held environments go back to where they started the step
            self._restore_where(hold, kept)
            reward = reward.masked_fill(hold, 0.0)
            score, live_count = self.score, self._live().sum(-1).float()

        def refresh_estimates() -> None:
            self._refresh_estimates(noise)
            if hold is not None:  # a held environment's estimates keep their old noise
                self.estimate = torch.where(hold.unsqueeze(-1), kept["estimate"], self.estimate)

        if self._staggered:
            # Each environment on its own clock: decided on the device, no host sync.
            episode_over = False
            done = self.t >= self.episode_lengths  # [E]
        else:
            # Every environment starts together and episodes have a fixed length, so they all
            # end together: a host-side counter decides, with no device sync and no reset work
            # on the other steps.
            self._episode_step += 1
            episode_over = self._episode_step >= self.episode_length
            done = torch.full((self.num_envs,), episode_over, dtype=torch.bool, device=self.device)
        episode_return = torch.where(done, self.running_return, math.nan)
        info = {
            "host_score": score,
            "num_live": live_count,
            "contributions_before_reset": self._true_contributions(),
        }
        if self.final_observation and (self._staggered or episode_over):
            # The finished episodes' last state, observed as it would be without the reset.
            # The estimates only read `noise`, so refreshing them twice leaves the
            # generator's stream (and every trajectory) unchanged.
            refresh_estimates()
            info["final_obs"] = observation.observe(self)
            info["final_blueprint_indices"] = self.blueprint.clone()
            info["final_slot_by_op"] = self.slot_by_op()
        if self._staggered:
            self._reset_where(done)
        elif episode_over:
            self._allocate_state()
        refresh_estimates()
        info["contributions"] = self._true_contributions()
        return observation.output(self, reward, done, episode_return, info)

    def _check_hold(self, hold: Tensor) -> None:
        if not self._staggered:
            raise ValueError(
                "hold needs min_episode_length: with equal episode lengths every environment "
                "shares one clock, so none can sit a step out"
            )
        if hold.shape != (self.num_envs,) or hold.dtype != torch.bool or hold.device != self.device:
            raise ValueError(
                f"hold has shape {describe_shape(hold)}, dtype {hold.dtype} and device "
                f"{hold.device}, expected bool [{self.num_envs}] on {self.device}"
            )

    def _true_contributions(self) -> Tensor:
        """What the observed estimates are noisy views of, ``[E, N]``: ``c`` for live seeds,
        the locked contribution for fossilized ones, 0 for empty slots."""
        return torch.where(
            self.stage == SeedStage.FOSSILIZED, self.locked_contribution, self.contribution
        )

    def _tick(self, ticking: Tensor) -> None:
        """Age every seed in ``ticking [E, N]`` by one step (stage changes, alpha moves)."""
        live = self._live() & ticking
        self.age = self.age + live.long()
        self.stage = torch.where(
            ticking & (self.stage == SeedStage.GERMINATED), int(SeedStage.TRAINING), self.stage
        )
        blending = ticking & (self.stage == SeedStage.BLENDING)
        progress = (self.blend_progress + 1.0 / self.blend_steps.clamp(min=1.0)).clamp(max=1.0)
        progress = torch.where(blending, progress, self.blend_progress)
        shaped = self._curve(progress, self.curve)
        alpha = self.alpha_start + (self.alpha_target - self.alpha_start) * shaped
        self.alpha = torch.where(blending, alpha, self.alpha)
        self.blend_progress = progress
        reached = blending & (progress >= 1.0)
        self.alpha = torch.where(reached, self.alpha_target, self.alpha)
        self.stage = torch.where(reached, int(SeedStage.HOLDING), self.stage)

    def _curve(self, progress: Tensor, curve: Tensor) -> Tensor:
        """Blend shape ``f(progress)`` per AlphaCurve, with f(0) = 0 and f(1) = 1."""
        steepness = self._curve_steepness[curve]
        sigmoid = (torch.sigmoid(steepness * (progress - 0.5)) - self._curve_low[curve])
        sigmoid = sigmoid / self._curve_span[curve]
        cosine = 0.5 - 0.5 * torch.cos(math.pi * progress)
        shaped = torch.where(curve == AlphaCurve.COSINE, cosine, sigmoid)
        return torch.where(curve == AlphaCurve.LINEAR, progress, shaped)
