"""The replica model server: runs one model package and serves ReplicaService.

Start it with `python -m replica --package DIR --state-file PATH`; see replica.main.
"""
