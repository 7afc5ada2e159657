"""``python -m zfarm``: the ``zfarm`` command (see zfarm._cli)."""
from ._cli import main

raise SystemExit(main())
