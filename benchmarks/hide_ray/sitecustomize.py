"""Python without Ray, on a machine that has it: ``PYTHONPATH=benchmarks/hide_ray:...``.

Python imports ``sitecustomize`` at start-up from the first folder of ``sys.path`` that
has one; this one makes ``import ray`` (and ``importlib.util.find_spec("ray")``) fail as
where Ray is not installed. ``python -m benchmarks.run --hide-ray`` and
``HIDE_RAY=1 bash benchmarks/gpu_check.sh`` use it to rehearse a GPU machine that has
torch but neither Ray nor Flower's simulation extras.
"""

from __future__ import annotations

import sys
from typing import Any


class NoRay:
    """A meta-path finder that refuses Ray and its submodules."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)
        return None


# Only as Python's start-up hook (not when a tool imports this file under another name).
if __name__ == "sitecustomize" and "ray" not in sys.modules:
    sys.meta_path.insert(0, NoRay())
