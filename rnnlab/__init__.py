"""rnnlab: recurrent sequence models behind one contract."""
from rnnlab.layers import Mixer, available_mixers, create_mixer, mixer_info, register_mixer

__version__ = "0.1.0"
__all__ = ["Mixer", "available_mixers", "create_mixer", "mixer_info", "register_mixer", "ModelConfig", "SequenceModel"]


def __getattr__(name):  # models import layers; keep `import rnnlab` light and acyclic
    if name in ("ModelConfig", "SequenceModel"):
        from rnnlab import models

        return getattr(models, name)
    raise AttributeError(name)
