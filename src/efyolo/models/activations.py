"""The activations a model config's ``activation`` key may name, parsed without ``eval``.

YOLOv5 changes every ``Conv``'s activation with a top-level ``activation: nn.LeakyReLU(0.1)``
(``yolov5s-LeakyReLU.yaml``) and evaluates that string. Here it is parsed as an expression tree
and looked up in :data:`ACTIVATIONS`; its arguments must be Python literals.
"""

from __future__ import annotations

import ast
import functools
from typing import Any

import torch
from torch import nn

from efyolo.errors import EfyoloError
from efyolo.models.blocks import ActFactory

ACTIVATIONS: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (nn.SiLU, nn.ReLU, nn.LeakyReLU, nn.Hardswish, nn.ReLU6, nn.GELU, nn.Sigmoid, nn.Identity, nn.Mish)
}


def _dotted_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def parse_activation(value: Any, key: str = "activation") -> ActFactory | None:
    """The config's ``activation`` string -> a factory of fresh activation modules (``None``: SiLU).

    Accepts ``nn.Name``, ``nn.Name()`` or ``nn.Name(args)`` (also ``torch.nn.Name``, ``Name``) for
    the activations in :data:`ACTIVATIONS`, arguments as Python literals (``nn.LeakyReLU(0.1)``,
    ``nn.GELU(approximate='tanh')``). Nothing is evaluated.

    Raises:
        EfyoloError: an unknown activation, a malformed string or bad arguments, naming the key.
    """
    if value is None:
        return None

    def fail(why: str) -> EfyoloError:
        allowed = ", ".join(f"nn.{n}" for n in ACTIVATIONS)
        return EfyoloError(f"model config key {key!r}: {why} in {value!r} (allowed: {allowed})")

    if not isinstance(value, str):
        raise fail("expected a string such as 'nn.LeakyReLU(0.1)'")
    try:
        node = ast.parse(value.strip(), mode="eval").body
    except SyntaxError:
        raise fail("not an activation expression") from None
    call = node if isinstance(node, ast.Call) else None
    name = _dotted_name(call.func if call else node)
    if name is None:
        raise fail("not an activation expression")
    for prefix in ("torch.nn.", "nn."):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if name not in ACTIVATIONS:
        raise fail(f"unknown activation {name!r}")
    cls = ACTIVATIONS[name]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if call is not None:
        try:
            args = [ast.literal_eval(a) for a in call.args]
            for kw in call.keywords:
                if kw.arg is None:
                    raise ValueError("**kwargs")
                kwargs[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError):
            raise fail("arguments must be plain literals") from None
    try:
        cls(*args, **kwargs)(torch.zeros(2))  # an argument of the wrong type fails only when it runs
    except (TypeError, ValueError, RuntimeError) as err:
        raise fail(f"bad arguments for nn.{name} ({err})") from None
    return functools.partial(cls, *args, **kwargs) if args or kwargs else cls
