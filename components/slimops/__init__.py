"""slimops: model compression as pipeline steps.

Every technique lives once in this package; orchestrator adapters only render the
``slimops step`` command and branch on the gate result.
"""

__version__ = "0.1.0"
