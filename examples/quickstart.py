"""slotformer in one page: build a policy, act, evaluate, take a PPO step, checkpoint.

    python examples/quickstart.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from slotformer import SlotConfig
from slotformer.checkpoint import load_checkpoint, save_checkpoint
from slotformer.policy import create_policy

torch.manual_seed(0)
slots = SlotConfig.for_grid(2, 3)  # r0c0 .. r1c2: six slots, row-major
B, T, N = 8, 16, slots.num_slots
state_dim = 23 + 31 * N  # base block, then 31 features per slot
policy = create_policy("transformer", state_dim, slot_config=slots)

# One rollout step for B environments: flat observations, blueprint ids (-1 = empty slot)
# and a bool mask per head (True = valid; None = all valid).
obs = torch.randn(B, state_dim)
blueprint_indices = torch.randint(-1, 13, (B, N))
masks = {name: None for name in policy.network.action_space.head_names}
masks["op"] = torch.tensor([True, True, False, True, False, False]).expand(B, 6)
hidden = policy.initial_hidden(B)
step = policy.get_action(obs, blueprint_indices, masks, hidden)
print("actions:", {k: v.tolist()[:4] for k, v in step.actions.items()})
print("values:", step.value.shape, "hidden:", step.hidden[0].shape)

# A rollout of T steps stores observations, masks and actions; the update re-scores them
# as sequences [B, T, ...] from the hidden state stored at the start of the rollout.
states = torch.randn(B, T, state_dim)
bp_seq = torch.randint(-1, 13, (B, T, N))
rollout_hidden, stored, stored_log_prob = hidden, [], []
for t in range(T):
    result = policy.get_action(states[:, t], bp_seq[:, t], masks, rollout_hidden)
    rollout_hidden = result.hidden
    stored.append(result.actions)
    stored_log_prob.append(sum(result.log_probs.values()))  # joint log-prob over heads
actions = {k: torch.stack([a[k] for a in stored], dim=1) for k in stored[0]}  # [B, T]
old_log_prob = torch.stack(stored_log_prob, dim=1)  # [B, T]
seq_masks = dict(masks)  # [B, n] masks apply to every step
advantages, returns = torch.randn(B, T), torch.randn(B, T)

optimizer = torch.optim.Adam(policy.network.parameters(), lr=3e-4)
new = policy.evaluate_actions(states, bp_seq, actions, seq_masks, hidden)
ratio = (sum(new.log_probs.values()) - old_log_prob).exp()  # 1 up to fp32 rounding before the step
policy_loss = -torch.min(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages).mean()
value_loss = (new.value - returns).pow(2).mean()  # value is V(s), the PPO baseline
q_loss = (new.q_value - returns).pow(2).mean()  # Q(s, op): an auxiliary head, detached
aux_loss = new.pred_contributions.pow(2).mean()  # stand-in for real contribution targets
entropy = torch.stack(list(new.entropies.values())).sum(0).mean()
loss = policy_loss + 0.5 * value_loss + 0.1 * (q_loss + aux_loss) - 0.01 * entropy
optimizer.zero_grad()
loss.backward()
optimizer.step()
print(f"PPO ratio before the step: max |ratio - 1| = {(ratio - 1).abs().max().item():.2e}")

# Checkpoints rebuild the bundle from the stored config; outputs match exactly.
with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "policy.pt"
    save_checkpoint(path, policy)
    restored = load_checkpoint(path)
    a = policy.evaluate_actions(states, bp_seq, actions, seq_masks, hidden)
    b = restored.evaluate_actions(states, bp_seq, actions, seq_masks, hidden)
    print("reloaded identical:", all(torch.equal(a.log_probs[k], b.log_probs[k]) for k in a.log_probs))
