"""Keyword arguments checked against a builder's signature before anything is built, with did-you-mean hints."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from visionkit.errors import ConfigError, did_you_mean


def check_kwargs(
    obj: Callable[..., Any], kwargs: Mapping[str, Any], what: str, user_keys: set[str] | None = None
) -> dict[str, Any]:
    """Return the kwargs `obj` accepts; raise a ConfigError with hints for a user key it does not take.

    Keys outside `user_keys` are defaults offered by the caller: dropped quietly when the builder does
    not take them (e.g. `num_classes` offered to every model builder of a task) or when they are None
    (so the builder's own default applies).
    """
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return dict(kwargs)
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        if user_keys is None:
            return dict(kwargs)
        # Everything the user wrote goes through; an offered default only when the signature names it.
        return {k: v for k, v in kwargs.items() if k in user_keys or (k in params and v is not None)}
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    offered = user_keys is not None
    kwargs = {k: v for k, v in kwargs.items() if not (offered and k not in user_keys and v is None)}
    for k in kwargs:
        if k not in accepted:
            if offered and k not in user_keys:
                continue  # a default the caller offers that this builder does not take
            raise ConfigError(
                f"{what} has no option '{k}'.{did_you_mean(k, accepted)} "
                f"Accepted options: {', '.join(accepted) or '(none)'}."
            )
    missing = [n for n in accepted if params[n].default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        raise ConfigError(f"{what} needs option(s) {', '.join(missing)}; add them to the config.")
    return {k: v for k, v in kwargs.items() if k in accepted}
