"""The optional extras of the install, and a clear error when one is missing.

The base install (``pip install kgnnls``) trains, evaluates, recommends and
explains. ``serve``, ``tune``, ``benchmark`` and ``reproduce`` need more
(a web server, Optuna, plotting, the ``implicit`` rankers); each is an extra
of the same name in pyproject.toml, and ``kgnnls[all]`` installs them all.
"""

from __future__ import annotations

import importlib

from kgnnls.errors import ConfigError

#: extra -> the modules it provides (import names); pyproject.toml's
#: [project.optional-dependencies] lists the distributions (tests check they agree)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn"),
    "tune": ("optuna", "matplotlib"),
    "benchmark": ("optuna", "matplotlib", "threadpoolctl", "implicit"),
    "reproduce": ("matplotlib",),
    "pandas": ("pandas",),
}


def require_extra(extra: str, what: str | None = None) -> None:
    """Import the modules of ``extra``; if one is missing, raise a one-line
    ConfigError naming the extra to install (the CLI prints it and exits 2).

    ``what`` names the feature in the message (default: ``kgnnls EXTRA``).
    """
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"{what or 'kgnnls ' + extra} needs the '{extra}' extra "
                              f"({module} is not installed): pip install 'kgnnls[{extra}]'"
                              ) from None


__all__ = ["EXTRAS", "require_extra"]
