"""The Slot Garden simulation: ``reset`` and ``step`` (actions, ageing, rewards, auto-resets)
of the rules in :mod:`slotformer.envs.rules`."""

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
from slotformer.presets.seed_lifecycle import NUM_BLUEPRINTS, NUM_OPS, AlphaCurve, Op, Style
from slotformer.validation import expect, validation_enabled


class SlotGardenEnv(GardenState):
    """``num_envs`` Slot Garden environments stepped together on one grid.

    Args:
        num_envs: E.
        slot_config: the grid, at most 64 slots (default ``SlotConfig.default()``, 1x3).
        episode_length: T, steps per episode (the longest, with ``min_episode_length``).
        seed: seeds the environment's ``torch.Generator``, the tables and every draw.
        device: where all tensors live.
        rent: reward charged per live seed per step.
        table_seed: seeds the affinity and style tables instead of ``seed`` when given.
        min_episode_length: None, or the shortest of the per-environment episode lengths.
        final_observation: a ``step`` that ends episodes also puts their last state in
            ``info`` (``final_obs``, ``final_blueprint_indices``, ``final_slot_by_op``; the
            other rows hold the current state). Off by default: it costs an observation.

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
        self, num_envs: int, slot_config: SlotConfig | None = None, episode_length: int = 100,
        seed: int = 0, device: torch.device | str = "cpu", rent: float = DEFAULT_RENT,
        table_seed: int | None = None, min_episode_length: int | None = None,
        final_observation: bool = False,
    ) -> None:
        for name, ok, expected, got in (
            ("num_envs", isinstance(num_envs, int) and num_envs >= 1, "a positive int", num_envs),
            ("episode_length", isinstance(episode_length, int) and episode_length >= 1,
             "a positive int", episode_length),
            ("min_episode_length", min_episode_length is None or (
                isinstance(min_episode_length, int) and isinstance(episode_length, int)
                and 1 <= min_episode_length <= episode_length
            ), f"None or an int in 1..episode_length={episode_length}", min_episode_length),
            ("seed", isinstance(seed, int), "an int", seed),
            ("table_seed", table_seed is None or isinstance(table_seed, int), "an int or None",
             table_seed),
            ("rent", math.isfinite(rent) and rent >= 0, "a finite non-negative float", rent),
        ):
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {got!r}")
        slot_config = SlotConfig.default() if slot_config is None else slot_config
        if not isinstance(slot_config, SlotConfig) or slot_config.num_slots > MAX_SLOTS:
            found = (f"{slot_config.num_slots} slots" if isinstance(slot_config, SlotConfig)
                     else type(slot_config).__name__)
            raise ValueError(f"slot_config must be a SlotConfig of at most {MAX_SLOTS} slots "
                             f"(8x8), got {found}")
        self.num_envs, self.slot_config, self.episode_length = num_envs, slot_config, episode_length
        self.num_slots, self.min_episode_length = slot_config.num_slots, min_episode_length
        self.seed, self.table_seed, self.rent = seed, table_seed, float(rent)
        self.device = dev = torch.device(device)
        self.final_observation = bool(final_observation)
        # Equal lengths: one shared clock, tracked on the host (no reset work between ends).
        # Unequal: per-environment clocks and lengths on the device, masked resets.
        self._staggered = min_episode_length is not None
        self.action_space = ActionSpace.default(self.num_slots)
        self.observation_layout = ObservationLayout(
            num_slots=self.num_slots, slot_dim=DEFAULT_SLOT_DIM, base_dim=DEFAULT_BASE_DIM
        )
        self.generator = torch.Generator(device=dev).manual_seed(seed)
        tables = self.generator
        if table_seed is not None:
            tables = torch.Generator(device=dev).manual_seed(table_seed)
        affinity = torch.randn(NUM_BLUEPRINTS, NUM_BLUEPRINTS, generator=tables, device=dev)
        affinity = (affinity + affinity.T) * (rules.AFFINITY_STD / math.sqrt(2.0))
        affinity[0] = affinity[:, 0] = 0.0
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
        self._neighbours, self._row_feature, self._col_feature = (  # [N, 4] (N: none), [N], [N]
            tensor.to(dev) for tensor in observation.grid_neighbours(slot_config)
        )
        self._checker = ActionChecker(self.action_space, dev)
        self._eye = {size: torch.eye(size, device=dev) for size in (NUM_STAGES, NUM_OPS, 3, 4, 5)}
        steepness = torch.tensor((1.0, 1.0, *rules.SIGMOID_STEEPNESS), device=dev)  # per AlphaCurve
        self._curve_steepness, self._curve_low = steepness, torch.sigmoid(-steepness / 2)
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

    def _live(self) -> Tensor:
        return (self.stage >= SeedStage.GERMINATED) & (self.stage <= SeedStage.HOLDING)

    def _contribution(self) -> Tensor:
        """True contribution at alpha = 1 of every occupied slot, ``[E, N]`` (0 when empty)."""
        bp = self.blueprint.clamp(min=0)  # [E, N]
        padded = torch.cat([self.blueprint, self.blueprint.new_full((self.num_envs, 1), -1)], 1)
        neighbour_bp = padded[:, self._neighbours]  # [E, N, 4], -1 off-grid or empty
        pair = bp.unsqueeze(-1) * NUM_BLUEPRINTS + neighbour_bp.clamp(min=0)
        affinity = self.affinity.flatten()[pair] * (neighbour_bp >= 0)  # [E, N, 4]
        style = self.style_bonus.flatten()[bp * len(Style) + self.style]  # [E, N]
        total = self.quality + self._tempo_bonus[self.tempo] + style + affinity.sum(-1)
        return total * (self.blueprint >= 0)  # 0 where empty

    def _true_contributions(self) -> Tensor:
        """What the estimates are noisy views of, ``[E, N]`` (see ``StepOutput.info``)."""
        fossil = self.stage == SeedStage.FOSSILIZED
        return torch.where(fossil, self.locked_contribution, self.contribution)

    def slot_by_op(self) -> Tensor:
        """Bool ``[E, 6, N]``: the slots valid for each op in the current state."""
        return observation.slot_by_op(self)

    def masks(self, slot_by_op: Tensor | None = None) -> dict[str, Tensor]:
        """The per-head masks of the current state (:mod:`slotformer.envs.observation`)."""
        return observation.masks(self, self.slot_by_op() if slot_by_op is None else slot_by_op)

    def final_state(self, out: StepOutput) -> StepOutput:
        """``out`` as seen at the end of its step, before any auto-reset.

        Where an episode ended: its last observation, blueprint indices, ``slot_by_op`` and masks
        (``info["final_*"]``, which needs ``final_observation=True``); the rest is ``out``'s. A
        step that ended no episode returns ``out`` itself.

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
            out, obs=out.info["final_obs"], blueprint_indices=out.info["final_blueprint_indices"],
            slot_by_op=slot_by_op, masks=self.masks(slot_by_op),
        )

    def action_validity(self, actions: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Bool ``[E]``: is each environment's action valid in the current state (checked from
        the state, rule by rule, independently of ``slot_by_op``)."""
        return self._checker.check(self, split_actions(actions, self.num_envs, self.device))[0]

    def reset(self) -> StepOutput:
        """Start a new episode in every environment and return its first observation."""
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
            hold: None, or bool ``[E]`` (needs ``min_episode_length``): environments that sit
                this step out (action ignored, state kept, reward 0, ``done`` False); the
                step's random draws are the same with or without it.

        Raises:
            ValueError: an action is invalid (naming the first such environment). With
                ``slotformer.validation`` off it is not checked and becomes WAIT.
        """
        heads = split_actions(actions, self.num_envs, self.device)
        valid, reason = self._checker.check(self, heads)
        if hold is not None:
            if not self._staggered:
                raise ValueError(
                    "hold needs min_episode_length: with equal episode lengths every environment "
                    "shares one clock, so none can sit a step out"
                )
            expect("hold", hold, dtype=torch.bool, device=self.device, shape=(self.num_envs,))
            kept = self._snapshot()
            valid = valid | hold  # ignored: whatever it does is undone below
        if validation_enabled() and not bool(valid.all()):
            env = int((~valid).nonzero()[0, 0])
            raise ValueError(
                "SlotGardenEnv.step: " + self._checker.explain(self, heads, env, int(reason[env]))
            )
        op = torch.where(valid, heads["op"], int(Op.WAIT))  # [E]
        chosen = torch.nn.functional.one_hot(
            heads["slot"].clamp(0, self.num_slots - 1), self.num_slots
        ).bool()  # [E, N]

        def at(target_op: Op) -> Tensor:
            return chosen & (op == target_op).unsqueeze(-1)  # [E, N]

        def col(name: str) -> Tensor:  # a head's choice, in range
            return heads[name].clamp(0, self.action_space.sizes[name] - 1).unsqueeze(-1)  # [E, 1]

        contribution, score_before = self.contribution, self.score  # before the action
        # A fixed number of draws per step (a quality per environment, used only where a seed
        # is planted, and the estimate noise) keeps the generator stream independent of the
        # actions taken.
        draws = torch.randn(self.num_envs, 1 + self.num_slots, generator=self.generator,
                            device=self.device)
        draw, noise = draws[:, :1], draws[:, 1:]  # [E, 1], [E, N]
        germinate = at(Op.GERMINATE)
        bp, style, target = col("blueprint"), col("style"), self._target_values[col("alpha_target")]
        self._put(
            germinate, blueprint=bp, stage=SeedStage.GERMINATED, style=style,
            tempo=col("tempo"), curve=self._style_curve[style], alpha_target=target,
            quality=self._bp_mean[bp] + self._bp_std[bp] * draw,
            age=0, alpha=0, alpha_start=0, blend_steps=0, blend_progress=0,
        )
        retarget = at(Op.SET_ALPHA_TARGET)
        steps = self._speed_steps[col("alpha_speed")]  # [E, 1]
        self._put(
            retarget, style=style, curve=col("alpha_curve"), alpha_target=target,
            alpha_start=self.alpha, blend_steps=steps, blend_progress=0, stage=SeedStage.BLENDING,
        )
        self._put(retarget & (steps == 0), alpha=self.alpha_target, blend_progress=1.0,
                  stage=SeedStage.HOLDING)  # INSTANT speed
        self._put(at(Op.ADVANCE), stage=SeedStage.BLENDING, alpha_start=0,
                  blend_steps=float(rules.ADVANCE_BLEND_STEPS), blend_progress=0)
        self._put(at(Op.FOSSILIZE), stage=SeedStage.FOSSILIZED, locked_contribution=contribution,
                  locked_value=self.alpha * contribution)
        self._put(at(Op.PRUNE), blueprint=-1, **dict.fromkeys(
            ("stage", "style", "tempo", "curve", "age", "alpha", "alpha_start", "alpha_target",
             "blend_steps", "blend_progress", "quality"), 0,
        ))
        self._tick(~germinate)
        self.contribution = contribution = self._contribution()
        live = self._live()
        live_count = live.sum(-1).float()  # [E]
        fossil_value = self.locked_value * (self.stage == SeedStage.FOSSILIZED)
        score = (self.alpha * contribution * live + fossil_value).sum(-1)  # the host score [E]
        rent = self.rent * live_count
        reward = score - score_before - rent  # [E]
        self.score, self.t, self.running_return = score, self.t + 1, self.running_return + reward
        self.last_reward, self.last_rent, self.last_op = reward, rent, op
        if hold is not None:  # the held environments go back to where they started the step
            self._restore_where(hold, kept)
            reward = reward.masked_fill(hold, 0.0)
            score, live_count = self.score, self._live().sum(-1).float()

        def refresh_estimates() -> None:
            std = rules.ESTIMATE_NOISE_STD * torch.rsqrt(1.0 + self.age.float())
            noisy = torch.where(self.stage == SeedStage.FOSSILIZED, self.locked_contribution,
                                self.contribution + noise * std)
            self.estimate = torch.where(self.blueprint >= 0, noisy, 0.0)
            if hold is not None:  # a held environment's estimates keep their old noise
                self.estimate = torch.where(hold.unsqueeze(-1), kept["estimate"], self.estimate)

        if self._staggered:  # each environment on its own clock, decided on the device
            episode_over = False
            done = self.t >= self.episode_lengths  # [E]
        else:  # one shared clock: a host-side counter decides, no device sync
            self._episode_step += 1
            episode_over = self._episode_step >= self.episode_length
            done = torch.full((self.num_envs,), episode_over, dtype=torch.bool, device=self.device)
        info = {"host_score": score, "num_live": live_count,
                "contributions_before_reset": self._true_contributions()}
        if self.final_observation and (self._staggered or episode_over):
            # The finished episodes' last state, observed as it would be without the reset.
            # The estimates only read `noise`, so refreshing them twice leaves the
            # generator's stream (and every trajectory) unchanged.
            refresh_estimates()
            info["final_obs"] = observation.observe(self)
            info["final_blueprint_indices"] = self.blueprint.clone()
            info["final_slot_by_op"] = self.slot_by_op()
        episode_return = torch.where(done, self.running_return, math.nan)
        if self._staggered:
            self._reset_where(done)
        elif episode_over:
            self._allocate_state()
        refresh_estimates()
        info["contributions"] = self._true_contributions()
        return observation.output(self, reward, done, episode_return, info)

    def _put(self, where: Tensor, **values: Tensor | float) -> None:
        """Set each named state tensor to its value where ``where [E, N]``."""
        for name, value in values.items():
            setattr(self, name, torch.where(where, value, getattr(self, name)))

    def _tick(self, ticking: Tensor) -> None:
        """Age every seed in ``ticking [E, N]`` by one step (stage changes, alpha moves)."""
        self.age = self.age + (self._live() & ticking).long()
        self.stage = torch.where(
            ticking & (self.stage == SeedStage.GERMINATED), int(SeedStage.TRAINING), self.stage
        )
        blending = ticking & (self.stage == SeedStage.BLENDING)
        progress = (self.blend_progress + 1.0 / self.blend_steps.clamp(min=1.0)).clamp(max=1.0)
        progress = torch.where(blending, progress, self.blend_progress)
        alpha = self.alpha_start + (self.alpha_target - self.alpha_start) * self._curve(progress)
        self.alpha = torch.where(blending, alpha, self.alpha)
        self.blend_progress = progress
        reached = blending & (progress >= 1.0)
        self._put(reached, alpha=self.alpha_target, stage=SeedStage.HOLDING)

    def _curve(self, progress: Tensor) -> Tensor:
        """Blend shape ``f(progress)`` per seed's AlphaCurve, with f(0) = 0 and f(1) = 1."""
        curve = self.curve
        steepness = self._curve_steepness[curve]
        sigmoid = (torch.sigmoid(steepness * (progress - 0.5)) - self._curve_low[curve])
        sigmoid = sigmoid / self._curve_span[curve]
        cosine = 0.5 - 0.5 * torch.cos(math.pi * progress)
        shaped = torch.where(curve == AlphaCurve.COSINE, cosine, sigmoid)
        return torch.where(curve == AlphaCurve.LINEAR, progress, shaped)
