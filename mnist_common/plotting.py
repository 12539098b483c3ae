"""Matplotlib for files only: the Agg backend, imported quietly.

Where `HOME` (or `MPLCONFIGDIR`) is not writable, Matplotlib falls back to a temporary config
directory that it removes at exit, and logs two warning lines about it. A run's stderr is for
the run: those lines are silenced here, for every figure the project draws.
"""

import logging


def pyplot():
    """`matplotlib.pyplot` on the Agg backend, imported without config-directory warnings."""
    logger = logging.getLogger("matplotlib")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    finally:
        logger.setLevel(level)
    return plt
