"""pytest plugin: run esper-lite's own tests with slotformer's networks in place of its own.

Load with ``-p compat_swap`` (this folder on PYTHONPATH). The network is chosen by the
environment variable ``SLOTFORMER_SWAP``:

* ``reference`` (default): nothing is patched; the baseline.
* ``lstm``: slotformer's flat ``FactoredRecurrentActorCritic``.
* ``transformer``: slotformer's ``SlotTransformerActorCritic``.

The patch is applied when the plugin is imported, i.e. before any test module is collected,
so module-level ``from esper.tamiyo.networks(.factored_lstm) import
FactoredRecurrentActorCritic`` in tests and the function-level imports in the reference's
``lstm_bundle`` / ``ppo_agent`` all see the replacement. Nothing in the reference's tests or
sources is edited.

The replacement is a thin subclass with the reference constructor's signature
``(state_dim, feature_dim=512, lstm_hidden_dim=512, lstm_layers=1, slot_config=None)``:
the reference's ``esper.leyline.SlotConfig`` is converted to slotformer's ``SlotConfig``
(same ``slot_ids``), everything else is passed through (flat LSTM) or mapped as
``SlotTransformerActorCritic(state_dim, slot_config, lstm_hidden_dim=lstm_hidden_dim,
lstm_layers=lstm_layers, config=TransformerConfig(embed_dim=64))`` with ``feature_dim``
ignored (transformer).
"""

from __future__ import annotations

import os
import sys

MODE = os.environ.get("SLOTFORMER_SWAP", "reference").strip().lower()
if MODE not in {"reference", "lstm", "transformer"}:
    raise RuntimeError(f"SLOTFORMER_SWAP must be reference|lstm|transformer, got {MODE!r}")

TRANSFORMER_EMBED_DIM = int(os.environ.get("SLOTFORMER_SWAP_EMBED_DIM", "64"))
# Secondary measurements (off by default):
# SLOTFORMER_SWAP_ALIAS=1: esper's InvalidStateMachineError *is* slotformer's (a pure rename).
ALIAS_EXCEPTION = os.environ.get("SLOTFORMER_SWAP_ALIAS", "0") == "1"
# SLOTFORMER_SWAP_LAYOUT=fallback (transformer only): a state_dim that is not 23 + N*slot_dim
# is laid out as base_dim = state_dim mod N, slot_dim = state_dim // N, so the tests that use
# opaque state widths (8, 20, 30, 64, 126) get past construction and show what lies behind.
LAYOUT_FALLBACK = os.environ.get("SLOTFORMER_SWAP_LAYOUT", "strict") == "fallback"
# SLOTFORMER_SWAP_VALIDATION=0: slotformer.set_validation(False) for the session. Validation
# only raises (it changes no value); this shows what its checks alone make fail.
VALIDATION = os.environ.get("SLOTFORMER_SWAP_VALIDATION", "1") != "0"


# Tests during which a swapped network was constructed (written at session end to
# $COMPAT_CONSTRUCTED_FILE when set): the part of the selection that really runs slotformer.
_CURRENT_TEST: list[str] = [""]
CONSTRUCTED: set[str] = set()


def _note_construction() -> None:
    if _CURRENT_TEST[0]:
        CONSTRUCTED.add(_CURRENT_TEST[0])


def _to_slotformer_slot_config(slot_config):
    import slotformer

    if slot_config is None or isinstance(slot_config, slotformer.SlotConfig):
        return slot_config
    return slotformer.SlotConfig(slot_ids=tuple(slot_config.slot_ids))


