"""The local endpoint: ``slimops serve``, an Open Inference Protocol v2 REST server over ONNX Runtime.

- oip.py: the protocol's JSON shapes, request validation (names, datatypes, shapes, limits) -> 4xx errors
- model.py: one served model (an ONNX Runtime session from ``slimops.handlers``, with its tokenizer for text)
- canary.py: the traffic split and the sliding-window SLO watch that rolls a bad challenger back
- app.py: the Starlette application and ``serve()`` (uvicorn)

starlette and uvicorn (extra ``slimops[serve]``) are imported only in app.py.
"""
