"""Slipway controller: lifecycle state, reconcile loop, replica runtime, gRPC API."""
