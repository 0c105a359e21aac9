"""Building blocks: embeddings, positional encoding, the slot encoder, the LSTM core, heads."""

from slotformer.layers.encoder import (
    EMPTY_SLOT_INDEX,
    BlueprintEmbedding,
    EncoderIntermediates,
    SlotAttentionBlock,
    SlotPositionalEncoding,
    SlotTransformerEncoder,
    checkpoint_in_chunks,
)
from slotformer.layers.heads import categorical_head, contribution_mlp, value_head
from slotformer.layers.lstm import LSTMLayer, ResidualLSTM

__all__ = [
    "EMPTY_SLOT_INDEX",
    "BlueprintEmbedding",
    "EncoderIntermediates",
    "LSTMLayer",
    "ResidualLSTM",
    "SlotAttentionBlock",
    "SlotPositionalEncoding",
    "SlotTransformerEncoder",
    "categorical_head",
    "checkpoint_in_chunks",
    "contribution_mlp",
    "value_head",
]
