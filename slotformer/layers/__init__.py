"""Building blocks: embeddings, positional encoding, the slot encoder, the LSTM core, heads."""

from slotformer.layers.embedding import EMPTY_SLOT_INDEX, BlueprintEmbedding
from slotformer.layers.encoder import (
    EncoderIntermediates,
    SlotAttentionBlock,
    SlotTransformerEncoder,
    checkpoint_in_chunks,
)
from slotformer.layers.heads import PointerHead, categorical_head, contribution_mlp, value_head
from slotformer.layers.lstm import LSTMLayer, ResidualLSTM
from slotformer.layers.positional import SlotPositionalEncoding

__all__ = [
    "EMPTY_SLOT_INDEX",
    "BlueprintEmbedding",
    "EncoderIntermediates",
    "LSTMLayer",
    "PointerHead",
    "ResidualLSTM",
    "SlotAttentionBlock",
    "SlotPositionalEncoding",
    "SlotTransformerEncoder",
    "categorical_head",
    "checkpoint_in_chunks",
    "contribution_mlp",
    "value_head",
]
