"""Interchangeable, shape-annotated components for neural memories that learn at test time."""
