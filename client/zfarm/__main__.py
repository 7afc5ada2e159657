"""``python -m zfarm``: runs the demo job (see zfarm.demo)."""
from .demo import main

raise SystemExit(main())
