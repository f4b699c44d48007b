"""The native data plane (`--data-plane native`): HAProxy holds the gateway's public ports and
forwards the inference fast path straight to ready replicas; everything else goes to the
Python gateway behind it, on internal loopback ports (slipway/data_plane.py).

desired.py  what HAProxy should hold for a route table (pure)
commands.py the runtime-API commands from one state to the next (pure)
config.py   haproxy.cfg (pure)
runtime.py  the admin socket client
proxy.py    the haproxy child process, table application and the stats poller
"""
