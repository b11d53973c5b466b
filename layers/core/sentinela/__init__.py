"""Sentinela's runtime: what the Lambda functions import, and all that the layer CoreLayer ships.

- ``sentinela.domain``: what Sentinela knows, with no I/O (keys, the model card, policy, texts, detections).
- ``sentinela.services``: the jobs a handler runs (classify a clip, incidents, presign, silence).
- ``sentinela.adapters``: what talks to the outside (DynamoDB, Twilio, onnxruntime, audio files, events).
- ``sentinela.config`` reads the environment; ``sentinela.runtime`` wires the services for a handler.

It never imports the tools (``sentinela_tools``: the CLI, demo, training, benchmarks, local stack);
tests/unit/test_layout.py fails if it does.
"""

__version__ = "0.1.0"
