"""askbuild: patch-and-build pipeline for NXP ASK and the LSDK kernel.

The engine is plain importable modules; ``tasks.py`` only maps Invoke verbs onto them.
"""

__version__ = "0.1.0"
