"""Small architectures importable by name (``slimops.zoo.digits:DigitsCNN``) for the examples and tests."""
