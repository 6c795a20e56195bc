"""medadapt's built-in plugins.

Each module here is one plugin, declared under the ``medadapt`` entry-point group in
pyproject.toml exactly as a third-party plugin would be.
"""
