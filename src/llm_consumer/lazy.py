"""Modules imported on first use (the standard library's LazyLoader).

A worker serving text never touches Pillow (about 2.5 MB of RSS), httpx2 (about 3 MB, for
source images and GetImg) or jsonschema (about 2 MB, only a chat request with a
`response_schema` needs it); each worker process would pay for them at start otherwise. A
module named here is loaded by the first attribute read on it.

Before Python 3.12 LazyLoader is not thread-safe: a second thread reading the module while the
first runs its code sees it half-built. Image work runs in threads (`asyncio.to_thread`), so the
image handler calls `load_now()` on the event loop's thread first.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

_deferred: list[ModuleType] = []


def lazy_module(name: str) -> ModuleType:
    """`name` as a module that runs its code on the first attribute read (at once when it is
    loaded already)."""
    found = sys.modules.get(name)
    if found is not None:
        return found
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    _deferred.append(module)
    return module


def load_now() -> None:
    """Run the code of every module `lazy_module` deferred, here and now (any attribute read
    does it; a loaded module is read as usual)."""
    for module in _deferred:
        _ = module.__name__
