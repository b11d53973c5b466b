"""The domain: what Sentinela knows (keys, model card, policy, texts, detections), with no I/O and no
cloud: it imports nothing of services, adapters or the tools."""
