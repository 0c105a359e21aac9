"""Slot Garden's former single module, kept so that ``from slotformer.envs.slot_garden import
...`` goes on working: every name it offered, from the modules that now hold them
(:mod:`~slotformer.envs.rules`, :mod:`~slotformer.envs.dynamics`,
:mod:`~slotformer.envs.observation`)."""

from slotformer.envs.dynamics import SlotGardenEnv  # noqa: F401
from slotformer.envs.observation import *  # noqa: F403 (StepOutput, the BASE_* / SLOT_* indices)
from slotformer.envs.rules import *  # noqa: F403 (the lifecycle and its parameters)
