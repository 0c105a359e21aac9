#!/usr/bin/env bash
# The selection: test files under tests/tamiyo and tests/simic of the reference that import or
# construct its FactoredRecurrentActorCritic, directly or through the LSTM policy bundle
# (create_policy / get_policy / lstm_bundle / LSTMPolicyBundle) or the PPO agent (PPOAgent).
# The reference's default marker filter (not integration/stress/property/slow) applies.
ESPER_DIR=${1:-/tmp/esper}
cd "$ESPER_DIR"
grep -rlE "FactoredRecurrentActorCritic|PPOAgent|LSTMPolicyBundle|create_policy|get_policy\(|lstm_bundle" \
  tests/tamiyo tests/simic --include='test_*.py' | sort
