"""deltasync: keep folders in sync between peers by rolling-signature deltas."""
__version__ = "0.1.0"
