"""Ops: box formats, IoU, NMS."""
