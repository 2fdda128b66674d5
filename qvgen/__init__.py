"""qvgen: the contract shared by training and serving.

The numerics of a quantized layer (``qvgen.numerics``), the timestep → activation-clip group
mapping (``qvgen.timestep_groups``) and the packed checkpoint format (``qvgen.checkpoint``)
live here, so that ``training`` (which produces weights) and ``service`` (which runs them)
import one definition of each.
"""

__version__ = "0.1.0"
