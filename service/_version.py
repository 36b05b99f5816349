"""The package version (from the installed distribution; the checkout's when not installed)."""
try:
    from importlib.metadata import version

    __version__ = version("enet-serve")
except Exception:  # not installed
    __version__ = "0.1.0"
