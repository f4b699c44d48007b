"""Slipway gateway: resolves model-ID and deployment-ID routes and forwards requests to replicas."""
