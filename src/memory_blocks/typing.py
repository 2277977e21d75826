"""The dimension glossary and the jaxtyping aliases used across the project.

Every public function annotates its tensors with these names, so that one name means one
size everywhere (jaxtyping checks the sizes agree within a call when runtime checking is on).

=============  =====================================================================
name           meaning
=============  =====================================================================
``batch``      independent sequences
``seq``        tokens of a sequence (time)
``dim``        model width (features of a token in the residual stream)
``heads``      attention or memory heads
``dim_head``   features per head
``dim_in``     input features of a memory model ``f(W; x)`` (keys and queries)
``dim_out``    output features of a memory model (values and retrievals)
``chunk``      tokens of one memory chunk (gradients share the chunk-start weights)
``window``     attention window (tokens a query may see, itself included)
``prefix``     persistent tokens prepended to a sequence (paper eq. 19)
``vocab``      token vocabulary
``memory``     memory tokens of MAC's segment attention (retrievals attended to)
``recent``     the most recent keys an attention cache keeps (at most ``window - 1``)
``context``    keys a decode step attends to (prefix, cached and new)
``new``        tokens added by one streaming call
=============  =====================================================================
"""

from __future__ import annotations

from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "Tokens",
    "HeadTokensIn",
    "HeadTokensOut",
    "HeadGate",
    "TokenIds",
]

#: A sequence of token features in the residual stream.
Tokens = Float[Tensor, "batch seq dim"]
#: Keys or queries per head, the inputs of a memory model.
HeadTokensIn = Float[Tensor, "batch heads seq dim_in"]
#: Values or retrievals per head, the outputs of a memory model.
HeadTokensOut = Float[Tensor, "batch heads seq dim_out"]
#: A per-token, per-head gate (theta, eta or alpha of paper eqs. 13-14).
HeadGate = Float[Tensor, "batch heads seq"]
#: Token ids.
TokenIds = Int[Tensor, "batch seq"]
