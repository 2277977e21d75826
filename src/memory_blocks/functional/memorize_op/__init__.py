"""The memory's write-and-read (paper eqs. 12-16), one file per way of computing it.

The paths, from the definition to the fastest:

- :mod:`~memory_blocks.functional.memorize_op.naive`: ``memorize_naive``, the token-by-token
  recurrence, the oracle every other path is tested against;
- :mod:`~memory_blocks.functional.memorize_op.chunk`: ``memorize``, the chunk-parallel form and
  the dispatcher that sends each block of chunks down one of the three paths below;
- :mod:`~memory_blocks.functional.memorize_op.generic_chunk`: any memory, one chunk at a time
  through ``torch.func``;
- :mod:`~memory_blocks.functional.memorize_op.factored_block`: built-in (factored) memories, a
  block of chunks in the dual form under autograd;
- :mod:`~memory_blocks.functional.memorize_op.fused_block`: MLP-family and linear memories with
  the squared error, a block written out by hand, forward and backward;
- :mod:`~memory_blocks.functional.memorize_op.extended_chunk`: the design-space rules the paths
  above do not take (a retention readout, the Omega rule, Muon), one chunk at a time.

The pieces they share: ``recurrence`` (closed forms of momentum and forgetting inside a chunk),
``anchored`` (forgetting towards ``W_0``), ``fast_ops`` (three readings of a memory's forward),
``recompute`` (re-running a block in the backward pass), ``weight_tape`` and ``weight_update``
(full-size weight gradients and the block-end write), ``newton_schulz`` (Muon's
orthogonalisation) and ``design_args`` (the checks of the design-space arguments).
"""
