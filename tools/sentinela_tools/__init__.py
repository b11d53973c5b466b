"""Sentinela's tools: the `sentinela` command, the demo, training and evaluation, benchmarks, the embedded
local stack and the developer tools. They import the runtime (``sentinela``); no Lambda layer ships them."""
