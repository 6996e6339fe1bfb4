"""jax_mps: hand-tuned neural-network training primitives for JAX (see API.md)."""
from ._runtime import backends, plan_cache_size, set_plan_cache_size
from .activations import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403
from .normalization import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .rnn import *  # noqa: F401,F403
from . import optim  # noqa: F401
from . import train  # noqa: F401
from . import mixed_precision  # noqa: F401
from . import data  # noqa: F401
from . import graph  # noqa: F401

__version__ = "0.1.0"
