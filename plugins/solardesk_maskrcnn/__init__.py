"""Builtin plugin: Mask R-CNN training on pseudo-labels (torch is imported only when used)."""
