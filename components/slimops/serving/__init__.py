"""The local endpoint: ``slimops serve``, an Open Inference Protocol v2 REST server over ONNX Runtime.

- oip.py: the protocol's JSON shapes, request validation (names, datatypes, shapes, number ranges) -> 4xx errors
- limits.py: every size, load and time limit on a client, with its default
- model.py: one served model (an ONNX Runtime session from ``slimops.handlers``, with its tokenizer for text)
- scheduler.py: admission (503), fair turns for chunks of large batches, the per-request time limit (504)
- canary.py: the traffic split and the sliding-window SLO watch that rolls a bad challenger back
- auth.py: the optional bearer token, required beyond loopback
- connections.py: a deadline and a size cap on request headers (uvicorn's protocol, subclassed)
- platforms.py: each hosting platform's container contract (SageMaker, Vertex AI, Azure ML, KServe): port,
  health and predict routes, model directory; ``--platform`` and its auto detection
- instances.py: the platforms' ``{"instances": [...]}`` / ``{"predictions": [...]}`` bodies as OIP requests
- app.py: the Starlette application and ``serve()`` (uvicorn)

starlette and uvicorn (extra ``slimops[serve]``) are imported only inside the functions that need them.
"""
