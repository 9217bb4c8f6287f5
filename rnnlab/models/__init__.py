"""Config, blocks, backbone, heads, generation."""
from rnnlab.models.config import ModelConfig
from rnnlab.models.model import Block, SequenceModel, SwiGLU

__all__ = ["ModelConfig", "SequenceModel", "Block", "SwiGLU"]
