"""Generated Slipway API (protos/slipway/v1). Do not edit: run `make generate`."""
