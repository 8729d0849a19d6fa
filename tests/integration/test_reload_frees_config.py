"""The server freezes its startup heap out of the garbage collector (``gc.freeze()``, see
``gateway/server.py``). A frozen object is never collected as part of a reference cycle, so a config
replaced by a reload must be freed by reference counting alone, or every reload would leak one.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from gateway.config.load import load_config
from gateway.core import Gateway
from tests.harness import MockProvider, base_config, write_config


async def test_a_replaced_config_is_freed_while_frozen(tmp_path: Path, mock: MockProvider) -> None:
    gateway = Gateway(load_config(write_config(tmp_path, base_config(mock.url))))
    gc.collect()
    gc.freeze()
    try:
        old_config, old_rules = weakref.ref(gateway.config), weakref.ref(gateway.config.rules)
        ok, problems = await gateway.reload()
        assert ok, problems
        gc.collect()
        assert old_config() is None and old_rules() is None, "the old config is held by a cycle"
    finally:
        gc.unfreeze()
