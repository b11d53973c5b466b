"""Sentinela: acoustic threat detection and ranger alerting.

The core package knows nothing of Lambda: handlers in ``functions/`` and the embedded local stack in
``sentinela.local`` are adapters around it.
"""

__version__ = "0.1.0"