def _build_replacement():
    from esper.leyline import DEFAULT_FEATURE_DIM, DEFAULT_LSTM_HIDDEN_DIM

    import slotformer

    if MODE == "lstm":

        class FactoredRecurrentActorCritic(slotformer.FactoredRecurrentActorCritic):
            """slotformer's flat LSTM behind the reference's constructor signature."""

            def __init__(
                self,
                state_dim: int,
                feature_dim: int = DEFAULT_FEATURE_DIM,
                lstm_hidden_dim: int = DEFAULT_LSTM_HIDDEN_DIM,
                lstm_layers: int = 1,
                slot_config=None,
            ) -> None:
                _note_construction()
                super().__init__(
                    state_dim,
                    feature_dim=feature_dim,
                    lstm_hidden_dim=lstm_hidden_dim,
                    lstm_layers=lstm_layers,
                    slot_config=_to_slotformer_slot_config(slot_config),
                )

    else:

        class FactoredRecurrentActorCritic(slotformer.SlotTransformerActorCritic):  # type: ignore[no-redef]
            """slotformer's Slot Transformer behind the reference's constructor signature."""

            def __init__(
                self,
                state_dim: int,
                feature_dim: int = DEFAULT_FEATURE_DIM,  # no counterpart; ignored
                lstm_hidden_dim: int = DEFAULT_LSTM_HIDDEN_DIM,
                lstm_layers: int = 1,
                slot_config=None,
            ) -> None:
                _note_construction()
                sf_slots = _to_slotformer_slot_config(slot_config) or slotformer.SlotConfig.default()
                layout = {}
                n = sf_slots.num_slots
                if LAYOUT_FALLBACK and (
                    state_dim - slotformer.DEFAULT_BASE_DIM <= 0
                    or (state_dim - slotformer.DEFAULT_BASE_DIM) % n != 0
                ):
                    layout = {"base_dim": state_dim % n, "slot_dim": state_dim // n}
                super().__init__(
                    state_dim,
                    sf_slots,
                    lstm_hidden_dim=lstm_hidden_dim,
                    lstm_layers=lstm_layers,
                    config=slotformer.TransformerConfig(embed_dim=TRANSFORMER_EMBED_DIM, **layout),
                )

    return FactoredRecurrentActorCritic


def _patch() -> None:
    import esper.tamiyo.networks as networks_pkg
    import esper.tamiyo.networks.factored_lstm as factored_lstm

    replacement = _build_replacement()
    factored_lstm.FactoredRecurrentActorCritic = replacement
    networks_pkg.FactoredRecurrentActorCritic = replacement
    # Any other already-imported esper module holding the name at module level.
    original = factored_lstm.__dict__.get("_compat_original")
    for name, module in list(sys.modules.items()):
        if not name.startswith("esper") or module is None:
            continue
        current = getattr(module, "FactoredRecurrentActorCritic", None)
        if current is not None and current is not replacement and current is original:
            module.FactoredRecurrentActorCritic = replacement


if MODE != "reference":
    import esper.tamiyo.networks.factored_lstm as _fl

    _fl._compat_original = _fl.FactoredRecurrentActorCritic  # type: ignore[attr-defined]
    _patch()
    if not VALIDATION:
        import slotformer

        slotformer.set_validation(False)
    if ALIAS_EXCEPTION:
        import esper.tamiyo.policy  # noqa: F401  (re-exports the name)
        import esper.tamiyo.policy.action_masks as _am

        import slotformer.distributions as _sd

        _orig_exc = _am.InvalidStateMachineError
        for _name, _module in list(sys.modules.items()):
            if _name.startswith("esper") and getattr(_module, "InvalidStateMachineError", None) is _orig_exc:
                _module.InvalidStateMachineError = _sd.InvalidStateMachineError


def pytest_report_header(config):
    import esper.tamiyo.networks as networks_pkg

    cls = networks_pkg.FactoredRecurrentActorCritic
    base = cls if MODE == "reference" else cls.__mro__[1]
    return [
        f"compat_swap: SLOTFORMER_SWAP={MODE}; network = {base.__module__}.{base.__name__}; "
        f"alias_exception={ALIAS_EXCEPTION}; layout_fallback={LAYOUT_FALLBACK}; "
        f"validation={VALIDATION}"
    ]


def pytest_runtest_protocol(item, nextitem):
    _CURRENT_TEST[0] = item.nodeid
    return None


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("COMPAT_CONSTRUCTED_FILE")
    if path and MODE != "reference":
        with open(path, "w") as f:
            f.write("\n".join(sorted(CONSTRUCTED)) + "\n")
