"""Benchmarks compare neuroenc with peer packages that are not neuroenc dependencies.

``require`` checks them before any work starts and, when one is missing, prints one line
saying what to install (the ``bench`` extra of pyproject.toml) and exits with status 2.
"""

from __future__ import annotations

import importlib
import sys

# peer -> (import name, pip requirement)
PEERS = {"himalaya": ("himalaya", "himalaya"), "sklearn": ("sklearn", "scikit-learn")}


def missing(peers) -> list[str]:
    """Return the peers (keys of PEERS) that cannot be imported."""
    out = []
    for peer in peers:
        module, _ = PEERS[peer]
        try:
            importlib.import_module(module)
        except ImportError:
            out.append(peer)
    return out


def require(script: str, peers, hint: str = "") -> None:
    """Exit with one line naming what to install when one of ``peers`` is missing."""
    absent = missing(peers)
    if absent:
        names = ", ".join(PEERS[p][1] for p in absent)
        print(f"{script}: needs {names} to compare against ({', '.join(absent)} not importable): "
              f"pip install -e '.[bench]'{hint}", file=sys.stderr)
        raise SystemExit(2)
