"""Titans assemblers (MAC, MAG, MAL, LMM) built from ``memory_blocks`` components."""

__all__: list[str] = []
