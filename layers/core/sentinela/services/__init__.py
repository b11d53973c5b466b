"""The services: the jobs a handler runs (classify a clip, open and escalate incidents, presign an upload,
find silent recorders), written against the domain and the adapters' interfaces."""
