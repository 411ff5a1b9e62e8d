"""``mneme`` with collection's ``finalize`` (rank 0 writing the store's index) slowed by 3 s,
as on a run with many shards: under torchrun, a rank that started training without waiting
for it would find no index (tests/test_pipeline.py)."""

from __future__ import annotations

import sys
import time
from typing import Any

from mneme_core import cli
from mneme_core.collect import activations

_finalize = activations.finalize


def _slow_finalize(*args: Any, **kwargs: Any) -> Any:
    time.sleep(3.0)
    return _finalize(*args, **kwargs)


activations.finalize = _slow_finalize
sys.exit(cli.main(sys.argv[1:]))
