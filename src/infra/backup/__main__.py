"""``python -m src.infra.backup`` and ``python src/infra/backup/__main__.py``."""

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: import from the repository root, not from this package's folder
    # (whose module names would otherwise shadow top-level ones).
    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p and str(Path(p).resolve()) != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from src.infra.backup.cli import entry_point

if __name__ == "__main__":
    entry_point()
