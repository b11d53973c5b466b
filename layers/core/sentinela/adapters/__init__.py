"""The adapters: what talks to the outside (DynamoDB, Twilio, onnxruntime, audio files, Lambda events,
metrics)."""
