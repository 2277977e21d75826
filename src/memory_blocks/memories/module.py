"""Any ``nn.Module`` as a memory model, through ``torch.func``."""

from __future__ import annotations

from typing import ClassVar

from jaxtyping import Float
from torch import Tensor, nn
from torch.func import functional_call, vmap

from memory_blocks.memories.base import MemoryModel

__all__ = ["ModuleMemory"]


class ModuleMemory(MemoryModel):
    """Use a user-written ``nn.Module`` (mapping ``(seq, dim_in) -> (seq, dim_out)``) as memory.

    All of the module's parameters become fast weights (named as in ``named_parameters``).
    The module must treat tokens independently (no mixing along ``seq``); it is evaluated with
    ``torch.func.functional_call`` and ``vmap``, and ``memorize`` takes the generic path
    (per-token gradients with ``torch.func.grad``, per-token weights materialised): exact, and
    slower than the factored built-in models.

    Args:
        module: the function family; its current parameters are ``W_0``.
        dim_in: features of keys and queries.
        dim_out: features of values and retrievals.
        curvature: ``lambda_0`` (:meth:`MemoryModel.curvature`), the inner loss's curvature scale
            at ``W_0`` for unit-norm keys that :class:`~memory_blocks.NormalizedStep` divides
            ``theta`` by; 2 (a linear map) unless given.
    """

    factored: ClassVar[bool] = False

    def __init__(self, module: nn.Module, dim_in: int, dim_out: int, *, curvature: int | float = 2.0) -> None:
        super().__init__()
        if not any(True for _ in module.parameters()):
            raise ValueError("ModuleMemory: the module has no parameters to learn at test time")
        if dim_in < 1 or dim_out < 1:
            raise ValueError(f"ModuleMemory: dim_in and dim_out must be >= 1, got {dim_in}, {dim_out}")
        if isinstance(curvature, bool) or not isinstance(curvature, (int, float)) or not 0 < curvature < float("inf"):
            raise ValueError(f"ModuleMemory: curvature must be a finite number > 0, got {curvature!r}")
        self.module = module
        self.dim_in, self.dim_out = dim_in, dim_out
        self._curvature = float(curvature)

    def curvature(self) -> float:
        return self._curvature

    def initial_weights(self) -> dict[str, Tensor]:
        return dict(self.module.named_parameters())

    def forward_single(
        self, weights: dict[str, Tensor], x: Float[Tensor, "seq dim_in"]
    ) -> Float[Tensor, "seq dim_out"]:
        return functional_call(self.module, weights, (x,))

    def forward_with(
        self, weights: dict[str, Tensor], x: Float[Tensor, "batch heads seq dim_in"]
    ) -> Float[Tensor, "batch heads seq dim_out"]:
        return vmap(vmap(self.forward_single))(weights, x)

    def forward(self, x: Float[Tensor, "*batch seq dim_in"]) -> Float[Tensor, "*batch seq dim_out"]:
        return self.module(x)
